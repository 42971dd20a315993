"""Btree operations, as dm-btree.c does them: creation, lookup and
insertion (removal and deletion are in :mod:`.remove`).

Insertion shadows the path from the root (copy-on-write), making room in
full nodes on the way down: the root splits beneath itself; other nodes
first try to move entries into an unshared sibling with at least
``SPACE_THRESHOLD`` free slots, else split one node into two (at the ends,
or beside shared siblings) or two into three.  The shapes, and so the
metadata block counts, follow the kernel's.
"""
from __future__ import annotations

from collections.abc import Sequence

from ...errors import BTreeError
from ..transaction import TransactionManager
from .node import (
    INTERNAL_NODE,
    LEAF_NODE,
    MAX_SPINE_DEPTH,
    Node,
    Value,
    calc_max_entries,
    check_leaf_value_size,
    lower_bound,
    upper_bound,
)
from .spine import BTreeInfo, ShadowSpine, ValueType, inc_children, le64_type

SPACE_THRESHOLD = 8


def insert_at(node: Node, index: int, key: int, value: Value) -> None:
    if index > len(node.keys) or len(node.keys) >= node.max_entries:
        raise BTreeError("too many entries in btree node for insert")
    node.keys.insert(index, key)
    node.values.insert(index, value)


def empty(info: BTreeInfo) -> int:
    """Create an empty tree (one leaf); return its root (``dm_btree_empty``)."""
    return info.tm.new_node(Node(LEAF_NODE, info.max_entries, info.value_type.size))


# -- lookup ---------------------------------------------------------------------
def lookup(info: BTreeInfo, root: int, keys: Sequence[int]) -> Value | None:
    """The value at *keys* (one key per level), or None (``-ENODATA``)."""
    tm = info.tm
    for level in range(info.levels):
        key = keys[level]
        b = root
        for _depth in range(MAX_SPINE_DEPTH):
            node: Node = tm.read_node(b)
            i = lower_bound(node.keys, key)
            if i < 0 or i >= len(node.keys):
                return None
            if node.flags & LEAF_NODE:
                check_leaf_value_size(node, info.value_type.size if level == info.levels - 1
                                      else 8, b)
                break
            b = node.values[i]
        else:
            raise BTreeError(f"btree under block {root} exceeds max depth (a cycle?)", root)
        if node.keys[i] != key:
            return None
        root = node.values[i]
    return root


def lookup_next(info: BTreeInfo, root: int, key: int) -> tuple[int, Value] | None:
    """The first (key, value) at or after *key* in a one-level tree."""
    node: Node = info.tm.read_node(root)
    check_leaf_value_size(node, info.value_type.size, root)
    nr = len(node.keys)
    if not node.flags & LEAF_NODE:
        i = lower_bound(node.keys, key)
        if i < 0:
            i = 0
        if i >= nr:
            return None
        r = lookup_next(info, node.values[i], key)
        if r is None and i < nr - 1:
            r = lookup_next(info, node.values[i + 1], key)
        return r
    i = upper_bound(node.keys, key)
    if i < 0 or i >= nr:
        return None
    return node.keys[i], node.values[i]


def find_highest_key(info: BTreeInfo, root: int) -> int | None:
    """The highest key of a one-level tree, or None if empty."""
    tm = info.tm
    b = root
    for _depth in range(MAX_SPINE_DEPTH):
        node: Node = tm.read_node(b)
        check_leaf_value_size(node, info.value_type.size, b)
        if not node.keys:
            return None
        if node.flags & LEAF_NODE:
            return node.keys[-1]
        b = node.values[-1]
    raise BTreeError(f"btree under block {root} exceeds max depth (a cycle?)", root)


# -- making room ---------------------------------------------------------------------
def _new_sibling(tm: TransactionManager, like: Node) -> tuple[int, Node]:
    node = Node(like.flags, like.max_entries, like.value_size)
    return tm.new_node(node), node


def redistribute2(left: Node, right: Node) -> None:
    nr_left, nr_right = len(left.keys), len(right.keys)
    target_left = (nr_left + nr_right) // 2
    if nr_left < target_left:
        delta = target_left - nr_left
        left.keys.extend(right.keys[:delta])
        left.values.extend(right.values[:delta])
        del right.keys[:delta], right.values[:delta]
    elif nr_left > target_left:
        right.keys[:0] = left.keys[target_left:]
        right.values[:0] = left.values[target_left:]
        del left.keys[target_left:], left.values[target_left:]


def redistribute3(left: Node, center: Node, right: Node) -> None:
    """Spread left+right over three nodes (center is empty)."""
    total = len(left.keys) + len(right.keys)
    target_left = total // 3
    target_center = (total - target_left) // 2
    keys = left.keys + right.keys
    values = left.values + right.values
    a, b = target_left, target_left + target_center
    left.keys, left.values = keys[:a], values[:a]
    center.keys, center.values = keys[a:b], values[a:b]
    right.keys, right.values = keys[b:], values[b:]


def shadow_child(info: BTreeInfo, vt: ValueType, parent: Node, index: int) -> tuple[int, Node]:
    """Shadow child *index* of *parent* and point the parent at the copy."""
    tm = info.tm
    b, node, inc = tm.shadow_node(parent.values[index])
    if inc:
        inc_children(tm, node, vt)
    parent.values[index] = b
    return b, node


def split_one_into_two(info: BTreeInfo, s: ShadowSpine, parent_index: int, vt: ValueType,
                       key: int) -> None:
    _left_b, ln = s.current
    right_b, rn = _new_sibling(info.tm, ln)
    redistribute2(ln, rn)
    insert_at(s.parent[1], parent_index + 1, rn.keys[0], right_b)
    if key >= rn.keys[0]:
        s.nodes[1] = [right_b, rn]


def split_two_into_three(info: BTreeInfo, s: ShadowSpine, parent_index: int, vt: ValueType,
                         key: int) -> None:
    pn = s.parent[1]
    if parent_index == 0:
        middle_index = 1
        left_b, ln = s.current
        right_b, rn = shadow_child(info, vt, pn, parent_index + 1)
    else:
        middle_index = parent_index
        right_b, rn = s.current
        left_b, ln = shadow_child(info, vt, pn, parent_index - 1)
    middle_b, mn = _new_sibling(info.tm, ln)
    redistribute3(ln, mn, rn)
    pn.keys[middle_index] = rn.keys[0]
    insert_at(pn, middle_index, mn.keys[0], middle_b)
    if key < mn.keys[0]:
        s.nodes[1] = [left_b, ln]
    elif key < rn.keys[0]:
        s.nodes[1] = [middle_b, mn]
    else:
        s.nodes[1] = [right_b, rn]


def btree_split_beneath(info: BTreeInfo, s: ShadowSpine, key: int) -> None:
    """The root is full: move its entries into two new children."""
    tm = info.tm
    _pb, pn = s.current
    nr_left = len(pn.keys) // 2
    ln = Node(pn.flags, pn.max_entries, pn.value_size, pn.keys[:nr_left], pn.values[:nr_left])
    left_b = tm.new_node(ln)
    rn = Node(pn.flags, pn.max_entries, pn.value_size, pn.keys[nr_left:], pn.values[nr_left:])
    right_b = tm.new_node(rn)
    pn.flags = INTERNAL_NODE
    pn.max_entries = calc_max_entries(8)
    pn.value_size = 8
    pn.keys = [ln.keys[0], rn.keys[0]]
    pn.values = [left_b, right_b]


def rebalance_left(info: BTreeInfo, s: ShadowSpine, vt: ValueType, parent_index: int,
                   key: int) -> None:
    pn = s.parent[1]
    sib_b, left = shadow_child(info, vt, pn, parent_index - 1)
    right = s.current[1]
    redistribute2(left, right)
    pn.keys[parent_index] = right.keys[0]
    if key < right.keys[0]:
        s.nodes[1] = [sib_b, left]


def rebalance_right(info: BTreeInfo, s: ShadowSpine, vt: ValueType, parent_index: int,
                    key: int) -> None:
    pn = s.parent[1]
    sib_b, right = shadow_child(info, vt, pn, parent_index + 1)
    left = s.current[1]
    redistribute2(left, right)
    pn.keys[parent_index + 1] = right.keys[0]
    if key >= right.keys[0]:
        s.nodes[1] = [sib_b, right]


def rebalance_or_split(info: BTreeInfo, s: ShadowSpine, vt: ValueType, parent_index: int,
                       key: int) -> None:
    tm = info.tm
    parent = s.parent[1]
    nr_parent = len(parent.keys)
    left_shared = right_shared = False
    if parent_index > 0:
        left_b = parent.values[parent_index - 1]
        left_shared = tm.is_shared(left_b)
        if not left_shared:
            n = tm.read_node(left_b)
            if n.max_entries - len(n.keys) >= SPACE_THRESHOLD:
                return rebalance_left(info, s, vt, parent_index, key)
    if parent_index < nr_parent - 1:
        right_b = parent.values[parent_index + 1]
        right_shared = tm.is_shared(right_b)
        if not right_shared:
            n = tm.read_node(right_b)
            if n.max_entries - len(n.keys) >= SPACE_THRESHOLD:
                return rebalance_right(info, s, vt, parent_index, key)
    if left_shared or right_shared or nr_parent <= 2 or parent_index == 0 \
            or parent_index + 1 == nr_parent:
        split_one_into_two(info, s, parent_index, vt, key)
    else:
        split_two_into_three(info, s, parent_index, vt, key)


def _has_space_for_insert(node: Node, key: int) -> bool:
    if len(node.keys) == node.max_entries:
        if node.flags & LEAF_NODE:
            i = lower_bound(node.keys, key)
            return i >= 0 and node.keys[i] == key
        return False
    return True


def insert_raw(info: BTreeInfo, s: ShadowSpine, root: int, vt: ValueType, key: int,
               index: int) -> int:
    """``btree_insert_raw``: shadow down to the leaf for *key*, making room;
    return the index where *key* is or goes."""
    i = index
    top = True
    for _depth in range(MAX_SPINE_DEPTH):
        s.step(root, vt)
        if s.has_parent() and i >= 0:
            s.parent[1].values[i] = s.current[0]
        node = s.current[1]
        if not _has_space_for_insert(node, key):
            if top:
                btree_split_beneath(info, s, key)
            else:
                rebalance_or_split(info, s, vt, i, key)
            node = s.current[1]
        i = lower_bound(node.keys, key)
        if node.flags & LEAF_NODE:
            break
        if i < 0:
            node.keys[0] = key
            i = 0
        root = node.values[i]
        top = False
    else:
        raise BTreeError(f"btree insert exceeded max depth under block {root} (a cycle?)", root)
    if i < 0 or node.keys[i] != key:
        i += 1
    return i


def _need_insert(node: Node, key: int, index: int) -> bool:
    return index >= len(node.keys) or node.keys[index] != key


def insert(info: BTreeInfo, root: int, keys: Sequence[int], value: Value) -> tuple[int, bool]:
    """Insert or overwrite *value* at *keys*; return ``(new_root, inserted)``.

    An overwritten value is released through the value type's ``dec``
    unless it equals the new one.
    """
    s = ShadowSpine(info.tm)
    index = -1
    block = root
    last = info.levels - 1
    upper = le64_type(info.tm)
    for level in range(last):
        index = insert_raw(info, s, block, upper, keys[level], index)
        n = s.current[1]
        if _need_insert(n, keys[level], index):
            insert_at(n, index, keys[level], empty(info))
        block = n.values[index]
    index = insert_raw(info, s, block, info.value_type, keys[last], index)
    n = s.current[1]
    vt = info.value_type
    if _need_insert(n, keys[last], index):
        insert_at(n, index, keys[last], value)
        inserted = True
    else:
        old = n.values[index]
        if vt.dec is not None and (vt.equal is None or not vt.equal(old, value)):
            vt.dec([old])
        n.values[index] = value
        inserted = False
    return s.new_root(), inserted
