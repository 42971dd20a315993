"""Inserting next to the last insert without walking the tree again.

The kernel inserts one entry at a time, shadowing the path from the root
and making room in every full node on it (:func:`.ops.insert`).  When the
last insert's path is still live in this transaction (every node a fresh,
unshared shadow that is still the cached content of its block, no internal
node full) and the next key of the same upper-level keys routes to the same
leaf without lowering a bound, all the kernel does is put the entry into
that leaf, if it has room.  :class:`InsertHint` does exactly that, and so
writes the same blocks as the full insert (``tests/thin/test_metadata.py``
compares the files byte for byte).

The hint only knows the nodes; its owner must :meth:`InsertHint.forget` it
whenever the tree may change shape in any other way (any other insert,
removal, deletion, commit or abort).
"""
from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from .node import Node, lower_bound
from .ops import insert
from .spine import BTreeInfo


class InsertHint:
    """The path of the last :meth:`insert` into the tree of *info*."""

    __slots__ = ("info", "_root", "_upper", "_nodes", "_lo", "_hi")

    def __init__(self, info: BTreeInfo):
        self.info = info
        self._root: int | None = None
        self._upper: tuple[int, ...] = ()
        self._nodes: list[tuple[int, Node]] = []
        self._lo = 0
        self._hi: int | None = None

    def forget(self) -> None:
        """The tree may have changed shape: walk it again next time."""
        self._root = None

    def insert(self, root: int, keys: Sequence[int], value: object) -> tuple[int, bool]:
        """Insert or overwrite *value* at *keys*, as :func:`.ops.insert`:
        return ``(new_root, inserted)``.  Raises what that raises."""
        if self._fast(root, keys, value):
            return root, True
        root, inserted = insert(self.info, root, keys, value)
        self._remember(root, keys)
        return root, inserted

    def _fast(self, root: int, keys: Sequence[int], value: object) -> bool:
        if self._root != root or tuple(keys[:-1]) != self._upper:
            return False
        key = keys[-1]
        if key < self._lo or (self._hi is not None and key >= self._hi):
            return False
        tm = self.info.tm
        for b, node in self._nodes:
            if not tm.is_live_unshared_node(b, node):
                return False
        leaf = self._nodes[-1][1]
        lkeys = leaf.keys
        if len(lkeys) >= leaf.max_entries:
            return False
        i = bisect_left(lkeys, key)
        if i < len(lkeys) and lkeys[i] == key:
            return False               # an overwrite: the full insert releases the old value
        lkeys.insert(i, key)
        leaf.values.insert(i, value)
        return True

    def _remember(self, root: int, keys: Sequence[int]) -> None:
        """Record the path to *keys*' leaf if a later insert can reuse it."""
        self._root = None
        tm = self.info.tm
        last = self.info.levels - 1
        nodes: list[tuple[int, Node]] = []
        lo, hi = 0, None
        b = root
        for level in range(last + 1):
            k = keys[level]
            while True:
                node = tm.read_node(b)
                # A full node on the path makes the kernel split it; a full
                # leaf of an upper level is fine (its key is present).
                if not tm.is_live_unshared_node(b, node) or \
                        (len(node.keys) >= node.max_entries and \
                        not (level < last and node.is_leaf)):
                    return
                nodes.append((b, node))
                i = lower_bound(node.keys, k)
                if i < 0:
                    return
                if node.is_leaf:
                    break
                if level == last:
                    lo = max(lo, node.keys[i])
                    if i + 1 < len(node.keys):
                        nxt = node.keys[i + 1]
                        hi = nxt if hi is None else min(hi, nxt)
                b = node.values[i]
            if level < last:
                if node.keys[i] != k:
                    return
                b = node.values[i]
        self._root, self._upper = root, tuple(keys[:-1])
        self._nodes, self._lo, self._hi = nodes, lo, hi
