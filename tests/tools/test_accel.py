"""The C++ accelerator (``dmthin._tools_ffi``) and the pure-Python loops give
the same bytes: delta, rmap and dump on random pools both ways, thin_ls's
marks and the space maps' counting on random blocks, the Python
port of libstdc++'s sort against ``std::sort`` itself on tie-heavy keys, and
the CRC-32C against the ``crc32c`` package."""
from __future__ import annotations

import io
import random
from array import array

import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmthin.pdata import checksum
from dmthin.pdata.refcounts import RefCounts
from dmthin.pdata.space_map.format import ENTRIES_PER_BITMAP
from dmthin.thin import accel
from dmthin.thin.check import check_metadata
from dmthin.thin.delta import delta
from dmthin.thin.dump import _XmlRuns, dump
from dmthin.thin.format import TIME_BITS
from dmthin.thin.ir import RunBuilder
from dmthin.thin.leaves import top_level
from dmthin.thin.ls import _block_batches, _Marks, _subtree_root
from dmthin.thin.reader import open_block_manager, select_superblock
from dmthin.thin.rmap import libstdcxx_sort, rmap
from dmthin.thin.xml import XmlWriter
from toolgen import build_pool, pool_ops


def _all_blocks(bm, root: int, accelerated: bool = True) -> list[int]:
    """Every data block ls's walk yields for the tree at *root*."""
    return [b for batch in _block_batches(bm, root, accelerated) for b in batch]


pytestmark = pytest.mark.usefixtures("accel_built")


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(ops=pool_ops(), seed=st.integers(0, 1 << 20))
def test_both_paths_same_bytes(tmp_path, ops, seed):
    path = build_pool(tmp_path / "meta", [*ops, ("thin", 98), ("maps", 98, 0, 3, 700),
                                          ("snap", 99, 98), ("maps", 99, 5, 7, 80)])
    rnd = random.Random(seed)
    bm = open_block_manager(path)
    try:
        devs = [d for d, _r in top_level(bm, select_superblock(bm).data_mapping_root)]
        for verbose in (False, True):
            a, b = rnd.choice(devs), rnd.choice(devs)
            fast, slow = io.StringIO(), io.StringIO()
            delta(bm, a, b, fast, verbose=verbose)
            delta(bm, a, b, slow, verbose=verbose, accelerated=False)
            assert fast.getvalue() == slow.getvalue()
        regions = [(rnd.randrange(0, 3000), rnd.randrange(3000, 9000))
                   for _ in range(rnd.randrange(1, 4))]
        fast, slow = io.StringIO(), io.StringIO()
        rmap(bm, regions, fast)
        rmap(bm, regions, slow, accelerated=False)
        assert fast.getvalue() == slow.getvalue()
        for dev in devs:
            root = _subtree_root(bm, select_superblock(bm), dev)
            assert _all_blocks(bm, root) == _all_blocks(bm, root, accelerated=False)
        fast, slow = io.StringIO(), io.StringIO()
        dump(bm, XmlWriter(fast))
        dump(bm, XmlWriter(slow), accelerated=False)
        assert fast.getvalue() == slow.getvalue()
    finally:
        bm.close()
    checked = [check_metadata(path, accelerated=a) for a in (True, False)]
    assert [(c.ok, c.problems, c.nr_mappings, list(c.leaked_data)) for c in checked] == \
        [(c.ok, c.problems, c.nr_mappings, list(c.leaked_data)) for c in checked[::-1]]


@given(st.lists(st.integers(0, 30), max_size=3000), st.integers(0, 5))
def test_libstdcxx_port_is_std_sort(keys, spread):
    recs = array("Q")
    for i, k in enumerate(keys):
        recs.extend((k << spread, 0, i, 0))
    n = len(keys)
    order = accel.ffi.new("uint32_t[]", max(n, 1))
    accel.lib.dm_sort_by_key(accel.ffi.from_buffer("uint64_t[]", recs), order, n)
    items = [(k << spread, i) for i, k in enumerate(keys)]
    libstdcxx_sort(items, lambda x, y: x[0] < y[0])
    assert [i for _k, i in items] == [order[j] for j in range(n)]


@given(st.binary(max_size=5000), st.integers(0, 0xFFFFFFFF))
def test_crc32c_is_the_crc32c_package(data, salt):
    # the accelerator's CRC-32C against the package the pure-Python path
    # uses: whole buffers and the kernel's block form (no final inversion)
    raw = accel.lib.dm_crc32c(0xFFFFFFFF, accel.ffi.from_buffer(data), len(data))
    assert raw ^ 0xFFFFFFFF == crc32c.crc32c(data)
    assert checksum.block_checksum(data, salt) == \
        (crc32c.crc32c(data[4:4096]) ^ 0xFFFFFFFF ^ salt) & 0xFFFFFFFF


@given(st.lists(st.integers(0, 3 * ENTRIES_PER_BITMAP), max_size=2000),
       st.lists(st.integers(0, 3 * ENTRIES_PER_BITMAP), max_size=2000),
       st.integers(1, 3 * ENTRIES_PER_BITMAP))
def test_ls_marks_both_ways(first, second, limit):
    # thin_ls's two passes: the accelerator's chunk loops against Python's
    marks = [_Marks(limit, accelerated=a) for a in (True, False)]
    for blocks in (first, second):
        for m in marks:
            m.mark(array("Q", blocks))
    fast, slow = marks
    assert fast.chunks == slow.chunks and fast.other == slow.other
    for blocks in (first, second, sorted(first)):
        assert fast.exclusive(array("Q", blocks)) == slow.exclusive(array("Q", blocks))


@given(st.lists(st.integers(0, 1 << 20), max_size=600), st.integers(1, 600),
       st.sampled_from([0, 3, 24]))
def test_refcounts_inc_packed_both_ways(values, size, shift):
    # the accelerator's loop against Python's: saturation (many of one
    # block) and the IndexError past the end, the blocks before it counted
    counts = [RefCounts(size) for _ in range(2)]
    outcome = []
    for c, accelerated in zip(counts, (True, False), strict=True):
        try:
            for kind in (list, tuple, lambda v: array("Q", v)):
                c.inc_packed(kind(values + values[:5] * 100), shift, accelerated=accelerated)
            outcome.append(None)
        except IndexError:
            outcome.append("IndexError")
    assert outcome[0] == outcome[1]
    assert [counts[0].get(b) for b in range(size)] == [counts[1].get(b) for b in range(size)]


@given(st.lists(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 3),
                                   st.sampled_from([0, 0, 0, 1, (1 << 40) - 2])),
                         max_size=40), max_size=6),
       st.sampled_from([0, (1 << 64) - 300]))
def test_xml_runs_both_ways(leaves, base):
    # dm_xml_leaf_runs against RunBuilder + XmlWriter.map_runs, runs across
    # leaves, at the top of the key and value ranges (no wrap-around)
    fast, slow = io.StringIO(), io.StringIO()
    xruns, runs = _XmlRuns(XmlWriter(fast)), RunBuilder()
    writer = XmlWriter(slow)
    key = base
    for leaf in leaves:
        keys, values = [], []
        for step, time, data in leaf:
            key += step or 1
            if key >= 1 << 64:
                break
            keys.append(key)
            values.append(min(((data + key % 3) << TIME_BITS) | time, (1 << 64) - 1))
        xruns.add_leaf(keys, values)
        writer.map_runs(runs.add_leaf(keys, values))
    xruns.add_leaf((), (), final=True)
    writer.map_runs(runs.finish())
    assert fast.getvalue() == slow.getvalue()
