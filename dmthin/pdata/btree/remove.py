"""Btree removal and deletion, as dm-btree-remove.c and ``dm_btree_del``
do them.

On the way down, a child holding few entries is rebalanced with its
siblings (merged when they would fit) so that no non-root node falls under
a third full; a root left with a single child absorbs it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...errors import BTreeError
from .node import LEAF_NODE, MAX_SPINE_DEPTH, Node, check_leaf_value_size, lower_bound
from .spine import BTreeInfo, ShadowSpine, ValueType, inc_children, le64_type


class _NotFound(Exception):
    """-ENODATA inside the remove machinery."""


def _merge_threshold(n: Node) -> int:
    return n.max_entries // 3


def _shift(left: Node, right: Node, count: int) -> None:
    """Move *count* entries from the end of left to the front of right
    (negative: from the front of right to the end of left)."""
    if count > 0:
        right.keys[:0] = left.keys[-count:]
        right.values[:0] = left.values[-count:]
        del left.keys[-count:], left.values[-count:]
    elif count < 0:
        c = -count
        left.keys.extend(right.keys[:c])
        left.values.extend(right.values[:c])
        del right.keys[:c], right.values[:c]


class _Child:
    __slots__ = ("index", "block", "node")

    def __init__(self, info: BTreeInfo, vt: ValueType, parent: Node, index: int):
        tm = info.tm
        b, node, inc = tm.shadow_node(parent.values[index])
        check_leaf_value_size(node, vt.size, b)
        if inc:
            inc_children(tm, node, vt)
        parent.values[index] = b
        self.index, self.block, self.node = index, b, node


def _rebalance2_nodes(info: BTreeInfo, parent: Node, lc: _Child, rc: _Child) -> None:
    left, right = lc.node, rc.node
    nr_left, nr_right = len(left.keys), len(right.keys)
    if nr_left + nr_right < 2 * _merge_threshold(left) + 1:
        left.keys.extend(right.keys)
        left.values.extend(right.values)
        del parent.keys[rc.index], parent.values[rc.index]
        # The right block goes, its children stay referenced by left.
        info.tm.dec(rc.block)
    else:
        target_left = (nr_left + nr_right) // 2
        _shift(left, right, nr_left - target_left)
        parent.keys[rc.index] = right.keys[0]


def _rebalance2(info: BTreeInfo, s: ShadowSpine, vt: ValueType, left_index: int) -> None:
    parent = s.current[1]
    left = _Child(info, vt, parent, left_index)
    right = _Child(info, vt, parent, left_index + 1)
    _rebalance2_nodes(info, parent, left, right)


def _delete_center_node(info: BTreeInfo, parent: Node, lc: _Child, cc: _Child,
                        rc: _Child) -> None:
    left, center, right = lc.node, cc.node, rc.node
    nr_left, nr_center = len(left.keys), len(center.keys)
    shift = min(left.max_entries - nr_left, nr_center)
    left.keys.extend(center.keys[:shift])
    left.values.extend(center.values[:shift])
    if shift != nr_center:
        right.keys[:0] = center.keys[shift:]
        right.values[:0] = center.values[shift:]
    parent.keys[rc.index] = right.keys[0]
    del parent.keys[cc.index], parent.values[cc.index]
    rc.index -= 1
    info.tm.dec(cc.block)
    _rebalance2_nodes(info, parent, lc, rc)


def _redistribute3(parent: Node, lc: _Child, cc: _Child, rc: _Child) -> None:
    left, center, right = lc.node, cc.node, rc.node
    nr_left, nr_center, nr_right = len(left.keys), len(center.keys), len(right.keys)
    total = nr_left + nr_center + nr_right
    target_right = total // 3
    remainder = 1 if target_right * 3 != total else 0
    target_left = target_right + remainder
    if nr_left < nr_right:
        s = nr_left - target_left
        if s < 0 and nr_center < -s:
            _shift(left, center, -nr_center)
            s += nr_center
            _shift(left, right, s)
            nr_right += s
        else:
            _shift(left, center, s)
        _shift(center, right, target_right - nr_right)
    else:
        s = target_right - nr_right
        if s > 0 and nr_center < s:
            _shift(center, right, nr_center)
            s -= nr_center
            _shift(left, right, s)
            nr_left -= s
        else:
            _shift(center, right, s)
        _shift(left, center, nr_left - target_left)
    parent.keys[cc.index] = center.keys[0]
    parent.keys[rc.index] = right.keys[0]


def _rebalance3(info: BTreeInfo, s: ShadowSpine, vt: ValueType, left_index: int) -> None:
    parent = s.current[1]
    lc = _Child(info, vt, parent, left_index)
    cc = _Child(info, vt, parent, left_index + 1)
    rc = _Child(info, vt, parent, left_index + 2)
    if not (lc.node.max_entries == cc.node.max_entries == rc.node.max_entries):
        raise BTreeError("bad btree metadata, max_entries differ")
    total = len(lc.node.keys) + len(cc.node.keys) + len(rc.node.keys)
    if total < _merge_threshold(lc.node) * 4 + 1:
        _delete_center_node(info, parent, lc, cc, rc)
    else:
        _redistribute3(parent, lc, cc, rc)


def _rebalance_children(info: BTreeInfo, s: ShadowSpine, vt: ValueType, key: int) -> None:
    tm = info.tm
    n = s.current[1]
    if len(n.keys) == 1:
        b = n.values[0]
        shared = tm.is_shared(b)
        child: Node = tm.read_node(b)
        check_leaf_value_size(child, vt.size, b)
        if shared:
            inc_children(tm, child, vt)
        n.flags, n.max_entries, n.value_size = child.flags, child.max_entries, child.value_size
        n.keys, n.values = list(child.keys), list(child.values)
        tm.dec(b)
        return
    i = lower_bound(n.keys, key)
    if i < 0:
        raise _NotFound()
    if i == 0:
        _rebalance2(info, s, vt, i)
    elif i == len(n.keys) - 1:
        _rebalance2(info, s, vt, i - 1)
    else:
        _rebalance3(info, s, vt, i - 1)


def _do_leaf(n: Node, key: int) -> int:
    i = lower_bound(n.keys, key)
    if i < 0 or i >= len(n.keys) or n.keys[i] != key:
        raise _NotFound()
    return i


def _remove_raw(info: BTreeInfo, s: ShadowSpine, vt: ValueType, root: int, key: int, i: int,
                nearest: bool = False) -> int:
    for _depth in range(MAX_SPINE_DEPTH):
        s.step(root, vt)
        if s.has_parent():
            s.parent[1].values[i] = s.current[0]
        n = s.current[1]
        if n.flags & LEAF_NODE:
            return lower_bound(n.keys, key) if nearest else _do_leaf(n, key)
        _rebalance_children(info, s, vt, key)
        n = s.current[1]
        if n.flags & LEAF_NODE:
            return lower_bound(n.keys, key) if nearest else _do_leaf(n, key)
        i = lower_bound(n.keys, key)
        root = n.values[i]
    raise BTreeError(f"btree remove exceeded max depth under block {root} (a cycle?)", root)


def remove(info: BTreeInfo, root: int, keys: Sequence[int]) -> tuple[int, bool]:
    """Remove the entry at *keys*; return ``(new_root, removed)``.

    The removed value is released through the value type's ``dec``.  When
    the key is absent the tree is unchanged in content (its path may have
    been shadowed) and ``removed`` is False.
    """
    s = ShadowSpine(info.tm)
    last = info.levels - 1
    upper = le64_type(info.tm)
    index = 0
    try:
        for level in range(info.levels):
            vt = info.value_type if level == last else upper
            index = _remove_raw(info, s, vt, root, keys[level], index)
            n = s.current[1]
            if level != last:
                root = n.values[index]
                continue
            if info.value_type.dec is not None:
                info.value_type.dec([n.values[index]])
            del n.keys[index], n.values[index]
    except _NotFound:
        return s.new_root(), False
    return s.new_root(), True


def _remove_one(info: BTreeInfo, root: int, key: int, end_key: int) -> tuple[int, int | None]:
    """Remove the entry at or just below *key* if it lies in
    [key, end_key); return ``(new_root, next_key or None)``."""
    s = ShadowSpine(info.tm)
    last = info.levels - 1
    index = 0
    found = None
    try:
        if last:
            raise BTreeError("remove_leaves supports one-level trees only")
        index = _remove_raw(info, s, info.value_type, root, key, index, nearest=True)
        n = s.current[1]
        if index < 0:
            index = 0
        if index < len(n.keys):
            k = n.keys[index]
            if key <= k < end_key:
                if info.value_type.dec is not None:
                    info.value_type.dec([n.values[index]])
                del n.keys[index], n.values[index]
                found = k + 1
    except _NotFound:
        pass
    return s.new_root(), found


def remove_leaves(info: BTreeInfo, root: int, first_key: int, end_key: int) -> tuple[int, int]:
    """``dm_btree_remove_leaves``: remove the run of entries from
    *first_key* (which must be present) below *end_key*; return
    ``(new_root, nr_removed)``."""
    count = 0
    key = first_key
    while True:
        root, nxt = _remove_one(info, root, key, end_key)
        if nxt is None:
            return root, count
        count += 1
        key = nxt


def delete(info: BTreeInfo, root: int) -> None:
    """``dm_btree_del``: drop a reference to the tree at *root*, freeing
    every node (and releasing every value) no longer shared."""
    tm = info.tm
    last = info.levels - 1
    stack: list[list[Any]] = []   # [block, node, level, next_child]

    def push(b: int, level: int) -> None:
        if len(stack) >= MAX_SPINE_DEPTH - 1:
            raise BTreeError("btree deletion stack out of memory (a cycle?)", b)
        if tm.ref(b) > 1:
            tm.dec(b)      # shared: just drop our reference
        else:
            node = tm.read_node(b)
            if node.flags & LEAF_NODE:
                check_leaf_value_size(node, info.value_type.size if level == last else 8, b)
            stack.append([b, node, level, 0])

    push(root, 0)
    while stack:
        f = stack[-1]
        b, node, level, child = f
        if child >= len(node.keys):
            stack.pop()
            tm.dec(b)
            continue
        if not node.flags & LEAF_NODE:
            f[3] += 1
            push(node.values[child], level)
        elif level < last:
            f[3] += 1
            push(node.values[child], level + 1)
        else:
            if info.value_type.dec is not None and node.values:
                info.value_type.dec(list(node.values))
            stack.pop()
            tm.dec(b)
