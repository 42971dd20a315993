"""The metadata engine against an independent model and both thin_checks.

Random operation sequences (hypothesis generates them, and shrinks a failing
one) over thousands of mappings and snapshot chains, with a tiny block cache
so that eviction paths run too."""
from __future__ import annotations

import os
import random
import subprocess

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dmthin.errors import Busy, DeviceExists, DeviceNotFound, InvalidArgument, NoSpace
from dmthin.pdata.btree.hint import InsertHint
from dmthin.thin.metadata import ThinMetadata
from thin_model import ThinModel

NB = 20000


def thin_check_all(path, pdata_tools_110=None):
    cmds = [["thin_check", str(path)]]
    if pdata_tools_110:
        cmds.append([pdata_tools_110, "thin_check", str(path)])
    for cmd in cmds:
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, f"{cmd} failed:\n{r.stdout}{r.stderr}"


def new_metadata(tmp_path, size=16 << 20, nr_blocks=NB, cache_blocks=64):
    path = tmp_path / "metadata"
    with open(path, "wb") as f:
        f.truncate(size)
    return path, ThinMetadata.format(path, 128, nr_blocks, cache_blocks=cache_blocks)


def compare(md, m, held_set=frozenset()):
    assert md.device_ids() == sorted(m.devices)
    for dev, dm in m.devices.items():
        got = {k: (b, t) for k, b, t in md.mappings(dev)}
        assert got == dm.mappings, f"device {dev}: mappings differ"
        det = md.details(dev)
        assert det.mapped_blocks == len(dm.mappings)
        assert (det.transaction_id, det.creation_time, det.snapshotted_time) == \
            (dm.transaction_id, dm.creation_time, dm.snapshotted_time)
    used = m.used_data_blocks() | held_set
    assert md.nr_free_data_blocks() == md.nr_data_blocks - len(used)
    for b in used:
        assert md.data_block_count(b) >= 1


#: one operation of :func:`run_workload`; device picks are taken modulo the
#: devices there are, so every list is a valid workload
OPS = st.one_of(
    st.tuples(st.just("thin")),
    st.tuples(st.just("snap"), st.integers(0, 63)),
    st.tuples(st.just("delete"), st.integers(0, 63)),
    # insert into [start, start + n): unmapped or shared blocks, and mapped
    # ones too when overwrite
    st.tuples(st.just("insert"), st.integers(0, 63), st.integers(0, 2999),
              st.integers(1, 199), st.booleans()),
    st.tuples(st.just("insert"), st.integers(0, 63), st.integers(0, 2999),
              st.integers(1, 199), st.booleans()),
    st.tuples(st.just("remove"), st.integers(0, 63), st.integers(0, 2999), st.integers(1, 99)),
    st.tuples(st.just("remove_range"), st.integers(0, 63), st.integers(0, 2999),
              st.integers(1, 499)),
    st.tuples(st.just("metadata_snap")),
    st.tuples(st.just("transaction_id")),
    st.tuples(st.just("commit"), st.booleans()),    # and reopen
)


def seeded_ops(seed: int, nops: int) -> list[tuple]:
    """A fixed workload in the proportions of :data:`OPS`' long runs."""
    rng = random.Random(seed)
    ops: list[tuple] = []
    for _ in range(nops):
        r = rng.random()
        dev = rng.randrange(64)
        if r < 0.03:
            ops.append(("thin",))
        elif r < 0.07:
            ops.append(("snap", dev))
        elif r < 0.085:
            ops.append(("delete", dev))
        elif r < 0.6:
            ops.append(("insert", dev, rng.randrange(3000), rng.randrange(1, 200),
                        rng.random() < 0.3))
        elif r < 0.75:
            ops.append(("remove", dev, rng.randrange(3000), rng.randrange(1, 100)))
        elif r < 0.85:
            ops.append(("remove_range", dev, rng.randrange(3000), rng.randrange(1, 500)))
        elif r < 0.88:
            ops.append(("metadata_snap",))
        elif r < 0.9:
            ops.append(("transaction_id",))
        else:
            ops.append(("commit", rng.random() < 0.3))
    return ops


def run_workload(path, md, ops, pdata_tools_110):
    """Apply *ops* to the engine and to :class:`ThinModel`, comparing them at
    every commit; both thin_checks at the end."""
    m = ThinModel(NB)
    next_id, held, held_set = 0, False, frozenset()
    for op in ops:
        kind = op[0]
        devs = list(m.devices)
        if kind == "thin" or not devs:
            md.create_thin(next_id)
            m.create_thin(next_id)
            next_id += 1
        elif kind == "snap":
            o = devs[op[1] % len(devs)]
            md.create_snap(next_id, o)
            m.create_snap(next_id, o)
            next_id += 1
        elif kind == "delete":
            if len(devs) > 1:
                v = devs[op[1] % len(devs)]
                md.delete(v)
                m.delete(v)
        elif kind == "insert":
            _k, pick, start, n, overwrite = op
            dev = devs[pick % len(devs)]
            for vb in range(start, start + n):
                lk = md.lookup(dev, vb)
                if lk is None or lk.shared or overwrite:
                    try:
                        b = md.alloc_data_block()
                    except NoSpace:
                        md.commit()
                        break
                    md.insert(dev, vb, b)
                    m.insert(dev, vb, b)
        elif kind == "remove":
            _k, pick, start, n = op
            dev = devs[pick % len(devs)]
            for vb in range(start, start + n):
                assert md.remove(dev, vb) == m.remove(dev, vb)
        elif kind == "remove_range":
            _k, pick, start, n = op
            dev = devs[pick % len(devs)]
            got = md.remove_range(dev, start, start + n)
            assert got == sum(1 for vb in range(start, start + n) if m.remove(dev, vb))
        elif kind == "metadata_snap":
            if held:
                md.release_metadata_snap()
                held_set = frozenset()
            else:
                md.reserve_metadata_snap()
                held_set = frozenset(m.used_data_blocks())
            held = not held
        elif kind == "transaction_id":
            m.trans_id += 1
            md.set_transaction_id(m.trans_id - 1, m.trans_id)
        else:
            md.commit()
            compare(md, m, held_set)
            if op[1]:
                md.close()
                md = ThinMetadata.open(path, cache_blocks=64)
    md.commit()
    compare(md, m, held_set)
    md.close()
    thin_check_all(path, pdata_tools_110)
    return m


@settings(max_examples=4, deadline=None)
@example(ops=seeded_ops(1, 600))
@given(ops=st.lists(OPS, min_size=1, max_size=600))
def test_random_workloads_match_model_and_thin_check(tmp_path_factory, pdata_tools_110, ops):
    path, md = new_metadata(tmp_path_factory.mktemp("md"))
    run_workload(path, md, ops, pdata_tools_110)


def test_deep_snapshot_chain(tmp_path, pdata_tools_110):
    """100 snapshots deep, each overwriting a few blocks of its origin."""
    path, md = new_metadata(tmp_path)
    m = ThinModel(NB)
    md.create_thin(0)
    m.create_thin(0)
    for vb in range(600):                       # > 2 leaves
        b = md.alloc_data_block()
        md.insert(0, vb, b)
        m.insert(0, vb, b)
    for i in range(1, 101):
        md.create_snap(i, i - 1)
        m.create_snap(i, i - 1)
        for vb in range(i * 5, i * 5 + 5):
            b = md.alloc_data_block()
            md.insert(i, vb, b)
            m.insert(i, vb, b)
        if i % 10 == 0:
            md.commit()
    md.commit()
    compare(md, m)
    # delete from the middle of the chain
    for i in (50, 0, 99):
        md.delete(i)
        m.delete(i)
    md.commit()
    compare(md, m)
    md.close()
    thin_check_all(path, pdata_tools_110)


def test_errors_carry_kernel_errnos(tmp_path):
    _path, md = new_metadata(tmp_path)
    md.create_thin(1)
    with pytest.raises(DeviceExists) as e:
        md.create_thin(1)
    assert e.value.errno == 17
    with pytest.raises(DeviceNotFound) as e:
        md.create_snap(2, 9)
    assert e.value.errno == 61
    with pytest.raises(DeviceNotFound):
        md.delete(7)
    with pytest.raises(InvalidArgument):
        md.create_thin(1 << 24)
    with pytest.raises(InvalidArgument):
        md.set_transaction_id(5, 6)
    md.reserve_metadata_snap()
    with pytest.raises(Busy):
        md.reserve_metadata_snap()
    md.release_metadata_snap()
    with pytest.raises(InvalidArgument):
        md.release_metadata_snap()


def test_data_allocation_is_linear_and_freed_blocks_wait_for_commit(tmp_path):
    _path, md = new_metadata(tmp_path, nr_blocks=100)
    md.create_thin(1)
    got = []
    for vb in (7, 3, 99, 0):
        b = md.alloc_data_block()
        md.insert(1, vb, b)
        got.append(b)
    assert got == [0, 1, 2, 3]
    md.commit()
    md.remove(1, 7)                 # frees data block 0, not reusable yet
    b = md.alloc_data_block()
    assert b == 4
    md.insert(1, 50, b)
    md.commit()
    # the cursor goes on to the end, then wraps round to the freed block 0
    for _ in range(95):
        md.insert(1, 1000 + _, md.alloc_data_block())
    assert md.alloc_data_block() == 0


def test_abort_returns_to_last_commit(tmp_path, pdata_tools_110):
    path, md = new_metadata(tmp_path)
    md.create_thin(1)
    for vb in range(300):
        md.insert(1, vb, md.alloc_data_block())
    md.commit()
    before = list(md.mappings(1))
    free = md.nr_free_data_blocks()
    md.create_thin(2)
    for vb in range(300):
        md.remove(1, vb)
    md.abort()
    assert md.device_ids() == [1]
    assert list(md.mappings(1)) == before
    assert md.nr_free_data_blocks() == free
    md.commit()
    md.close()
    thin_check_all(path, pdata_tools_110)


def test_out_of_metadata_space_raises_nospace_and_abort_keeps_file_valid(tmp_path,
                                                                         pdata_tools_110):
    path, md = new_metadata(tmp_path, size=96 << 10, nr_blocks=20000)   # 24 blocks
    md.create_thin(1)
    md.commit()

    def fill() -> None:
        for vb in range(20000):
            md.insert(1, vb, md.alloc_data_block())
    with pytest.raises(NoSpace):
        fill()
    md.abort()
    md.close()
    thin_check_all(path, pdata_tools_110)


def test_metadata_snapshot_is_readable_by_thin_dump(tmp_path):
    path, md = new_metadata(tmp_path)
    md.create_thin(1)
    for vb in range(10):
        md.insert(1, vb, md.alloc_data_block())
    held = md.reserve_metadata_snap()
    for vb in range(10, 20):
        md.insert(1, vb, md.alloc_data_block())
    md.commit()
    md.close()
    out = subprocess.run(["thin_dump", "-m", str(path)], capture_output=True, text=True,
                         check=True).stdout
    assert 'mapped_blocks="10"' in out and 'length="10"' in out
    live = subprocess.run(["thin_dump", str(path)], capture_output=True, text=True,
                          check=True).stdout
    assert f'metadata_snap="{held}"' in live or 'mapped_blocks="20"' in live
    subprocess.run(["thin_check", str(path)], check=True, capture_output=True)


def test_metadata_grows_onto_a_bigger_file(tmp_path, pdata_tools_110):
    path, md = new_metadata(tmp_path, size=1 << 20)           # 256 blocks
    md.create_thin(1)
    for vb in range(2000):
        md.insert(1, vb, md.alloc_data_block())
    md.commit()
    free_before = md.nr_free_metadata_blocks()
    os.truncate(path, 70 << 20)                               # 17920 blocks: 2 bitmaps
    assert md.resize_metadata() == 17920
    md.commit()
    assert md.nr_metadata_blocks == 17920
    assert md.nr_free_metadata_blocks() > free_before + 17000
    for vb in range(2000, 15000):
        md.insert(1, vb, md.alloc_data_block())
    md.commit()
    md.close()
    thin_check_all(path, pdata_tools_110)
    with pytest.raises(InvalidArgument, match="too small"):
        ThinMetadata.open(path).resize_metadata(100)


@pytest.mark.parametrize("seed", [3, 17])
def test_fast_insert_path_writes_the_same_bytes_as_the_kernel_walk(tmp_path, monkeypatch, seed):
    """ThinMetadata's fast insert path (InsertHint) must leave metadata
    byte-identical to the step-by-step kernel algorithm."""
    files = []
    fast_inserts = []
    real_fast = InsertHint._fast

    def counting_fast(self, *a):
        done = real_fast(self, *a)
        fast_inserts.append(done)
        return done

    for fast in (True, False):
        d = tmp_path / ("fast" if fast else "slow")
        d.mkdir()
        monkeypatch.setattr(InsertHint, "_fast", counting_fast if fast else lambda *a: False)
        path, md = new_metadata(d)
        rng = random.Random(seed)
        md.create_thin(0)
        for _step in range(40):
            dev = rng.choice(md.device_ids())
            r = rng.random()
            if r < 0.1:
                md.create_snap(len(md.device_ids()), dev)
            elif r < 0.2:
                md.commit()
            elif r < 0.3:
                start = rng.randrange(3000)
                md.remove_range(dev, start, start + rng.randrange(300))
            else:
                start = rng.randrange(3000)
                for vb in range(start, start + rng.randrange(1, 400)):
                    if rng.random() < 0.8:
                        md.insert(dev, vb, md.alloc_data_block())
        md.commit()
        md.close()
        files.append(path.read_bytes())
    assert files[0] == files[1]
    assert sum(fast_inserts) > len(fast_inserts) // 5     # the fast path was taken
