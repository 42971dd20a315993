"""Random workloads against an independent in-memory model of dm-thin.

Hypothesis draws sequences of thin creation, snapshots (also of
snapshots), deletes, partial and whole-block writes, discards, flushes and
pool reopens.  The model keeps each device's bytes and, per mapped virtual
block, a token standing for its data block and the mapping's time, with the
kernel's sharing rule (a mapping is shared iff the device's snapshotted time
is later than the mapping's time).  After each workload:

* every device reads back byte for byte as the model says;
* thin_dump 0.9.0 shows exactly the model's mapped blocks and times, and two
  mappings share a data block iff the model gives them the same token;
* the pool's used data blocks equal the number of live tokens;
* thin_check 0.9.0 and 1.1.0 accept the metadata.

Hypothesis prints the failing sequence and a ``@reproduce_failure`` blob
(``print_blob=True``); set ``HYPOTHESIS_SEED`` to replay a run's seed.
"""
from __future__ import annotations

import itertools
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmthin import Pool
from dmthin.errors import DeviceExists, DeviceNotFound
from simhelpers import BS, check_tools, dump, pattern

NBLOCKS = 12                       # blocks per thin device
SIZE = NBLOCKS * BS
DEV_IDS = st.integers(0, 6)


class Model:
    def __init__(self):
        self.time = 0
        self.devs: dict[int, dict] = {}
        self._tokens = itertools.count()

    def create(self, d):
        self.devs[d] = {"data": bytearray(SIZE), "map": {}, "snap_time": self.time}

    def snap(self, new, origin):
        self.time += 1
        o = self.devs[origin]
        o["snap_time"] = self.time
        self.devs[new] = {"data": bytearray(o["data"]), "map": dict(o["map"]),
                          "snap_time": self.time}

    def write(self, d, off, data):
        dev = self.devs[d]
        dev["data"][off:off + len(data)] = data
        for v in range(off // BS, (off + len(data) - 1) // BS + 1):
            m = dev["map"].get(v)
            if m is None or dev["snap_time"] > m[1]:
                dev["map"][v] = (next(self._tokens), self.time)

    def discard(self, d, off, length):
        dev = self.devs[d]
        for v in range(-(-off // BS), (off + length) // BS):
            if dev["map"].pop(v, None) is not None:
                dev["data"][v * BS:(v + 1) * BS] = bytes(BS)

    def live_tokens(self):
        return {tok for dev in self.devs.values() for tok, _t in dev["map"].values()}


def op_strategy():
    block_off = st.tuples(st.integers(0, NBLOCKS - 1),
                          st.sampled_from([0, 0, 1, BS // 2, BS - 1]))
    return st.one_of(
        st.tuples(st.just("create"), DEV_IDS),
        st.tuples(st.just("snap"), DEV_IDS, DEV_IDS),
        st.tuples(st.just("delete"), DEV_IDS),
        st.tuples(st.just("write"), DEV_IDS, block_off,
                  st.sampled_from([1, 100, BS, BS, 2 * BS, 3 * BS - 7]), st.integers(0, 250)),
        st.tuples(st.just("write"), DEV_IDS, block_off, st.integers(1, 3 * BS),
                  st.integers(0, 250)),
        st.tuples(st.just("discard"), DEV_IDS, block_off, st.integers(1, 4 * BS)),
        st.tuples(st.just("flush"),),
        st.tuples(st.just("reopen"),),
    )


def run_workload(path, ops):
    model = Model()
    pool = Pool.create(path, data_size="64M", metadata_size="8M", backend="sim")
    try:
        for op in ops:
            kind = op[0]
            if kind == "create":
                d = op[1]
                if d in model.devs:
                    with pytest.raises(DeviceExists):
                        pool.create_thin(d, SIZE)
                else:
                    pool.create_thin(d, SIZE)
                    model.create(d)
            elif kind == "snap":
                new, origin = op[1], op[2]
                if new in model.devs:       # the kernel's order: EEXIST before ENODATA
                    with pytest.raises(DeviceExists):
                        pool.create_snap(new, origin)
                elif origin not in model.devs:
                    with pytest.raises(DeviceNotFound):
                        pool.create_snap(new, origin)
                else:
                    pool.create_snap(new, origin)
                    model.snap(new, origin)
            elif kind == "delete":
                d = op[1]
                if d not in model.devs:
                    with pytest.raises(DeviceNotFound):
                        pool.delete(d)
                else:
                    pool.delete(d)
                    del model.devs[d]
            elif kind in ("write", "discard"):
                d, (vb, inner) = op[1], op[2]
                if d not in model.devs:
                    continue
                off = vb * BS + inner
                length = min(op[3], SIZE - off)
                thin = pool.thin(d)
                if kind == "write":
                    data = pattern(op[4], length)
                    thin.write(off, data)
                    model.write(d, off, data)
                    assert thin.read(off, length) == data
                else:
                    thin.discard(off, length)
                    model.discard(d, off, length)
            elif kind == "flush":
                for d in model.devs:
                    pool.thin(d).flush()
                    break
            elif kind == "reopen":
                pool.close()
                pool = Pool.open(path)
        for d, dev in model.devs.items():
            assert pool.thin(d).read(0, SIZE) == bytes(dev["data"]), f"device {d} differs"
        status = pool.status()
        assert status.used_data_blocks == len(model.live_tokens())
        assert status.mode.value == "rw"
    finally:
        pool.close()
    return model


def check_dump(path, model):
    sb, devs = dump(os.path.join(path, "metadata"))
    assert int(sb["time"]) == model.time
    assert set(devs) == set(model.devs)
    token_of_block = {}
    for d, dev in model.devs.items():
        got = devs[d]["map"]
        assert set(got) == set(dev["map"]), f"device {d}: mapped blocks differ"
        assert int(devs[d]["attrs"]["snap_time"]) == dev["snap_time"]
        for v, (tok, t) in dev["map"].items():
            block, time = got[v]
            assert time == t, f"device {d} block {v}: time {time}, model {t}"
            assert token_of_block.setdefault(block, tok) == tok, \
                f"data block {block} shared where the model has distinct blocks"
    assert len(token_of_block) == len(model.live_tokens())


@settings(max_examples=int(os.environ.get("DMTHIN_SIM_EXAMPLES", "30")), deadline=None,
          print_blob=True, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op_strategy(), min_size=1, max_size=60))
def test_random_workload_matches_model(ops, pdata_tools_110):
    path = tempfile.mkdtemp(prefix="dmthin-model-")
    try:
        model = run_workload(os.path.join(path, "pool"), ops)
        check_dump(os.path.join(path, "pool"), model)
        check_tools(os.path.join(path, "pool", "metadata"), pdata_tools_110)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_snapshot_chain_model(pdata_tools_110):
    """A fixed long chain: each snapshot of the previous one, written."""
    ops = [("create", 0), ("write", 0, (0, 0), 5 * BS, 1)]
    for i in range(1, 7):
        ops += [("snap", i, i - 1), ("write", i, (i, 1), BS, i + 10),
                ("write", i - 1, (i + 1, 0), BS, i + 20), ("discard", i, (0, 0), BS)]
    ops += [("delete", 3), ("reopen",), ("write", 4, (2, 5), 2 * BS, 99)]
    path = tempfile.mkdtemp(prefix="dmthin-chain-")
    try:
        model = run_workload(os.path.join(path, "pool"), ops)
        check_dump(os.path.join(path, "pool"), model)
        check_tools(os.path.join(path, "pool", "metadata"), pdata_tools_110)
    finally:
        shutil.rmtree(path, ignore_errors=True)


