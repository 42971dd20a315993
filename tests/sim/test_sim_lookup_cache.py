"""The simulator's mapping lookup cache against a model without one.

:meth:`dmthin.sim.core.SimCore.lookup` caches ``(data block, time)`` per
device and virtual block.  Hypothesis interleaves what can change a mapping
or whether it is shared -- writes (one block, partial or whole; several
blocks), snapshots (of snapshots too), deletes, discards, commits (flush,
status, deactivation), aborts (the metadata-failure path: the transaction
is rolled back and the pool goes read-only), reopens, metadata snapshots
held and released (writes shadow more blocks under one; no mapping
changes) and data device growth -- with single-block
reads and writes that go through the cache.  The model keeps, per device,
``vblock -> (token, time)`` and the bytes of every token (a data block: its
bytes survive an abort, its mapping does not), the device's snapshotted
time (a mapping is shared iff that is later than the mapping's time) and
the committed state an abort returns to.  After every step:

* every cached entry equals the metadata engine's own lookup;
* the step's reads return the model's bytes; a write into a shared block
  copied it (the other device keeps the old bytes);

and at the end every device reads back as the model says, block by block
(the cached path) and in one read (the btree walk), and thin_check accepts
the metadata.
"""
from __future__ import annotations

import copy
import errno
import itertools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmthin.errors import DeviceExists, DeviceNotFound, IOFailure, NotSupported
from dmthin.sim import core as core_module
from dmthin.sim.pool import SimPoolBackend
from simhelpers import BS, THIN_CHECK, check_tools, open_sim, pattern, sim_pool

NBLOCKS = 8                        # blocks per thin device
SIZE = NBLOCKS * BS
DEV_IDS = st.integers(0, 4)


@dataclass
class Dev:
    snap_time: int
    #: vblock -> (token, mapping time)
    map: dict[int, tuple[int, int]] = field(default_factory=dict)


@dataclass
class State:
    time: int = 0
    devs: dict[int, Dev] = field(default_factory=dict)


class Model:
    """dm-thin's mappings and data without a cache (nor a btree)."""

    def __init__(self) -> None:
        self.cur = State()
        self.committed = State()
        self.read_only = False
        #: a metadata snapshot is held (each message commits: not rolled back)
        self.held = False
        #: token -> the data block's bytes (not transactional)
        self.blocks: dict[int, bytearray] = {}
        self._tokens = itertools.count()

    def commit(self) -> None:
        if not self.read_only:
            self.committed = copy.deepcopy(self.cur)

    def abort(self) -> None:
        self.cur = copy.deepcopy(self.committed)
        self.read_only = True

    def create(self, d: int) -> None:
        self.cur.devs[d] = Dev(self.cur.time)

    def snap(self, new: int, origin: int) -> None:
        self.cur.time += 1
        o = self.cur.devs[origin]
        o.snap_time = self.cur.time
        self.cur.devs[new] = Dev(self.cur.time, dict(o.map))

    def _new_block(self, content: bytes | bytearray) -> int:
        tok = next(self._tokens)
        self.blocks[tok] = bytearray(content)
        return tok

    def write(self, d: int, off: int, data: bytes) -> bool:
        """Write as the pool does; False if some block needed a new data
        block on a read-only pool (those blocks are not written)."""
        dev = self.cur.devs[d]
        ok = True
        pos = 0
        while pos < len(data):
            v, boff = divmod(off + pos, BS)
            n = min(BS - boff, len(data) - pos)
            part = data[pos:pos + n]
            pos += n
            m = dev.map.get(v)
            if m is not None and not dev.snap_time > m[1]:
                self.blocks[m[0]][boff:boff + n] = part
                continue
            if self.read_only:
                ok = False
                continue
            content = bytearray(BS) if m is None else bytearray(self.blocks[m[0]])
            content[boff:boff + n] = part
            dev.map[v] = (self._new_block(content), self.cur.time)
        return ok

    def discard(self, d: int, off: int, length: int) -> None:
        if self.read_only:
            return
        dev = self.cur.devs[d]
        for v in range(-(-off // BS), (off + length) // BS):
            dev.map.pop(v, None)

    def read(self, d: int, off: int, length: int) -> bytes:
        dev = self.cur.devs[d]
        out = bytearray()
        for v in range(off // BS, (off + length - 1) // BS + 1):
            m = dev.map.get(v)
            out += self.blocks[m[0]] if m is not None else bytes(BS)
        start = off - off // BS * BS
        return bytes(out[start:start + length])


def op_strategy() -> st.SearchStrategy[tuple]:
    where = st.tuples(st.integers(0, NBLOCKS - 1), st.sampled_from([0, 0, 1, BS // 2, BS - 512]))
    one_block = st.sampled_from([1, 512, 4096, BS // 2, BS])
    return st.one_of(
        st.tuples(st.just("create"), DEV_IDS),
        st.tuples(st.just("snap"), DEV_IDS, DEV_IDS),
        st.tuples(st.just("delete"), DEV_IDS),
        st.tuples(st.just("write"), DEV_IDS, where, one_block, st.integers(0, 250)),
        st.tuples(st.just("write"), DEV_IDS, where, st.integers(1, 3 * BS), st.integers(0, 250)),
        st.tuples(st.just("read"), DEV_IDS, where, one_block),
        st.tuples(st.just("discard"), DEV_IDS, where, st.integers(1, 3 * BS)),
        st.tuples(st.just("flush"), DEV_IDS),
        st.tuples(st.just("deactivate"), DEV_IDS),
        st.tuples(st.just("status"),),
        st.tuples(st.just("abort"),),
        st.tuples(st.just("reopen"),),
        st.tuples(st.just("metadata_snap"),),
        st.tuples(st.just("grow"),),
    )


def check_cache(impl: SimPoolBackend) -> None:
    """Every cached mapping is what the engine looks up now (white box: the
    cache is private to the core)."""
    core = impl.core
    with core.lock:
        for dev, cache in core._lookups.items():
            for v, hit in cache.items():
                found = core.metadata.lookup(dev, v)
                assert hit == (None if found is None else tuple(found)[:2]), \
                    f"stale cache entry for block {v} of device {dev}: {hit}, engine {found}"


class Runner:
    def __init__(self, path: str) -> None:
        self.path = path
        self.model = Model()
        self.pool, self.impl = sim_pool(path, data_size="64M", metadata_size="8M")

    def close(self) -> None:
        self.pool.close()

    def _message(self, fn, expect_ok: bool, missing: type[Exception] | None) -> bool:
        """Run a pool call that sends a message; on a read-only pool it is
        refused (or fails earlier with *missing*)."""
        if self.model.read_only:
            with pytest.raises((NotSupported, DeviceNotFound)):
                fn()
            return False
        if not expect_ok:
            assert missing is not None
            with pytest.raises(missing):
                fn()
            return False
        fn()
        return True

    def step(self, op: tuple) -> None:
        kind, model, pool = op[0], self.model, self.pool
        devs = model.cur.devs
        if kind == "create":
            d = op[1]
            if self._message(lambda: pool.create_thin(d, SIZE), d not in devs, DeviceExists):
                model.create(d)
                model.commit()
        elif kind == "snap":
            new, origin = op[1], op[2]
            if model.read_only and origin not in devs:
                with pytest.raises(DeviceNotFound):
                    pool.create_snap(new, origin)
                return
            # the kernel's order: a used id is EEXIST even when the origin is missing
            err = DeviceExists if new in devs else DeviceNotFound
            if self._message(lambda: pool.create_snap(new, origin),
                             origin in devs and new not in devs, err):
                model.snap(new, origin)
                model.commit()
        elif kind == "delete":
            d = op[1]
            if d in devs:
                model.commit()                # deactivating it commits first
            if self._message(lambda: pool.delete(d), d in devs, DeviceNotFound):
                del devs[d]
                model.commit()
        elif kind in ("write", "read", "discard"):
            d, (vb, inner) = op[1], op[2]
            if d not in devs:
                return
            off = vb * BS + inner
            length = min(op[3], SIZE - off)
            thin = pool.thin(d)
            if kind == "write":
                data = pattern(op[4], length)
                if model.write(d, off, data):
                    assert thin.write(off, data) == length
                else:
                    with pytest.raises(IOFailure):
                        thin.write(off, data)
                # a single-block read of each block written, through the cache
                for v in range(off // BS, (off + length - 1) // BS + 1):
                    assert thin.read(v * BS, BS) == model.read(d, v * BS, BS), \
                        f"device {d} block {v} after a write"
            elif kind == "read":
                assert thin.read(off, length) == model.read(d, off, length), \
                    f"device {d}: {length} bytes at {off}"
            else:
                thin.discard(off, length)
                model.discard(d, off, length)
        elif kind == "flush":
            d = op[1]
            if d not in devs:
                return
            if model.read_only and 0 not in devs[d].map:
                with pytest.raises(IOFailure):  # a read-only pool refuses it
                    pool.thin(d).flush()
            else:
                pool.thin(d).flush()
                model.commit()
        elif kind == "deactivate":
            if op[1] in devs:
                pool.deactivate_thin(op[1])
                model.commit()
        elif kind == "status":
            pool.status()                       # commits
            model.commit()
        elif kind == "abort":
            if model.read_only:
                return
            core = self.impl.core
            with core.lock:
                core.fail_metadata("test", OSError(errno.EIO, "injected metadata failure"))
            model.abort()
            assert pool.status().mode.value == "ro"
        elif kind == "metadata_snap":          # reserve, or release the held one
            if model.read_only:
                with pytest.raises(NotSupported):
                    pool.reserve_metadata_snap()
            elif model.held:
                pool.release_metadata_snap()
                model.held = False
                model.commit()
            else:
                pool.reserve_metadata_snap()
                model.held = True
                model.commit()
        elif kind == "grow":                   # the data device, live (a reload)
            size = os.path.getsize(os.path.join(self.path, "data"))
            pool.resize_data(size + 8 * BS)
            model.commit()
        elif kind == "reopen":
            pool.close()
            model.commit()
            if model.read_only:
                meta = os.path.join(self.path, "metadata")
                subprocess.run([THIN_CHECK, "--clear-needs-check-flag", meta], check=True,
                               capture_output=True, timeout=120)
                model.read_only = False
            self.pool, self.impl = open_sim(self.path)
        check_cache(self.impl)

    def finish(self) -> None:
        for d in sorted(self.model.cur.devs):
            thin = self.pool.thin(d)
            for v in range(NBLOCKS):
                assert thin.read(v * BS, BS) == self.model.read(d, v * BS, BS), \
                    f"device {d} block {v}"
            assert thin.read(0, SIZE) == self.model.read(d, 0, SIZE), f"device {d}"
        check_cache(self.impl)


def run(ops: list[tuple], pdata_tools_110: str | None = None) -> None:
    path = tempfile.mkdtemp(prefix="dmthin-lookup-cache-")
    runner = None
    try:
        runner = Runner(os.path.join(path, "pool"))
        for op in ops:
            runner.step(op)
        runner.finish()
        runner.close()
        runner = None
        check_tools(os.path.join(path, "pool", "metadata"), pdata_tools_110)
    finally:
        if runner is not None:
            runner.close()
        shutil.rmtree(path, ignore_errors=True)


@settings(max_examples=int(os.environ.get("DMTHIN_SIM_EXAMPLES", "40")), deadline=None,
          print_blob=True)
@given(ops=st.lists(op_strategy(), min_size=1, max_size=60),
       bound=st.sampled_from([core_module.LOOKUP_CACHE_BLOCKS, 3]))
def test_lookup_cache_matches_a_model_without_one(ops: list[tuple], bound: int) -> None:
    """*bound*: the cache's size, also tiny (it empties itself every few lookups)."""
    with mock.patch.object(core_module, "LOOKUP_CACHE_BLOCKS", bound):
        run(ops)


# Each invalidation the cache needs, on its own (hypothesis finds them too;
# these keep them covered on every run).
W = ("write", 0, (1, 0), 4096, 1)
R = ("read", 0, (1, 0), 4096)


@pytest.mark.parametrize("ops", [
    # a write into a new block maps it (the cached "unmapped" is forgotten)
    [("create", 0), R, W, R],
    # a snapshot makes the origin's block shared: its next write copies it
    [("create", 0), W, R, ("snap", 1, 0), ("write", 0, (1, 0), 4096, 2), R,
     ("read", 1, (1, 0), 4096)],
    # ... and the snapshot's own first write too
    [("create", 0), W, ("snap", 1, 0), ("read", 1, (1, 0), 4096),
     ("write", 1, (1, 0), 512, 3), ("read", 1, (1, 0), 4096), R],
    # a discard unmaps
    [("create", 0), W, R, ("discard", 0, (1, 0), BS), R, W, R],
    # a deleted device's id reused by a new device or a snapshot
    [("create", 0), ("create", 2), W, R, ("deactivate", 0), ("delete", 0), ("create", 0), R,
     ("delete", 0), ("snap", 0, 2), R],
    # an abort reverts mappings made since the commit; the read-only pool
    # writes in place only into blocks the committed mappings have
    [("create", 0), ("write", 0, (0, 0), BS, 4), ("status",), W, R, ("abort",), R,
     ("write", 0, (0, 0), 4096, 5), ("read", 0, (0, 0), 4096), W, R, ("reopen",), W, R],
    # an abort after a discard brings the mapping back
    [("create", 0), W, ("flush", 0), ("discard", 0, (1, 0), BS), R, ("abort",), R],
    # a held metadata snapshot changes no mapping nor whether it is shared;
    # growing the data device neither
    [("create", 0), W, R, ("metadata_snap",), ("write", 0, (1, 0), 512, 6), R,
     ("snap", 1, 0), ("write", 0, (1, 0), 512, 7), R, ("read", 1, (1, 0), 4096),
     ("metadata_snap",), ("grow",), W, R, ("discard", 0, (0, 0), 2 * BS), R],
])
def test_lookup_cache_invalidation(ops: list[tuple], pdata_tools_110: str) -> None:
    run(ops, pdata_tools_110)

