"""Read-only btree traversal for dump, ls and the like.

Depth is bounded (a cycle in a corrupt tree raises :class:`BTreeError`
instead of looping).  Values come back as ints for 8-byte values, else as
``bytes``.

Given the tree's leaf *value_size*, :func:`iter_leaves` validates each node
as thin_dump does before trusting it: exactly one of the INTERNAL and LEAF
flags, the expected value size (8 in internal nodes), ``max_entries`` a
multiple of 3 that fits the block, ``nr_entries <= max_entries``, keys
strictly ascending and inside the range the parent gives (so a node reached
twice, a DAG or a cycle, fails at once instead of being walked again).
"""
from __future__ import annotations

import operator
import struct
from collections.abc import Iterator, Sequence

from ...errors import BTreeError
from ..block import BlockManager
from ..checksum import BTREE_NODE, Buffer
from .node import (
    HEADER_SIZE,
    INTERNAL_NODE,
    LEAF_NODE,
    WALK_MAX_DEPTH,
    Value,
    check_header,
    lower_bound,
    read_header,
    read_u64_values,
    read_values,
)


def _check_node(b: int, flags: int, nr: int, mx: int, vs: int, keys: tuple[int, ...],
                value_size: int, lo: int, hi: int | None) -> None:
    """thin_dump's node checks (beyond :func:`check_header`'s); raise BTreeError."""
    kind = flags & (INTERNAL_NODE | LEAF_NODE)
    if kind == INTERNAL_NODE | LEAF_NODE:
        raise BTreeError(f"btree node {b} is both internal and leaf (flags {flags})", b)
    want = 8 if kind == INTERNAL_NODE else value_size
    if vs != want:
        what = "internal btree node" if kind == INTERNAL_NODE else "btree leaf"
        raise BTreeError(f"{what} {b} has value size {vs}, expected {want} (a node of "
                         "another tree?)", b)
    if mx % 3:
        raise BTreeError(f"btree node {b}: max_entries {mx} is not divisible by 3", b)
    if not all(map(operator.lt, keys, keys[1:])):     # (at C speed; then which)
        i = next(i for i in range(1, nr) if keys[i] <= keys[i - 1])
        raise BTreeError(f"btree node {b}: keys out of order (key {keys[i]} after "
                         f"{keys[i - 1]})", b)
    if nr and (keys[0] < lo or (hi is not None and keys[-1] >= hi)):
        raise BTreeError(f"btree node {b}: keys {keys[0]}..{keys[-1]} are outside the range "
                         f"its parent gives it ({lo}..{'' if hi is None else hi - 1})", b)


def iter_leaves(bm: BlockManager, root: int, value_size: int | None = None
                ) -> Iterator[tuple[int, tuple[int, ...], Sequence[Value]]]:
    """Yield ``(block, keys, values)`` for every leaf under *root*, in key
    order.  ``values`` is a tuple of ints (value_size 8) or a list of bytes.
    With *value_size* (the tree's leaf value size) every node is validated
    (see the module docstring).  Raises :class:`BTreeError` and the block
    manager's errors."""
    for b, keys, buf, mx in iter_leaf_nodes(bm, root, value_size):
        yield b, keys, read_values(buf, len(keys), mx, read_header(buf)[3])


def iter_leaf_nodes(bm: BlockManager, root: int, value_size: int | None = None
                    ) -> Iterator[tuple[int, tuple[int, ...], Buffer, int]]:
    """:func:`iter_leaves` with each leaf's block instead of its values:
    ``(block, keys, contents, max_entries)`` (for readers that decode the
    values themselves, e.g. the accelerator's)."""
    stack: list[tuple[int, int, int, int | None]] = [(root, 0, 0, None)]
    while stack:
        b, depth, lo, hi = stack.pop()
        if depth > WALK_MAX_DEPTH:
            raise BTreeError(f"btree under block {root} is deeper than {WALK_MAX_DEPTH} levels "
                             "(a cycle?)", b)
        buf = bm.read(b, BTREE_NODE)
        flags, nr, mx, vs = check_header(buf, b)
        keys = struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE)
        if value_size is not None:
            _check_node(b, flags, nr, mx, vs, keys, value_size, lo, hi)
        if flags & INTERNAL_NODE:
            children = read_u64_values(buf, nr, mx)
            stack.extend((children[i], depth + 1, keys[i] if i else lo,
                          keys[i + 1] if i + 1 < nr else hi) for i in range(nr - 1, -1, -1))
            continue
        yield b, keys, buf, mx


def iter_items(bm: BlockManager, root: int,
               value_size: int | None = None) -> Iterator[tuple[int, Value]]:
    """Yield ``(key, value)`` pairs under *root* in key order (validated as
    :func:`iter_leaves` does when *value_size* is given)."""
    for _b, keys, values in iter_leaves(bm, root, value_size):
        yield from zip(keys, values, strict=True)


def lookup(bm: BlockManager, root: int, key: int, value_size: int | None = None) -> Value | None:
    """Return the value stored for *key* under *root*, or None.  With
    *value_size*, a leaf of another value size raises :class:`BTreeError`."""
    b = root
    for _depth in range(WALK_MAX_DEPTH + 1):
        buf = bm.read(b, BTREE_NODE)
        flags, nr, mx, vs = check_header(buf, b)
        keys = struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE)
        i = lower_bound(keys, key)
        off = HEADER_SIZE + 8 * mx
        if flags & INTERNAL_NODE:
            if vs != 8:
                raise BTreeError(f"internal btree node {b} has value size {vs}, expected 8", b)
            if i < 0:
                return None
            b = struct.unpack_from("<Q", buf, off + 8 * i)[0]
            continue
        if value_size is not None and vs != value_size:
            raise BTreeError(f"btree leaf {b} has value size {vs}, expected {value_size} (a "
                             "node of another tree?)", b)
        if i < 0 or keys[i] != key:
            return None
        if vs == 8:
            return struct.unpack_from("<Q", buf, off + 8 * i)[0]
        return bytes(buf[off + i * vs:off + (i + 1) * vs])
    raise BTreeError(f"btree under block {root} is deeper than {WALK_MAX_DEPTH} levels "
                     "(a cycle?)", b)
