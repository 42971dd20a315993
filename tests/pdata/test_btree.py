"""Btree operations against a dict, with the kernel's shape invariants
checked after every batch: keys sorted and inside the parent's range, every
non-root node at least a third full, and exact metadata reference counts
(every reachable node counted once, nothing leaked)."""
from __future__ import annotations

import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dmthin.pdata.block import BlockManager
from dmthin.pdata.btree import ops as bt
from dmthin.pdata.btree import remove as btr
from dmthin.pdata.btree.cursor import iter_range
from dmthin.pdata.btree.node import LEAF_NODE, NODE_CODEC
from dmthin.pdata.btree.spine import BTreeInfo, ValueType
from dmthin.pdata.space_map.metadata import MetadataSpaceMap
from dmthin.pdata.transaction import TransactionManager


@pytest.fixture
def tm(tmp_path):
    path = tmp_path / "md"
    with open(path, "wb") as f:
        f.truncate(32 << 20)
    bm = BlockManager(path, writable=True, cache_blocks=32)
    tm = TransactionManager(bm, NODE_CODEC)
    MetadataSpaceMap.create(tm, bm.file_blocks)
    yield tm
    bm.close()


def walk_check(tm, root):
    """Return the set of reachable blocks; assert the shape invariants."""
    seen = set()
    stack = [(root, None, None, True)]
    while stack:
        b, lo, hi, is_root = stack.pop()
        assert b not in seen
        seen.add(b)
        n = tm.read_node(b)
        keys = n.keys
        assert keys == sorted(set(keys))
        if not is_root:
            assert len(keys) >= n.max_entries // 3, f"node {b}: {len(keys)}/{n.max_entries}"
        if keys and lo is not None:
            assert keys[0] >= lo
        if keys and hi is not None:
            assert keys[-1] < hi
        if not n.flags & LEAF_NODE:
            for i, child in enumerate(n.values):
                nxt = keys[i + 1] if i + 1 < len(keys) else hi
                stack.append((child, keys[i], nxt, False))
    return seen


def check_counts(tm, root):
    reachable = walk_check(tm, root)
    for b in reachable:
        assert tm.ref(b) == 1, f"block {b} count {tm.ref(b)}"


def test_sequential_then_reverse_removal(tm):
    info = BTreeInfo(tm, 1, ValueType(8))
    root = bt.empty(info)
    for k in range(20000):
        root, ins = bt.insert(info, root, [k], k * 3)
        assert ins
    check_counts(tm, root)
    assert [k for k, _v in iter_range(tm, root)] == list(range(20000))
    for k in reversed(range(0, 20000, 2)):
        root, removed = btr.remove(info, root, [k])
        assert removed
    check_counts(tm, root)
    assert dict(iter_range(tm, root)) == {k: k * 3 for k in range(1, 20000, 2)}


#: a run of keys to insert (True) or remove: (insert?, first key, count, stride)
KeyRun = tuple[bool, int, int, int]
#: batches of key runs, each followed by remove_leaves over [lo, lo + span)
BATCHES = st.lists(st.tuples(st.lists(st.tuples(st.booleans(), st.integers(0, 59999),
                                                st.integers(1, 400), st.integers(1, 7)),
                                      max_size=12),
                             st.integers(0, 59999), st.integers(0, 4999)),
                   min_size=1, max_size=12)


def seeded_batches(seed: int) -> list[tuple[list[KeyRun], int, int]]:
    """Big fixed batches (three-level trees, long removals)."""
    rng = random.Random(seed)
    return [([(rng.random() < 0.6, rng.randrange(60000), rng.randint(1, 400),
               rng.randint(1, 7)) for _ in range(12)], rng.randrange(60000),
             rng.randrange(5000)) for _ in range(12)]


@settings(max_examples=8, deadline=None)
@example(batches=seeded_batches(1))
@given(batches=BATCHES)
def test_random_inserts_and_removes_keep_shape(tmp_path_factory, batches):
    path = tmp_path_factory.mktemp("bt") / "md"
    with open(path, "wb") as f:
        f.truncate(32 << 20)
    bm = BlockManager(path, writable=True, cache_blocks=32)
    tm = TransactionManager(bm, NODE_CODEC)
    sm = MetadataSpaceMap.create(tm, bm.file_blocks)
    info = BTreeInfo(tm, 1, ValueType(8))
    root = bt.empty(info)
    model = {}
    for batch, (runs, lo, span) in enumerate(batches):
        for insert, first, count, stride in runs:
            for k in range(first, first + count * stride, stride):
                k %= 60000
                if insert:
                    root, ins = bt.insert(info, root, [k], k + batch)
                    assert ins == (k not in model)
                    model[k] = k + batch
                else:
                    root, removed = btr.remove(info, root, [k])
                    assert removed == (k in model)
                    model.pop(k, None)
        check_counts(tm, root)
        assert dict(iter_range(tm, root)) == model
        hi = lo + span
        root, n = btr.remove_leaves(info, root, lo, hi) if lo in model else (root, 0)
        if lo in model:
            # The kernel's remove_one takes the leaf's entry at
            # max(lower_bound(key), 0): it removes the present keys of
            # [lo, hi) in order, at least the run of consecutive ones from
            # lo, and may step over a gap when the next key heads its leaf.
            present = sorted(k for k in model if lo <= k < hi)
            run = 0
            while lo + run in model and lo + run < hi:
                run += 1
            assert run <= n <= len(present)
            for k in present[:n]:
                del model[k]
            assert dict(iter_range(tm, root)) == model
        sm.commit()
    bm.close()


def test_shared_subtree_copy_on_write_counts(tm):
    """Sharing a root (as create_snap does) then inserting into one copy
    shadows the path and increments the children of shared nodes."""
    info = BTreeInfo(tm, 1, ValueType(8))
    root = bt.empty(info)
    for k in range(2000):
        root, _ = bt.insert(info, root, [k], k)
    tm.inc(root)                      # a second owner
    other = root
    root2, _ = bt.insert(info, root, [5], 99)
    assert root2 != other
    assert bt.lookup(info, other, [5]) == 5 and bt.lookup(info, root2, [5]) == 99
    # nodes of both trees: shared ones count 2, private ones 1
    a, b = walk_check(tm, other), walk_check(tm, root2)
    for blk in a | b:
        assert tm.ref(blk) == (2 if blk in a and blk in b else 1)
    btr.delete(info, other)
    for blk in walk_check(tm, root2):
        assert tm.ref(blk) == 1
    for blk in a - b:
        assert tm.ref(blk) == 0
