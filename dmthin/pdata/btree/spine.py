"""Value types and the shadow spine (dm-btree-spine.c).

A :class:`ValueType` says how a btree's leaf values hold references:
``inc``/``dec`` are called with lists of values when a shared leaf is
shadowed, when a value is overwritten, removed, or its tree deleted.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ...errors import BTreeError
from ..transaction import TransactionManager
from .node import Node, Value, calc_max_entries, check_leaf_value_size

#: ``inc``/``dec`` of a value type: called with the values gaining or losing a reference
RefCallback = Callable[[list[Value]], None]


class ValueType:
    """A btree value type: size in bytes and reference callbacks."""

    def __init__(self, size: int, inc: RefCallback | None = None,
                 dec: RefCallback | None = None,
                 equal: Callable[[Value, Value], bool] | None = None):
        self.size = size
        self.inc = inc
        self.dec = dec
        self.equal = equal

    def __repr__(self) -> str:
        return f"<ValueType size={self.size}>"


class BTreeInfo:
    """``dm_btree_info``: a transaction manager, the number of levels (a
    two-level tree keys on (dev_id, block)) and the leaf value type."""

    def __init__(self, tm: TransactionManager, levels: int, value_type: ValueType):
        self.tm = tm
        self.levels = levels
        self.value_type = value_type
        self.max_entries = calc_max_entries(value_type.size)


def le64_type(tm: TransactionManager) -> ValueType:
    """Values that are metadata block numbers (upper levels of a
    multi-level tree): shadowing a shared node increments them."""
    def inc(values: list[int]) -> None:
        for v in values:
            tm.inc(v)

    def dec(values: list[int]) -> None:
        for v in values:
            tm.dec(v)

    return ValueType(8, inc, dec, lambda a, b: a == b)


def runs(values: Sequence[int]) -> Iterator[tuple[int, int]]:
    """The maximal runs ``[b, e)`` of consecutive numbers in *values*, in
    order (as ``dm_tm_with_runs`` groups block numbers)."""
    i, n = 0, len(values)
    while i < n:
        b = values[i]
        j = i + 1
        while j < n and values[j] == b + (j - i):
            j += 1
        yield b, b + (j - i)
        i = j


def inc_children(tm: TransactionManager, node: Node, vt: ValueType) -> None:
    """After shadowing a shared node: take a reference on each child (an
    internal node's child blocks, or a leaf's values through *vt*)."""
    if not node.is_leaf:
        for b, e in runs(node.values):
            tm.inc_range(b, e)
    elif vt.inc is not None and node.values:
        vt.inc(node.values)


class ShadowSpine:
    """The two most recent nodes on a path being modified, as
    ``struct shadow_spine``: ``nodes[-1]`` is current, ``nodes[0]`` its
    parent.  Each entry is ``[block, Node]``."""

    __slots__ = ("tm", "nodes", "root", "count")

    def __init__(self, tm: TransactionManager):
        self.tm = tm
        self.nodes: list[list[Any]] = []
        self.root: int | None = None

    def step(self, b: int, vt: ValueType) -> None:
        """Shadow *b* and make it current (``shadow_step``)."""
        new_b, node, inc = self.tm.shadow_node(b)
        check_leaf_value_size(node, vt.size, b)
        if inc:
            inc_children(self.tm, node, vt)
        if len(self.nodes) == 2:
            self.nodes.pop(0)
        if self.root is None:
            self.root = new_b
        self.nodes.append([new_b, node])

    @property
    def current(self) -> list[Any]:
        return self.nodes[-1]

    @property
    def parent(self) -> list[Any]:
        return self.nodes[0]

    def new_root(self) -> int:
        """The shadow of the tree's root (the block the first :meth:`step` shadowed)."""
        if self.root is None:
            raise BTreeError("btree spine: no node shadowed yet")
        return self.root

    def has_parent(self) -> bool:
        return len(self.nodes) >= 2
