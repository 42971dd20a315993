#!/usr/bin/env python3
"""Fidelity traces: replay pool operations on the simulator and on the real
kernel through the public :class:`dmthin.Pool` API, and compare what each
backend reported.

  tools/trace.py run TRACE.jsonl --backend sim|kernel [--workdir DIR] [-o RESULT.json]
  tools/trace.py gen --seed N [--writes N] [-o TRACE.jsonl]
  tools/trace.py compare KERNEL.json SIM.json
  tools/trace.py suite [--traces N] [--seed S] [--writes N] [--backends kernel,sim]
                       [--workdir DIR] [--out DIR] [TRACE.jsonl...]

A trace is JSON lines.  The first line is the header::

    {"name": "...", "pool": {"data_size": "16M", "metadata_size": "4M",
     "block_size": "64K", "low_water_mark": 8, "features": []},
     "no_space_timeout": 2}

Every other line is one step (offsets and sizes in bytes, or "64K"-style):

    {"op": "create_thin", "id": 1, "size": "4M"}
    {"op": "create_snap", "id": 2, "origin": 1}
    {"op": "delete", "id": 1}
    {"op": "set_transaction_id", "old": 0, "new": 1}
    {"op": "message", "text": "create_thin 7"}
    {"op": "reserve_metadata_snap"}         {"op": "release_metadata_snap"}
    {"op": "write", "id": 1, "offset": 0, "length": 4096, "seed": 5}   (or "byte": 83)
    {"op": "writes", "seed": 9, "ios": [[id, offset, length], ...]}    (one step)
    {"op": "writes", "seed": 9, "id": 1, "blocks": [0, 5, 7]}           (whole blocks)
    {"op": "discard", "id": 1, "offset": 0, "length": 65536}
    {"op": "flush", "id": 1}   {"op": "status"}   {"op": "reopen"}
    {"op": "activate", "id": 1}   {"op": "deactivate", "id": 1}

Written bytes are ``random.Random(f"{seed}:{k}").randbytes(length)`` for the
k-th I/O of the step.  After every step the runner records the pool status,
the status line of every active thin, the pool's event counter and the errno
of a failing step (for "writes": [index, errno] of each failing I/O).  At the
end it reads every thin device (sha256), closes the pool (kernel: teardown)
and runs thin_dump, thin_ls and thin_check 0.9.0 on the metadata file (through
a read-only loop device where the file system refuses O_DIRECT).

The kernel commits every second, the simulator only on messages, flushes,
status and close; traces that free blocks (discard) commit (flush or status)
before the next allocation, so data allocation is the same on both.
"""
from __future__ import annotations

import argparse
import errno as errno_mod
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dmthin import Pool  # noqa: E402
from dmthin.backend import BACKENDS, DEFAULT_BACKEND  # noqa: E402
from dmthin.pool import DEFAULT_BLOCK_SIZE  # noqa: E402
from dmthin.units import parse_size  # noqa: E402

TRACES_DIR = REPO / "tests" / "traces"
NO_SPACE_PARAM = "/sys/module/dm_thin_pool/parameters/no_space_timeout"
LS_FIELDS = "DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS,TRANSACTION,CREATE_TIME,SNAP_TIME"
READ_CHUNK = 1 << 20


# ----------------------------------------------------------------------------- traces
def load_trace(path) -> tuple[dict, list[dict]]:
    """(header, steps) of a JSON-lines trace; raises ValueError naming the line."""
    header, steps = None, []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                obj = json.loads(line)
            except ValueError as err:
                raise ValueError(f"{path}:{n}: not JSON: {err}") from None
            if header is None:
                if "pool" not in obj:
                    raise ValueError(f"{path}:{n}: the first line must be the header "
                                     '({"name": ..., "pool": {...}})')
                header = obj
            else:
                if "op" not in obj:
                    raise ValueError(f"{path}:{n}: a step needs an \"op\"")
                steps.append(obj)
    if header is None:
        raise ValueError(f"{path}: empty trace")
    header.setdefault("name", Path(path).stem)
    return header, steps


def save_trace(path, header: dict, steps: list[dict]) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(header) + "\n")
        for s in steps:
            f.write(json.dumps(s) + "\n")


def _size(v) -> int:
    return v if isinstance(v, int) else parse_size(v, "trace size")


def payload(seed, k: int, length: int, byte=None) -> bytes:
    """The bytes of the k-th I/O of a step."""
    if byte is not None:
        return bytes([byte]) * length
    return random.Random(f"{seed}:{k}").randbytes(length)


# ----------------------------------------------------------------------------- running
def _errno(err: BaseException) -> int:
    code = getattr(err, "errno", None)
    return code if isinstance(code, int) else errno_mod.EIO


def _events(pool: Pool) -> int | None:
    """The pool device's event counter (Pool.event_nr), None if closed."""
    try:
        return pool.event_nr
    except OSError:
        return None


def _snapshot(pool: Pool) -> dict:
    rec: dict = {}
    try:
        st = pool.status()
        rec["status"] = st.to_dict()
    except Exception as err:  # noqa: BLE001 - recorded and compared
        rec["status_errno"] = _errno(err)
    thins = {}
    for thin in pool.active_thins():
        dev_id = thin.dev_id
        try:
            thins[str(dev_id)] = thin.status_line()
        except Exception as err:  # noqa: BLE001
            thins[str(dev_id)] = f"errno {_errno(err)}"
    rec["thins"] = thins
    rec["events"] = _events(pool)
    return rec


class Runner:
    """Replays one trace on one backend (see the module docstring)."""

    def __init__(self, header: dict, backend: str, pooldir: Path):
        self.header = header
        self.backend = backend
        self.pooldir = pooldir
        self.pool: Pool | None = None

    def _open(self) -> None:
        self.pool = Pool.open(self.pooldir, backend=self.backend)

    def create(self) -> None:
        timeout = self.header.get("no_space_timeout", 2)
        os.environ["DMTHIN_SIM_NO_SPACE_TIMEOUT"] = str(timeout)
        if self.backend == "kernel" and os.path.exists(NO_SPACE_PARAM):
            with open(NO_SPACE_PARAM, "w") as f:
                f.write(f"{int(timeout)}\n")
        p = self.header["pool"]
        if self.pooldir.exists():
            shutil.rmtree(self.pooldir)
        self.pooldir.parent.mkdir(parents=True, exist_ok=True)
        self.pool = Pool.create(self.pooldir, data_size=p.get("data_size", "16M"),
                                metadata_size=p.get("metadata_size", "4M"),
                                block_size=p.get("block_size", DEFAULT_BLOCK_SIZE),
                                low_water_mark=p.get("low_water_mark"),
                                features=tuple(p.get("features", ())), backend=self.backend)

    def step(self, s: dict) -> dict:
        """Run one step; return its record (errno, errnos, status...)."""
        pool = self.pool
        op = s["op"]
        rec: dict = {"op": op}
        t0 = time.monotonic()
        try:
            if op == "create_thin":
                pool.create_thin(s["id"], _size(s["size"]))
            elif op == "create_snap":
                pool.create_snap(s["id"], s["origin"])
            elif op == "delete":
                pool.delete(s["id"])
            elif op == "set_transaction_id":
                pool.set_transaction_id(s["old"], s["new"])
            elif op == "message":
                pool.message(s["text"])
            elif op == "reserve_metadata_snap":
                pool.reserve_metadata_snap()
            elif op == "release_metadata_snap":
                pool.release_metadata_snap()
            elif op == "write":
                pool.thin(s["id"]).write(_size(s["offset"]),
                                         payload(s.get("seed", 0), 0, _size(s["length"]),
                                                 s.get("byte")))
            elif op == "writes":
                rec["errnos"] = self._writes(s)
            elif op == "discard":
                pool.thin(s["id"]).discard(_size(s["offset"]), _size(s["length"]))
            elif op == "flush":
                pool.thin(s["id"]).flush()
            elif op == "activate":
                pool.thin(s["id"])
            elif op == "deactivate":
                pool.thin(s["id"]).deactivate()
            elif op == "reopen":
                pool.close()
                self._open()
            elif op != "status":
                raise ValueError(f"unknown trace op {op!r}")
            rec["errno"] = None
        except ValueError as err:
            if not hasattr(err, "errno"):
                raise
            rec["errno"] = _errno(err)
        except OSError as err:
            rec["errno"] = _errno(err)
        rec["seconds"] = round(time.monotonic() - t0, 3)
        rec.update(_snapshot(self.pool))        # a new Pool after "reopen"
        return rec

    def _writes(self, s: dict) -> list:
        pool = self.pool
        bs = pool.data_block_size
        ios = [[s["id"], b * bs, bs] for b in s["blocks"]] if "blocks" in s else s["ios"]
        failed = []
        for k, (dev_id, offset, length) in enumerate(ios):
            try:
                pool.thin(dev_id).write(offset, payload(s.get("seed", 0), k, length))
            except OSError as err:
                failed.append([k, _errno(err)])
        return failed

    def finish(self) -> dict:
        """Hash every device, close the pool, dump/ls/check the metadata."""
        pool = self.pool
        final: dict = {"sha256": {}, "blocks": {}}
        for dev_id in pool.thin_ids():
            try:
                thin = pool.thin(dev_id)
                h = hashlib.sha256()
                blocks = final["blocks"].setdefault(str(dev_id), {})
                bs = pool.data_block_size
                for off in range(0, thin.size, READ_CHUNK):
                    chunk = thin.read(off, min(READ_CHUNK, thin.size - off))
                    h.update(chunk)
                    for i in range(0, len(chunk), bs):
                        part = chunk[i:i + bs]
                        if part.count(0) != len(part):
                            blocks[str((off + i) // bs)] = hashlib.sha256(part).hexdigest()[:12]
                final["sha256"][str(dev_id)] = h.hexdigest()
            except OSError as err:
                final["sha256"][str(dev_id)] = f"errno {_errno(err)}"
        final["last"] = _snapshot(pool)
        pool.close()
        meta = self.pooldir / "metadata"
        final["dump"] = tool_output(["thin_dump"], meta)
        final["ls"] = tool_output(["thin_ls", "--no-headers", "-o", LS_FIELDS], meta)
        final["check"] = tool_output(["thin_check"], meta)
        return final


def tool_output(argv: list[str], meta: Path) -> dict:
    """Run a 0.9.0 tool on a metadata file: {"rc", "out", "err"}.  Falls back
    to a read-only loop device when the file system refuses O_DIRECT."""
    tool = shutil.which(argv[0], path="/usr/sbin:/sbin:" + os.environ.get("PATH", ""))
    if tool is None:
        return {"rc": None, "out": "", "err": f"{argv[0]} not installed"}
    p = subprocess.run([tool, *argv[1:], str(meta)], capture_output=True, text=True)
    if p.returncode and "Invalid argument" in p.stderr and os.geteuid() == 0:
        from dmthin.dm import loop
        with loop.attach(meta, read_only=True) as dev:
            p = subprocess.run([tool, *argv[1:], dev.path], capture_output=True, text=True)
            dev.close()
            loop.detach(dev.path)
    return {"rc": p.returncode, "out": p.stdout, "err": p.stderr.strip()}


def run_trace(path, backend: str, workdir: Path) -> dict:
    """Replay the trace at *path* on *backend* in a fresh pool under *workdir*."""
    header, steps = load_trace(path)
    pooldir = Path(workdir) / f"{header['name']}-{backend}"
    runner = Runner(header, backend, pooldir)
    t0 = time.monotonic()
    runner.create()
    records = []
    try:
        records.append({"op": "create", "errno": None, **_snapshot(runner.pool)})
        for s in steps:
            records.append(runner.step(s))
        final = runner.finish()
    finally:
        if runner.pool is not None:
            try:
                runner.pool.close()
            except Exception:  # noqa: BLE001 - the first error matters
                pass
    shutil.rmtree(pooldir, ignore_errors=True)
    return {"trace": header["name"], "backend": backend, "header": header,
            "steps": records, "final": final,
            "seconds": round(time.monotonic() - t0, 2)}


# ----------------------------------------------------------------------------- generating
def generate(seed: int, writes: int = 300, fill: bool = False) -> tuple[dict, list[dict]]:
    """A random trace from *seed* with about *writes* block writes.

    With *fill* the pool is small enough to run out of data space.  Such
    traces are timing-dependent on the kernel: when the only free blocks
    were freed in the current transaction (a snapshot's block whose sharer
    was deleted gets overwritten), allocation fails until the next commit,
    and the kernel commits every second; the event counts, and under
    error_if_no_space the failing writes, then depend on that timing.
    Without *fill* (the default) the pool never fills: every I/O allocates
    at most 3 blocks.
    """
    rng = random.Random(seed)
    bs = 64 << 10
    nblocks = rng.choice([96, 128, 192, 256])
    dev_blocks = rng.choice([32, 64, 128])
    features = rng.choice([[], [], ["error_if_no_space"], ["no_discard_passdown"],
                           ["skip_block_zeroing"], ["error_if_no_space", "skip_block_zeroing"]])
    lwm = rng.randrange(0, nblocks // 3)
    if not fill:
        nblocks += 3 * writes
        lwm = nblocks - rng.randrange(1, max(2, writes))    # crossed after that many
    header = {"name": f"gen-{seed}{'-fill' if fill else ''}", "seed": seed,
              "no_space_timeout": 2, "fill": fill,
              "pool": {"data_size": nblocks * bs, "metadata_size": "4M",
                       "block_size": f"{bs >> 10}K",
                       "low_water_mark": lwm, "features": features}}
    if fill:
        header["timing_dependent"] = ["pool events", "errno of the step", "used data blocks",
                                      "no-space policy", "used metadata blocks",
                                      "used metadata blocks (final)",
                                      "mode", "thin status lines", "device bytes (sha256)",
                                      "mappings (vblock -> data block, time)", "thin_dump XML",
                                      "thin_ls figures", "device details"]
    size = dev_blocks * bs
    steps: list[dict] = [{"op": "create_thin", "id": 1, "size": size}]
    live, next_id, tid, held = [1], 2, 0, False
    budget = writes
    while budget > 0:
        r = rng.random()
        if r < 0.45 or not live:
            if not live:
                steps.append({"op": "create_thin", "id": next_id, "size": size})
                live.append(next_id)
                next_id += 1
            k = rng.randint(1, min(budget, 30))
            ios = []
            for _ in range(k):
                dev = rng.choice(live)
                vb = rng.randrange(dev_blocks)
                if rng.random() < 0.7:
                    ios.append([dev, vb * bs, bs])
                else:
                    off = vb * bs + (rng.randrange(bs // 512) * 512 if rng.random() < 0.7
                                     else rng.randrange(bs))
                    length = rng.randint(1, min(2 * bs, size - off))
                    ios.append([dev, off, length])
            steps.append({"op": "writes", "seed": rng.randrange(1 << 30), "ios": ios})
            budget -= k
        elif r < 0.55 and len(live) < 8:
            origin = rng.choice(live)
            steps.append({"op": "create_snap", "id": next_id, "origin": origin})
            live.append(next_id)
            next_id += 1
        elif r < 0.60 and len(live) < 8:
            steps.append({"op": "create_thin", "id": next_id, "size": size})
            live.append(next_id)
            next_id += 1
        elif r < 0.67 and len(live) > 1:
            victim = rng.choice(live)
            live.remove(victim)
            steps.append({"op": "delete", "id": victim})
        elif r < 0.77:
            dev = rng.choice(live)
            off = rng.randrange(size) if rng.random() < 0.5 else rng.randrange(dev_blocks) * bs
            length = rng.randint(1, min(size - off, 24 * bs))
            steps.append({"op": "discard", "id": dev, "offset": off, "length": length})
            steps.append({"op": "flush", "id": dev})
        elif r < 0.82:
            if rng.random() < 0.8:
                steps.append({"op": "set_transaction_id", "old": tid, "new": tid + 1})
                tid += 1
            else:
                steps.append({"op": "set_transaction_id", "old": tid + 7, "new": tid + 8})
        elif r < 0.87:
            wrong = rng.random() < 0.2
            op = "reserve_metadata_snap" if held == wrong else "release_metadata_snap"
            if not wrong:
                held = not held
            steps.append({"op": op})
        elif r < 0.90:
            steps.append({"op": "reopen"})
        elif r < 0.95:
            steps.append({"op": "flush", "id": rng.choice(live)})
        else:
            # an error path: an existing id, or a missing one
            if rng.random() < 0.5:
                steps.append({"op": "create_thin", "id": rng.choice(live), "size": size})
            else:
                steps.append({"op": "delete", "id": next_id + 100})
    return header, steps


# ----------------------------------------------------------------------------- comparing
#: per-step quantities: name -> function of a step record
STEP_QUANTITIES = {
    "transaction id": lambda r: r.get("status", {}).get("transaction_id"),
    "used data blocks": lambda r: r.get("status", {}).get("used_data_blocks"),
    "total data blocks": lambda r: r.get("status", {}).get("total_data_blocks"),
    "total metadata blocks": lambda r: r.get("status", {}).get("total_metadata_blocks"),
    "metadata low watermark": lambda r: r.get("status", {}).get("metadata_low_watermark"),
    "mode": lambda r: r.get("status", {}).get("mode"),
    "discard mode": lambda r: r.get("status", {}).get("discard"),
    "no-space policy": lambda r: r.get("status", {}).get("no_space_policy"),
    "metadata snapshot held": lambda r: r.get("status", {}).get("held_root") is not None,
    "needs_check": lambda r: r.get("status", {}).get("needs_check"),
    "thin status lines": lambda r: r.get("thins"),
    "errno of the step": lambda r: (r.get("errno"), r.get("errnos"), r.get("status_errno")),
    "pool events": lambda r: r.get("events"),
    "used metadata blocks": lambda r: r.get("status", {}).get("used_metadata_blocks"),
    "held root block (position)": lambda r: r.get("status", {}).get("held_root"),
}

#: compared and shown, but not required to agree: metadata block positions
#: depend on when the kernel commits (every second), the simulator does not
INFO_QUANTITIES = {"held root block (position)"}


def parse_dump(xml: str) -> tuple[dict, dict, dict]:
    """(superblock attrs, {dev: details}, {dev: {vblock: (dblock, time)}})."""
    root = ET.fromstring(xml)
    details, maps = {}, {}
    for dev in root.iter("device"):
        d = dict(dev.attrib)
        dev_id = d.pop("dev_id")
        details[dev_id] = d
        m = maps[dev_id] = {}
        for el in dev:
            a = el.attrib
            if el.tag == "single_mapping":
                m[int(a["origin_block"])] = (int(a["data_block"]), int(a["time"]))
            elif el.tag == "range_mapping":
                o, db, t = int(a["origin_begin"]), int(a["data_begin"]), int(a["time"])
                for i in range(int(a["length"])):
                    m[o + i] = (db + i, t)
    return dict(root.attrib), details, maps


def final_quantities(res: dict) -> dict:
    """name -> {key: value} of the end-of-trace quantities (one entry each)."""
    fin = res["final"]
    out: dict = {}
    try:
        sb, details, maps = parse_dump(fin["dump"]["out"])
        out["superblock (thin_dump)"] = {"sb": sb}
        out["device details"] = details
        out["mappings (vblock -> data block, time)"] = maps
    except ET.ParseError as err:
        out["superblock (thin_dump)"] = {"sb": f"unparsable: {err}"}
    out["thin_dump XML"] = {"xml": fin["dump"]["out"]}
    rows = {}
    for line in fin["ls"]["out"].splitlines():
        f = line.split()
        if f:
            rows[f[0]] = f[1:]
    out["thin_ls figures"] = rows
    out["device bytes (sha256)"] = fin["sha256"]
    out["thin_check 0.9.0 rc"] = {"rc": fin["check"]["rc"]}
    out["used metadata blocks (final)"] = {
        "used": fin["last"].get("status", {}).get("used_metadata_blocks")}
    return out


class Tally:
    """Counts of compared and equal values per quantity, with examples."""

    def __init__(self):
        self.rows: dict[str, list[int]] = {}
        self.diffs: list[str] = []

    def add(self, name: str, equal: bool, where: str, a=None, b=None) -> None:
        if name in INFO_QUANTITIES and a is None and b is None:
            return                              # nothing to compare
        row = self.rows.setdefault(name, [0, 0])
        row[0] += 1
        row[1] += bool(equal)
        if not equal and name not in INFO_QUANTITIES:
            self.diffs.append(f"{where}: {name}: kernel={_short(a)} sim={_short(b)}")

    def table(self) -> str:
        lines = [f"{'quantity':50} {'compared':>9} {'equal':>9} {'share':>8}"]
        for name, (n, eq) in self.rows.items():
            share = f"{100.0 * eq / n:.1f}%" if n else "-"
            label = name + (" (info)" if name in INFO_QUANTITIES else "")
            lines.append(f"{label:50} {n:9d} {eq:9d} {share:>8}")
        return "\n".join(lines)

    def ok(self) -> bool:
        """True if every required quantity agreed everywhere."""
        return all(n == eq for name, (n, eq) in self.rows.items()
                   if name not in INFO_QUANTITIES)


def _short(v, limit: int = 160) -> str:
    text = json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def compare(kern: dict, sim: dict, tally: Tally | None = None) -> Tally:
    """Compare a kernel result with a sim result of the same trace."""
    tally = tally or Tally()
    name = kern["trace"]
    timing = set(kern.get("header", {}).get("timing_dependent", ()))
    if timing:                          # see generate(): compared as information
        plain = Tally()
        compare(_strip_timing(kern), _strip_timing(sim), plain)
        for q, (n, eq) in plain.rows.items():
            label = q + " [timing]" if q in timing else q
            row = tally.rows.setdefault(label, [0, 0])
            row[0] += n
            row[1] += eq
            if label != q:
                INFO_QUANTITIES.add(label)
        tally.diffs += [d for d in plain.diffs if not any(f": {q}:" in d for q in timing)]
        return tally
    ks, ss = kern["steps"], sim["steps"]
    if len(ks) != len(ss):
        tally.add("number of steps", False, name, len(ks), len(ss))
    for i, (a, b) in enumerate(zip(ks, ss, strict=False)):
        for q, f in STEP_QUANTITIES.items():
            va, vb = f(a), f(b)
            tally.add(q, va == vb, f"{name} step {i} ({a['op']})", va, vb)
    fa, fb = final_quantities(kern), final_quantities(sim)
    for q in fa:
        da, db = fa[q], fb.get(q, {})
        for key in sorted(set(da) | set(db), key=str):
            va, vb = da.get(key), db.get(key)
            if q.startswith("device bytes") and va != vb:
                ba = kern["final"].get("blocks", {}).get(key, {})
                bb = sim["final"].get("blocks", {}).get(key, {})
                diff = sorted((k for k in set(ba) | set(bb) if ba.get(k) != bb.get(k)), key=int)
                va, vb = {k: ba.get(k) for k in diff[:4]}, {k: bb.get(k) for k in diff[:4]}
                tally.add(q, False, f"{name} final dev {key} ({len(diff)} blocks differ: "
                          f"{' '.join(diff[:12])})", va, vb)
                continue
            if q.startswith("mappings") and va != vb and va is not None and vb is not None:
                diff = sorted(k for k in set(va) | set(vb) if va.get(k) != vb.get(k))
                va = {k: va.get(k) for k in diff[:4]}
                vb = {k: vb.get(k) for k in diff[:4]}
                tally.add(q, False, f"{name} final dev {key} ({len(diff)} vblocks differ)",
                          va, vb)
                continue
            tally.add(q, va == vb, f"{name} final {key}", va, vb)
    return tally


def _strip_timing(res: dict) -> dict:
    out = dict(res)
    out["header"] = {k: v for k, v in res.get("header", {}).items() if k != "timing_dependent"}
    return out


# ----------------------------------------------------------------------------- the suite
def trace_files(names) -> list[Path]:
    if names:
        return [Path(n) for n in names]
    return sorted(TRACES_DIR.glob("*.jsonl"))


def suite(files: list[Path], n_gen: int, seed: int, writes: int, backends: list[str],
          workdir: Path, out: Path | None, log=print, n_fill: int = 0) -> Tally:
    """Run hand-written and generated traces (*n_gen* that never fill the
    pool, *n_fill* that do) on each backend and compare."""
    workdir.mkdir(parents=True, exist_ok=True)
    gen_dir = workdir / "generated"
    gen_dir.mkdir(exist_ok=True)
    for k in range(n_gen + n_fill):
        header, steps = generate(seed + k, writes, fill=k >= n_gen)
        path = gen_dir / f"{header['name']}.jsonl"
        save_trace(path, header, steps)
        files.append(path)
    tally = Tally()
    for path in files:
        results = {}
        for backend in backends:
            try:
                res = run_trace(path, backend, workdir)
            except Exception as err:  # noqa: BLE001 - one trace must not stop the suite
                log(f"trace {path}: {backend} failed: {err!r}")
                tally.add("trace ran to the end", False, f"{path} on {backend}", repr(err))
                continue
            results[backend] = res
            log(f"trace {res['trace']}: {backend} {len(res['steps'])} steps in "
                f"{res['seconds']} s")
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                (out / f"{res['trace']}.{backend}.json").write_text(json.dumps(res))
        if "kernel" in results and "sim" in results:
            compare(results["kernel"], results["sim"], tally)
    return tally


def report(tally: Tally, max_diffs: int = 40) -> str:
    text = tally.table()
    if tally.diffs:
        text += f"\n\n{len(tally.diffs)} differences (first {max_diffs}):\n"
        text += "\n".join(tally.diffs[:max_diffs])
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="tools/trace.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="replay a trace on one backend")
    p.add_argument("trace")
    p.add_argument("--backend", choices=tuple(BACKENDS), default=DEFAULT_BACKEND)
    p.add_argument("--workdir", default="/tmp/dmthin-trace")
    p.add_argument("-o", "--output")
    p = sub.add_parser("gen", help="write a random trace")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--writes", type=int, default=300)
    p.add_argument("--fill", action="store_true", help="a pool small enough to fill")
    p.add_argument("-o", "--output")
    p = sub.add_parser("compare", help="compare a kernel result with a sim result")
    p.add_argument("kernel")
    p.add_argument("sim")
    p = sub.add_parser("suite", help="run traces on both backends, print the table")
    p.add_argument("traces", nargs="*")
    p.add_argument("--traces", dest="n_gen", type=int,
                   default=int(os.environ.get("DMTHIN_FIDELITY_TRACES", "4")),
                   help="generated traces (env DMTHIN_FIDELITY_TRACES; default 4)")
    p.add_argument("--seed", type=int, default=int(os.environ.get("DMTHIN_FIDELITY_SEED", "1")))
    p.add_argument("--writes", type=int, default=300)
    p.add_argument("--fill", type=int, default=0,
                   help="generated traces whose pool fills (timing-dependent, see gen)")
    p.add_argument("--backends", default="kernel,sim")
    p.add_argument("--workdir", default="/tmp/dmthin-fidelity")
    p.add_argument("--out", help="keep every result JSON here")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "run":
            res = run_trace(args.trace, args.backend, Path(args.workdir))
            text = json.dumps(res, indent=1)
            if args.output:
                Path(args.output).write_text(text)
            else:
                print(text)
        elif args.cmd == "gen":
            header, steps = generate(args.seed, args.writes, args.fill)
            if args.output:
                save_trace(args.output, header, steps)
            else:
                print(json.dumps(header))
                for s in steps:
                    print(json.dumps(s))
        elif args.cmd == "compare":
            kern = json.loads(Path(args.kernel).read_text())
            sim = json.loads(Path(args.sim).read_text())
            tally = compare(kern, sim)
            print(report(tally))
            return 0 if tally.ok() else 1
        else:
            backends = args.backends.split(",")
            print(f"fidelity suite: seed {args.seed}, {args.n_gen} generated traces "
                  f"+ {args.fill} that fill the pool (~{args.writes} writes each), "
                  f"backends {backends}", flush=True)
            tally = suite(trace_files(args.traces), args.n_gen, args.seed, args.writes,
                          backends, Path(args.workdir), Path(args.out) if args.out else None,
                          log=lambda m: print(m, flush=True), n_fill=args.fill)
            print(report(tally))
            return 0 if tally.ok() else 1
    except (OSError, ValueError) as err:
        print(f"tools/trace.py: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
