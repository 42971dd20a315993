"""Ordered iteration over a (possibly dirty) btree through the transaction
manager's node cache."""
from __future__ import annotations

from collections.abc import Iterator

from ...errors import BTreeError
from ..transaction import TransactionManager
from .node import LEAF_NODE, MAX_SPINE_DEPTH, Node, Value, check_leaf_value_size, lower_bound


def iter_range(tm: TransactionManager, root: int, begin: int = 0, end: int | None = None,
               value_size: int = 8) -> Iterator[tuple[int, Value]]:
    """Yield ``(key, value)`` with ``begin <= key < end`` in key order, from
    a tree of *value_size*-byte values.

    Every node's keys must lie in the range its parent gives it, so damaged
    metadata whose nodes are reached twice (a DAG, a cycle) fails at once
    instead of being walked for ever.  Raises :class:`BTreeError`."""
    stack: list[tuple[int, int, int, int | None]] = [(root, 0, 0, None)]
    while stack:
        b, depth, lo, hi = stack.pop()
        if depth > MAX_SPINE_DEPTH:
            raise BTreeError(f"btree under block {root} exceeds max depth (a cycle?)", b)
        node: Node = tm.read_node(b)
        keys = node.keys
        if keys and (keys[0] < lo or (hi is not None and keys[-1] >= hi)):
            raise BTreeError(f"btree node {b}: keys {keys[0]}..{keys[-1]} are outside the "
                             f"range its parent gives it ({lo}..{'' if hi is None else hi})", b)
        if node.flags & LEAF_NODE:
            check_leaf_value_size(node, value_size, b)
            i = lower_bound(keys, begin)
            if i < 0 or keys[i] < begin:
                i += 1
            values = node.values
            for j in range(i, len(keys)):
                k = keys[j]
                if end is not None and k >= end:
                    return
                yield k, values[j]
            continue
        first = max(lower_bound(keys, begin), 0)
        last = len(keys)
        if end is not None:
            last = max(lower_bound(keys, end - 1), 0) + 1 if end > 0 else 0
        for j in range(last - 1, first - 1, -1):
            stack.append((node.values[j], depth + 1, keys[j] if j else lo,
                          keys[j + 1] if j + 1 < len(keys) else hi))
