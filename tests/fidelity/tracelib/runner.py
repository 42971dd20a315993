"""Replaying a trace on one backend through the public Pool API: after
every step the pool status, each active thin's status line, the event
counter and the errno; at the end every device's bytes and what the 0.9.0
tools say of the metadata."""
from __future__ import annotations

import errno as errno_mod
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from dmthin import Pool
from dmthin.dm import loop
from dmthin.pool import DEFAULT_BLOCK_SIZE

from .format import load_trace, payload, size

NO_SPACE_PARAM = "/sys/module/dm_thin_pool/parameters/no_space_timeout"
LS_FIELDS = "DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS,TRANSACTION,CREATE_TIME,SNAP_TIME"
READ_CHUNK = 1 << 20


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
                pool.create_thin(s["id"], size(s["size"]))
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
                pool.thin(s["id"]).write(size(s["offset"]),
                                         payload(s.get("seed", 0), 0, size(s["length"]),
                                                 s.get("byte")))
            elif op == "writes":
                rec["errnos"] = self._writes(s)
            elif op == "discard":
                pool.thin(s["id"]).discard(size(s["offset"]), size(s["length"]))
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
        final: dict = {"sha256": {}, "blocks": {}, "thin_ids": pool.thin_ids()}
        for dev_id in final["thin_ids"]:
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
