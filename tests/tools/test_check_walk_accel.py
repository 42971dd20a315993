"""The accelerator's whole-tree check walk (``dm_check_walk`` through
``BTreeChecker.walk_u64_counting``) against the pure-Python walk it stands
in for (``walk_nodes`` plus the caller's counting of the values): on random
pools with snapshots, damaged or not, with counts about to saturate, the
checker's state after it -- reference counts, walked tags, per-node totals,
the values' counts -- is the Python walk's; and when it gives up it leaves
that state exactly as it found it."""
from __future__ import annotations

import shutil
import struct
from array import array

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dmthin.errors import MetadataError
from dmthin.pdata.block import BlockManager
from dmthin.pdata.btree.check import BTreeChecker, new_totals
from dmthin.pdata.checksum import BTREE_NODE
from dmthin.pdata.refcounts import RefCounts
from dmthin.thin.check import check_metadata
from dmthin.thin.format import TIME_BITS
from toolgen import Layout, build_pool, corrupt, pool_ops

NR_DATA = 100000


pytestmark = pytest.mark.usefixtures("accel_built")


class _State:
    def __init__(self, bm: BlockManager, presets: list[tuple[str, int, int]]):
        n = bm.file_blocks
        self.counts = RefCounts(n)
        self.ck = BTreeChecker(bm, n, self.counts)
        self.values = RefCounts(NR_DATA)
        self.totals: array[int] | None = new_totals(n)
        for what, b, c in presets:
            table = self.counts if what == "meta" else self.values
            if b < table.size:
                table.inc(b, c)

    def snapshot(self) -> tuple:
        def counts(c: RefCounts) -> tuple:
            return bytes(c.flat or b""), sorted(c._big.items())
        return (bytes(self.ck._seen), counts(self.counts), counts(self.values),
                None if self.totals is None else bytes(self.totals), self.ck.nodes_walked)

    def walk_python(self, root: int) -> None:
        """check._device's pure-Python loop (values beyond the data device
        are findings there: not counted)."""
        try:
            for _b, keys, buf, mx, _p in self.ck.walk_nodes(root, 8, tree="t", tree_kind="mapping",
                                                           totals=self.totals):
                values = struct.unpack_from(f"<{len(keys)}Q", buf, 32 + 8 * mx)
                self.values.inc_blocks([v >> TIME_BITS for v in values
                                        if v >> TIME_BITS < NR_DATA])
        except MetadataError:
            self.totals = None

    def walk_fast(self, root: int) -> bool:
        before = self.snapshot()
        done = self.ck.walk_u64_counting(root, tree_kind="mapping", value_counts=self.values,
                                         shift=TIME_BITS, totals=self.totals)
        if not done:
            assert self.snapshot() == before, "a walk that gave up changed the state"
            self.walk_python(root)
        return done


def _reseal_with(path, block: int, offset: int, value: int, size: int) -> None:
    with open(path, "r+b") as f:
        f.seek(block * 4096)
        buf = bytearray(f.read(4096))
        buf[offset:offset + size] = value.to_bytes(size, "little")
        BTREE_NODE.prepare_for_write(buf, block)
        f.seek(block * 4096)
        f.write(buf)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(ops=pool_ops(), damage=st.lists(st.tuples(
           st.integers(0, 1 << 20),
           st.sampled_from(["checksum", "nr_entries", "max_entries", "flags", "value_size",
                            "key", "value", "blocknr"]),
           st.integers(0, 300), st.integers(0, (1 << 64) - 1)), max_size=2),
       presets=st.lists(st.tuples(st.sampled_from(["meta", "data"]), st.integers(0, 4000),
                                  st.sampled_from([1, 200, 252, 253, 254, 300])), max_size=4))
def test_fast_walk_leaves_the_python_walks_state(tmp_path, ops, damage, presets):
    ops = [*ops, ("thin", 50), ("maps", 50, 0, 1, 600), ("snap", 51, 50), ("snap", 52, 51),
           ("maps", 52, 7, 3, 40)]
    path = build_pool(tmp_path / "meta", ops, nr_data=NR_DATA)
    layout = Layout(path)
    nodes = layout.mapping_nodes()
    fields = {"nr_entries": (16, 4), "max_entries": (20, 4), "flags": (4, 4),
              "value_size": (24, 4), "blocknr": (8, 8)}
    for pick, what, index, value in damage:
        b = nodes[pick % len(nodes)]
        if what == "checksum":
            corrupt(path, b)
        elif what == "key":
            _reseal_with(path, b, 32 + 8 * (index % 252), value, 8)
        elif what == "value":
            _reseal_with(path, b, 32 + 8 * 252 + 8 * (index % 252), value, 8)
        else:
            off, size = fields[what]
            _reseal_with(path, b, off, value & ((1 << 8 * size) - 1) if index % 2 else index,
                         size)
    bm = BlockManager(path)
    try:
        fast, slow = _State(bm, presets), _State(bm, presets)
        for dev in sorted(layout.roots):
            event("C walk took the tree" if fast.walk_fast(layout.roots[dev])
                  else "C walk gave up")
            slow.walk_python(layout.roots[dev])
            assert fast.snapshot() == slow.snapshot(), dev
    finally:
        bm.close()


def test_fast_walk_takes_an_undamaged_pool_whole(tmp_path):
    # the fast walk must not give up on ordinary metadata (else it never runs)
    ops = [("thin", 1), ("maps", 1, 0, 1, 3000), ("snap", 2, 1), ("maps", 2, 5, 7, 100),
           ("snap", 3, 2)]
    path = build_pool(tmp_path / "meta", ops, nr_data=NR_DATA)
    layout = Layout(path)
    bm = BlockManager(path)
    try:
        fast, slow = _State(bm, []), _State(bm, [])
        for dev in sorted(layout.roots):
            assert fast.walk_fast(layout.roots[dev])
            slow.walk_python(layout.roots[dev])
        assert fast.snapshot() == slow.snapshot()
    finally:
        bm.close()


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(ops=pool_ops(), pick=st.integers(0, 1 << 20), offset=st.integers(16, 4095))
def test_check_same_findings_both_ways_on_damage(tmp_path, ops, pick, offset):
    path = build_pool(tmp_path / "meta", [*ops, ("thin", 40), ("maps", 40, 0, 1, 700),
                                          ("snap", 41, 40)], nr_data=NR_DATA)
    nodes = Layout(path).mapping_nodes()
    damaged = shutil.copy(path, tmp_path / "damaged")
    with open(damaged, "r+b") as f:
        b = nodes[pick % len(nodes)]
        f.seek(b * 4096)
        buf = bytearray(f.read(4096))
        buf[offset] ^= 0x10
        BTREE_NODE.prepare_for_write(buf, b)
        f.seek(b * 4096)
        f.write(buf)
    checked = [check_metadata(damaged, accelerated=a) for a in (True, False)]
    got = [(c.ok, c.problems, c.nr_mappings, list(c.leaked_data), list(c.leaked_metadata))
           for c in checked]
    assert got[0] == got[1]
