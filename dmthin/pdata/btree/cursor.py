"""Ordered iteration over a (possibly dirty) btree through the transaction
manager's node cache."""
from __future__ import annotations

from typing import Iterator

from ...errors import BTreeError
from .node import LEAF_NODE, MAX_SPINE_DEPTH, lower_bound


def iter_range(tm, root: int, begin: int = 0, end: int | None = None
               ) -> Iterator[tuple[int, object]]:
    """Yield ``(key, value)`` with ``begin <= key < end`` in key order."""
    stack = [(root, 0)]
    while stack:
        b, depth = stack.pop()
        if depth > MAX_SPINE_DEPTH:
            raise BTreeError(f"btree under block {root} exceeds max depth (a cycle?)", b)
        node = tm.read_node(b)
        keys = node.keys
        if node.flags & LEAF_NODE:
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
            stack.append((node.values[j], depth + 1))
