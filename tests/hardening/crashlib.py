"""Crash states of a simulated pool: a random workload under a write log,
then every state the log allows (:class:`dmthin.pdata.writelog.Replayer`),
each checked.  Used by test_crash_states.py and tools/bench/crash_states.py.

The workload drives the public API (thin devices, snapshots, deletes,
writes of every shape, discards, flushes, reopens) on a pool whose
``metadata`` and ``data`` files share one write log.  It keeps a model: for
every 512-byte sector of every device, each value written and the log
position where it was written; and it marks each metadata commit in the log
(its begin, with the summary of the state being committed, and its end).

A crash state after the first *cut* entries must

* reopen (``Pool.open``) at a committed transaction: the last commit done
  before the cut, or the one in flight;
* never have an unflushed metadata write on a block that transaction uses
  (committed blocks are never overwritten; the superblock is written last);
* pass thin_check 0.9.0 and 1.1.0 (run once per distinct metadata: the
  superblock and the blocks its space map says are in use);
* read back, sector by sector, the value every device held when that
  transaction was committed (everything written before a commit is
  durable: the data file is synced first), or a value written after it.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dmthin import Pool
from dmthin.pdata import writelog
from dmthin.pdata.checksum import BLOCK_SIZE
from dmthin.pdata.writelog import WRITE, CrashState, Replayer, WriteLog
from dmthin.thin.metadata import ThinMetadata

BS = 64 << 10
SECTOR = 512
DEV_SIZE = 16 * BS
SECTORS = DEV_SIZE // SECTOR
ZERO_SECTOR = hash(bytes(SECTOR))


def summary(md: ThinMetadata) -> str:
    """The devices and mappings of *md*: what a commit makes durable."""
    h = hashlib.sha1()
    for dev in md.device_ids():
        h.update(b"dev %d mapped %d:" % (dev, md.details(dev).mapped_blocks))
        for v, d, _t in md.mappings(dev):
            h.update(b"%d=%d," % (v, d))
    return h.hexdigest()


@dataclass
class Model:
    """What the devices hold: their current bytes, and per sector every
    ``(log position, hash)`` written."""
    current: dict[int, bytearray] = field(default_factory=dict)
    history: dict[int, list[list[tuple[int, int]]]] = field(default_factory=dict)

    def create(self, dev: int) -> None:
        self.current[dev] = bytearray(DEV_SIZE)
        self.history[dev] = [[(-1, ZERO_SECTOR)] for _ in range(SECTORS)]

    def snapshot(self, new: int, origin: int) -> None:
        self.current[new] = bytearray(self.current[origin])
        self.history[new] = [list(h) for h in self.history[origin]]

    def write(self, seq: int, dev: int, offset: int, data: bytes) -> None:
        cur = self.current[dev]
        cur[offset:offset + len(data)] = data
        for s in range(offset // SECTOR, (offset + len(data) - 1) // SECTOR + 1):
            self.history[dev][s].append((seq, hash(bytes(cur[s * SECTOR:(s + 1) * SECTOR]))))

    def acceptable(self, dev: int, sector: int, durable_at: int, cut: int) -> set[int]:
        """Values sector *sector* may hold: the last written before
        *durable_at*, and any written from then up to the cut."""
        hist = self.history[dev][sector]
        ok = {hist[0][1]}
        for seq, value in hist:
            if seq < durable_at:
                ok = {value}
            elif seq < cut:
                ok.add(value)
        return ok


@dataclass
class Recording:
    """A workload's log, the files before it, the model, and the pool.json."""
    log: WriteLog
    base: dict[str, bytes]
    model: Model
    config: bytes
    ops: int


def run_workload(path: Path, seed: int, nr_ops: int) -> Recording:
    """Create a pool at *path*, then log *nr_ops* random operations on it."""
    rnd = random.Random(seed)
    with Pool.create(path, data_size="8M", metadata_size="2M", backend="sim"):
        pass
    base = {"metadata": (path / "metadata").read_bytes(), "data": (path / "data").read_bytes()}
    log = WriteLog()
    model = Model()
    orig_commit = ThinMetadata.commit

    def commit(md: ThinMetadata) -> None:
        log.mark("commit-begin", summary(md))
        orig_commit(md)
        log.mark("commit-done")
    writelog.attach(path / "metadata", log, "metadata")
    writelog.attach(path / "data", log, "data")
    ThinMetadata.commit = commit       # type: ignore[method-assign]
    try:
        log.mark("commit-begin", None)          # the state the pool was created with
        log.mark("commit-done")
        pool = Pool.open(path)
        live: list[int] = []
        next_id = 1
        for _op in range(nr_ops):
            r = rnd.random()
            if r < 0.08 and len(live) < 4:
                pool.create_thin(next_id, DEV_SIZE)
                model.create(next_id)
                live.append(next_id)
                next_id += 1
            elif r < 0.14 and live and len(live) < 4:
                origin = rnd.choice(live)
                pool.create_snap(next_id, origin)
                model.snapshot(next_id, origin)
                live.append(next_id)
                next_id += 1
            elif r < 0.17 and len(live) > 2:
                dev = live.pop(rnd.randrange(len(live)))
                pool.delete(dev)
            elif r < 0.22 and live:
                dev = rnd.choice(live)
                off = rnd.randrange(DEV_SIZE)
                n = min(DEV_SIZE - off, rnd.randrange(1, 3 * BS))
                # whole blocks inside the range are unmapped: they read zeros
                for b in range(-(-off // BS), (off + n) // BS):
                    model.write(len(log), dev, b * BS, bytes(BS))
                pool.thin(dev).discard(off, n)
            elif r < 0.32 and live:
                pool.thin(rnd.choice(live)).flush()
            elif r < 0.34:
                pool.close()
                pool = Pool.open(path)
            elif live:
                dev = rnd.choice(live)
                kind = rnd.random()
                if kind < 0.3:
                    n = rnd.randrange(1, 4096)
                elif kind < 0.6:
                    n = SECTOR * rnd.randrange(1, 9)
                elif kind < 0.85:
                    n = BS
                else:
                    n = rnd.randrange(BS, 3 * BS)
                off = rnd.randrange(0, DEV_SIZE - n + 1)
                if kind >= 0.6 and kind < 0.85:
                    off -= off % BS
                data = rnd.randbytes(n)
                model.write(len(log), dev, off, data)
                pool.thin(dev).write(off, data)
        pool.close()
    finally:
        ThinMetadata.commit = orig_commit      # type: ignore[method-assign]
        writelog.detach(path / "metadata")
        writelog.detach(path / "data")
    return Recording(log, base, model, (path / "pool.json").read_bytes(), nr_ops)


@dataclass
class Verdicts:
    """What a run of checks saw."""
    states: int = 0
    cuts: int = 0
    torn: int = 0
    reordered: int = 0
    tool_runs: int = 0
    commits_seen: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)


class Checker:
    """Checks crash states of one :class:`Recording` in a scratch pool
    directory (*scratch*); *tools*: the thin_check commands (argv prefixes)."""

    def __init__(self, rec: Recording, scratch: Path, tools: list[list[str]]):
        self.rec = rec
        self.scratch = scratch
        self.tools = tools
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(mode=0o700)
        (scratch / "pool.json").write_bytes(rec.config)
        (scratch / "pool.json").chmod(0o600)
        self._in_use: dict[bytes, tuple[int, ...]] = {}
        self._tool_ok: dict[str, str | None] = {}
        self.verdicts = Verdicts()
        entries = rec.log.entries
        # for each cut: (begin of the last commit done, begin of a commit in flight)
        self._commits: list[tuple[int, str]] = []
        begins = {}
        done_before: list[tuple[int, int | None]] = []
        last_done: int = 0
        open_begin: int | None = None
        for i, e in enumerate(entries):
            done_before.append((last_done, open_begin))
            if e.kind == "mark" and e.label == "commit-begin":
                open_begin = i
                begins[i] = e.payload
            elif e.kind == "mark" and e.label == "commit-done":
                assert open_begin is not None
                last_done, open_begin = open_begin, None
        done_before.append((last_done, open_begin))
        self._done_before = done_before
        self._summaries = begins
        first = next(i for i, e in enumerate(entries) if e.kind == "mark")
        self._summaries[first] = self._initial_summary()

    def _put(self, name: str, image: bytearray) -> None:
        """Make the scratch file *name* hold *image* (rewritten in place:
        truncating and refilling a file costs more than the checks)."""
        path = self.scratch / name
        if not path.exists() or path.stat().st_size != len(image):
            path.write_bytes(image)
            path.chmod(0o600)
            return
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, image, 0)
        finally:
            os.close(fd)

    def _initial_summary(self) -> str:
        self._put("metadata", bytearray(self.rec.base["metadata"]))
        md = ThinMetadata.open(self.scratch / "metadata", read_only=True)
        try:
            return summary(md)
        finally:
            md.close()

    def check(self, st: CrashState) -> None:
        """Check one state; problems go to ``verdicts.failures``."""
        v = self.verdicts
        v.states += 1
        entries = self.rec.log.entries
        if any(sectors is not None for _i, sectors in st.applied):
            v.torn += 1
        idx = [i for i, _s in st.applied]
        if (idx and idx != list(range(idx[0], idx[0] + len(idx)))) or \
                (idx and st.label != "all" and st.label != "torn last"):
            v.reordered += 1
        where = f"cut {st.cut} ({st.label}, {len(st.applied)} unflushed writes kept)"
        meta, data = st.images["metadata"], st.images["data"]
        self._put("metadata", meta)
        self._put("data", data)
        last_done, in_flight = self._done_before[st.cut]
        allowed = {self._summaries[last_done]: last_done}
        if in_flight is not None:
            allowed[self._summaries[in_flight]] = in_flight
        try:
            md = ThinMetadata.open(self.scratch / "metadata", read_only=True)
        except Exception as e:      # noqa: BLE001 - any failure to open is the finding
            v.failures.append(f"{where}: the metadata does not open: {e}")
            return
        try:
            got = summary(md)
            if got not in allowed:
                v.failures.append(f"{where}: reopens at a state no commit made")
                return
            durable_at = allowed[got]
            v.commits_seen.add(got)
            in_use = self._blocks_in_use(md, bytes(meta[:BLOCK_SIZE]))
            mapping = {dev: {vb: d for vb, d, _t in md.mappings(dev)} for dev in md.device_ids()}
        except Exception as e:      # noqa: BLE001 - any failure to read it is the finding
            v.failures.append(f"{where}: the metadata cannot be read: {e}")
            return
        finally:
            md.close()
        used = set(in_use)
        for i, _sectors in st.applied:
            e = entries[i]
            if e.device == "metadata" and e.kind == WRITE and e.offset:
                b = e.offset // BLOCK_SIZE
                if b in used:
                    v.failures.append(f"{where}: an unflushed write hit metadata block {b}, "
                                      "which the committed state uses")
        self._run_tools(meta, in_use, where)
        self._check_data(mapping, data, durable_at, st.cut, where)
        self._reopen(mapping, where)

    def _blocks_in_use(self, md: ThinMetadata, sb: bytes) -> tuple[int, ...]:
        got = self._in_use.get(sb)
        if got is None:
            sm = md.metadata_sm
            got = self._in_use[sb] = tuple(b for b in range(sm.nr_blocks) if sm.get_count(b))
        return got

    def _run_tools(self, meta: bytearray, in_use: tuple[int, ...], where: str) -> None:
        h = hashlib.sha1(struct.pack(f"<{len(in_use)}Q", *in_use))
        for b in in_use:
            h.update(meta[b * BLOCK_SIZE:(b + 1) * BLOCK_SIZE])
        key = h.hexdigest()
        if key not in self._tool_ok:
            problem = None
            for argv in self.tools:
                self.verdicts.tool_runs += 1
                p = subprocess.run([*argv, str(self.scratch / "metadata")], capture_output=True,
                                   text=True, timeout=120)
                if p.returncode:
                    problem = f"{' '.join(argv[-2:])}: {(p.stdout + p.stderr).strip()[-300:]}"
                    break
            self._tool_ok[key] = problem
        if self._tool_ok[key] is not None:
            self.verdicts.failures.append(f"{where}: {self._tool_ok[key]}")

    def _check_data(self, mapping: dict[int, dict[int, int]], data: bytearray,
                    durable_at: int, cut: int, where: str) -> None:
        model = self.rec.model
        for dev, maps in mapping.items():
            if dev not in model.history:
                self.verdicts.failures.append(f"{where}: device {dev} was never created")
                continue
            for s in range(SECTORS):
                vb, within = divmod(s * SECTOR, BS)
                d = maps.get(vb)
                if d is None:
                    value = ZERO_SECTOR
                else:
                    pos = d * BS + within
                    value = hash(bytes(data[pos:pos + SECTOR]).ljust(SECTOR, b"\0"))
                if value not in model.acceptable(dev, s, durable_at, cut):
                    self.verdicts.failures.append(
                        f"{where}: device {dev} sector {s} holds a value neither committed "
                        "nor written since")
                    return

    def _reopen(self, mapping: dict[int, dict[int, int]], where: str) -> None:
        """The pool reopens (read-only) and reads what the metadata maps."""
        try:
            with Pool.open(self.scratch, readonly=True) as pool:
                if sorted(pool.thin_ids()) != sorted(mapping):
                    self.verdicts.failures.append(f"{where}: the reopened pool lists other "
                                                  "devices")
        except Exception as e:      # noqa: BLE001 - any failure to reopen is the finding
            self.verdicts.failures.append(f"{where}: Pool.open fails: {e}")


def check_states(rec: Recording, scratch: Path, tools: list[list[str]], seed: int,
                 *, random_per_cut: int = 1, cut_filter: Callable[[int], bool] | None = None,
                 limit: int | None = None) -> Verdicts:
    """Check the crash states of *rec* (cuts passing *cut_filter*; at most
    *limit* states)."""
    checker = Checker(rec, scratch, tools)
    n = len(rec.log.entries)
    cuts = None if cut_filter is None else {c for c in range(n + 1) if cut_filter(c)}
    replay = Replayer(rec.log, rec.base)
    last_cut = -1
    for st in replay.states(random.Random(seed), random_per_cut=random_per_cut, cuts=cuts):
        if st.cut != last_cut:
            checker.verdicts.cuts += 1
            last_cut = st.cut
        checker.check(st)
        if limit is not None and checker.verdicts.states >= limit:
            break
    return checker.verdicts


def describe(v: Verdicts, log: WriteLog) -> str:
    writes = sum(e.kind == WRITE for e in log.entries)
    flushes = sum(e.kind == "flush" for e in log.entries)
    return json.dumps({"log_entries": len(log.entries), "writes": writes, "flushes": flushes,
                       "cuts": v.cuts, "states": v.states, "torn": v.torn,
                       "reordered": v.reordered, "commits_reopened": len(v.commits_seen),
                       "thin_check_runs": v.tool_runs, "failures": len(v.failures)})
