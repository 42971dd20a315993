"""Crash safety of commits: SIGKILL a writer at random points.

A child process (this file run as a script) formats metadata and runs a
long random sequence of transactions through ThinMetadata: create_thin,
create_snap, delete, insert, remove, remove_range, metadata snapshots, and
a commit every few operations.  Before each commit it appends an *intent*
line (the transaction id and a summary of every device's mappings, from an
independent dict model) to a log and fsyncs it; after the commit returns
it appends a *done* line.  The parent kills the child with SIGKILL, either
at a random moment, or inside a chosen commit: the child stops itself
(SIGSTOP) just before its k-th block write of that commit, before the
superblock write, or just after it, logging where; the parent kills it
there.  Then it requires that

* the metadata opens, at a transaction that is either the last done commit
  or the one in flight (its intent line), with exactly that summary; killed
  inside a commit, at the old transaction before the superblock write and
  at the new one after it;
* ``dmthin check``, thin_check 0.9.0 and thin_check 1.1.0 all pass it;
* it can be opened for writing again, modified, committed and still pass.

A SIGKILL loses no written data (the page cache survives the process), so
this tests the order of writes within a commit and that nothing committed
is modified in place, not torn sectors after power loss.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

from dmthin.errors import NoSpace
from dmthin.thin.check import check_metadata
from dmthin.thin.metadata import ThinMetadata

THIN_CHECK_090 = "/usr/sbin/thin_check"
METADATA_SIZE = 2 << 20          # 512 blocks: small, so space maps and trees move
NR_DATA_BLOCKS = 40000
MAX_OPS = 200000


def summary(devices: dict[int, dict[int, int]]) -> dict[str, list]:
    """{dev_id: [mapped_blocks, sha1 of the (vblock, data_block) pairs]}."""
    out = {}
    for dev_id in sorted(devices):
        h = hashlib.sha1()
        m = devices[dev_id]
        for v in sorted(m):
            h.update(b"%d:%d," % (v, m[v]))
        out[str(dev_id)] = [len(m), h.hexdigest()]
    return out


def metadata_summary(md: ThinMetadata) -> dict[str, list]:
    devices = {d: {v: data for v, data, _t in md.mappings(d)} for d in md.device_ids()}
    s = summary(devices)
    for d in md.device_ids():
        assert md.details(d).mapped_blocks == s[str(d)][0]
    return s


# -- the child -----------------------------------------------------------------
def child(path: str, log_path: str, seed: int, stop: StopAt | None = None) -> None:
    rnd = random.Random(seed)
    md = ThinMetadata.format(path, data_block_sectors=128, nr_data_blocks=NR_DATA_BLOCKS,
                             cache_blocks=64)
    log = open(log_path, "a")      # open until the kill

    def record(kind: str, txn: int, s) -> None:
        log.write(json.dumps({"kind": kind, "txn": txn, "summary": s}) + "\n")
        log.flush()
        os.fsync(log.fileno())

    armed = False           # inside commit number stop.commit
    writes = 0              # block writes of that commit so far

    def stop_here(where: str) -> None:
        record("stop", txn, where)
        os.kill(os.getpid(), signal.SIGSTOP)      # the parent kills us here

    def pwrite(fd: int, data, offset: int) -> int:
        nonlocal writes
        if armed and stop is not None and fd == md.bm.fd:
            if stop.after_superblock:
                if offset == 0:
                    n = real_pwrite(fd, data, offset)
                    stop_here("after the superblock write")
                    return n
            elif offset == 0:
                stop_here(f"before the superblock write ({writes} blocks written)")
            elif writes == stop.write:
                stop_here(f"before block write {writes}")
            writes += 1
        return real_pwrite(fd, data, offset)

    real_pwrite = os.pwrite
    os.pwrite = pwrite

    devices: dict[int, dict[int, int]] = {}
    next_id = 0
    txn = 0
    record("done", txn, summary(devices))
    since_commit = 0
    commit_every = rnd.randint(1, 12)
    for _op in range(MAX_OPS):
        r = rnd.random()
        try:
            if not devices or r < 0.03:
                md.create_thin(next_id)
                devices[next_id] = {}
                next_id += 1
            elif r < 0.07 and len(devices) < 12:
                origin = rnd.choice(sorted(devices))
                md.create_snap(next_id, origin)
                devices[next_id] = dict(devices[origin])
                next_id += 1
            elif r < 0.09 and len(devices) > 1:
                victim = rnd.choice(sorted(devices))
                md.delete(victim)
                del devices[victim]
            elif r < 0.75:
                dev = rnd.choice(sorted(devices))
                base = rnd.choice((0, 1000, 5000))
                for _ in range(rnd.randint(1, 40)):
                    v = base + rnd.randrange(600)
                    data = md.alloc_data_block()
                    md.insert(dev, v, data)
                    devices[dev][v] = data
            elif r < 0.92:
                dev = rnd.choice(sorted(devices))
                if devices[dev]:
                    for v in rnd.sample(sorted(devices[dev]), min(10, len(devices[dev]))):
                        assert md.remove(dev, v)
                        del devices[dev][v]
            else:
                dev = rnd.choice(sorted(devices))
                b = rnd.randrange(6000)
                e = b + rnd.randrange(400)
                n = md.remove_range(dev, b, e)
                gone = [v for v in devices[dev] if b <= v < e]
                assert n == len(gone), (n, len(gone))
                for v in gone:
                    del devices[dev][v]
        except NoSpace:
            # Out of data or metadata space: drop the transaction and shrink.
            md.abort()
            record("abort", txn, None)
            devices = {int(k): v for k, v in _replay_state(md).items()}
            for victim in sorted(devices)[: max(1, len(devices) // 2)]:
                md.delete(victim)
                del devices[victim]
            since_commit = commit_every          # commit the deletions now
        since_commit += 1
        if since_commit >= commit_every:
            md.set_transaction_id(txn, txn + 1)
            txn += 1
            record("intent", txn, summary(devices))
            armed = stop is not None and txn == stop.commit
            md.commit()
            record("done", txn, summary(devices))
            since_commit = 0
            commit_every = rnd.randint(1, 12)
            x = rnd.random()
            if x < 0.05 and not md.held_root:
                md.reserve_metadata_snap()      # commits first: nothing uncommitted
            elif x < 0.10 and md.held_root:
                md.release_metadata_snap()
    md.close()


def _replay_state(md: ThinMetadata) -> dict[int, dict[int, int]]:
    return {d: {v: data for v, data, _t in md.mappings(d)} for d in md.device_ids()}


# -- the parent (pytest) ---------------------------------------------------------
def _read_log(log_path: Path) -> list[dict]:
    entries = []
    for line in log_path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            break                       # a torn last line: the kill came mid-write
    return entries


def _expected_states(entries: list[dict]) -> dict[int, dict]:
    """txn -> summary for the last done commit and an in-flight intent."""
    done = [e for e in entries if e["kind"] == "done"]
    assert done, "the child never committed"
    last = done[-1]
    states = {last["txn"]: last["summary"]}
    intents = [e for e in entries if e["kind"] == "intent"]
    if intents and intents[-1]["txn"] > last["txn"]:
        states[intents[-1]["txn"]] = intents[-1]["summary"]
    return states


class StopAt(NamedTuple):
    """Where the child stops itself for the kill: in commit number (= new
    transaction id) *commit*, right after the superblock write if
    *after_superblock*, else before block write *write* of that commit or
    before the superblock write if that comes first."""
    commit: int
    write: int
    after_superblock: bool


def _wait_stopped(proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Wait until *proc* has stopped itself (True) or exited (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status = os.waitpid(proc.pid, os.WUNTRACED | os.WNOHANG)
        if pid:
            if os.WIFSTOPPED(status):
                return True
            proc.returncode = os.waitstatus_to_exitcode(status)
            return False
        time.sleep(0.005)
    raise AssertionError("the child neither stopped nor exited")


def _run_seed(seed: int, tmp_path: Path, pdata_tools: str, in_commit: bool) -> None:
    rnd = random.Random(seed * 7919)
    md_path = tmp_path / f"md{seed}"
    log_path = tmp_path / f"log{seed}"
    with open(md_path, "wb") as f:
        f.truncate(METADATA_SIZE)
    log_path.write_text("")
    stop = StopAt(rnd.randint(3, 40), rnd.randint(0, 40), rnd.random() < 0.25) \
        if in_commit else None
    argv = [sys.executable, __file__, "child", str(md_path), str(log_path), str(seed)]
    proc = subprocess.Popen(argv + ([json.dumps(stop)] if stop else []), cwd=tmp_path,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not log_path.read_text():           # formatted and first commit logged
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "child did not start"
            time.sleep(0.02)
        if stop is not None:
            still_running = _wait_stopped(proc)
            when = f"inside commit {stop.commit}"
        else:
            delay = rnd.uniform(0.2, 2.5)
            time.sleep(delay)
            when = f"after {delay:.2f}s"
            still_running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"seed {seed}: killed {when}")
    assert still_running, f"child exited early: {err}"
    assert proc.returncode == -signal.SIGKILL, err

    entries = _read_log(log_path)
    states = _expected_states(entries)
    md = ThinMetadata.open(md_path, read_only=True)
    try:
        txn = md.transaction_id
        assert txn in states, f"on disk at txn {txn}, expected one of {sorted(states)}"
        assert metadata_summary(md) == states[txn]
    finally:
        md.close()
    if stop is not None:
        # The kill landed inside commit stop.commit: its intent is the last
        # commit logged and it never finished.
        last = entries[-1]
        assert last["kind"] == "stop" and last["txn"] == stop.commit, last
        assert entries[-2] == {"kind": "intent", "txn": stop.commit,
                               "summary": entries[-2]["summary"]}, entries[-2]
        assert not any(e["kind"] == "done" and e["txn"] == stop.commit for e in entries)
        print(f"seed {seed}: stopped {last['summary']}")
        # Until the superblock is written the old transaction is what is on
        # disk; once written (and in the page cache) the new one.
        assert txn == (stop.commit if stop.after_superblock else stop.commit - 1)
    print(f"seed {seed}: on disk at txn {txn} ({len(states[txn])} devices); "
          f"log had txns {sorted(states)}")

    res = check_metadata(md_path)
    assert res.ok, res.problems
    r = subprocess.run([THIN_CHECK_090, str(md_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([pdata_tools, "thin_check", str(md_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

    # It is writable again: a few more changes, committed, still good.
    md = ThinMetadata.open(md_path)
    try:
        dev = max(md.device_ids(), default=-1) + 1
        md.create_thin(dev)
        for v in range(300):
            md.insert(dev, v, md.alloc_data_block())
        if md.held_root:
            md.release_metadata_snap()
        md.commit()
    except NoSpace:
        # A full metadata device is not a crash-safety failure: drop the
        # changes; the checks below must still pass on the file.
        md.abort()
    finally:
        md.close()
    res = check_metadata(md_path)
    assert res.ok, res.problems
    assert subprocess.run([THIN_CHECK_090, "-q", str(md_path)]).returncode == 0
    assert subprocess.run([pdata_tools, "thin_check", "-q", str(md_path)]).returncode == 0


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    child(sys.argv[2], sys.argv[3], int(sys.argv[4]),
          StopAt(*json.loads(sys.argv[5])) if len(sys.argv) > 5 else None)
    sys.exit(0)

import pytest  # noqa: E402


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_sigkill_during_random_transactions(seed, tmp_path, pdata_tools_110):
    _run_seed(seed, tmp_path, pdata_tools_110, in_commit=False)


@pytest.mark.parametrize("seed", [11, 12, 13, 14, 15, 16])
def test_sigkill_inside_commit(seed, tmp_path, pdata_tools_110):
    """Killed inside a commit: before one of its block writes, before the
    superblock write, or after it; the log proves where."""
    _run_seed(seed, tmp_path, pdata_tools_110, in_commit=True)
