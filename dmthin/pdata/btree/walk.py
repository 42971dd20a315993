"""Read-only btree traversal for dump, ls and the like.

Depth is bounded (a cycle in a corrupt tree raises :class:`BTreeError`
instead of looping).  Values come back as ints for 8-byte values, else as
``bytes``.
"""
from __future__ import annotations

import struct
from typing import Iterator

from ...errors import BTreeError
from ..block import BlockManager
from ..checksum import BTREE_NODE
from .node import HEADER_SIZE, INTERNAL_NODE, WALK_MAX_DEPTH, check_header, lower_bound, read_values


def iter_leaves(bm: BlockManager,
                root: int) -> Iterator[tuple[int, tuple[int, ...], tuple[int, ...] | list[bytes]]]:
    """Yield ``(block, keys, values)`` for every leaf under *root*, in key
    order.  ``values`` is a tuple of ints (value_size 8) or a list of bytes."""
    stack: list[tuple[int, int]] = [(root, 0)]
    while stack:
        b, depth = stack.pop()
        if depth > WALK_MAX_DEPTH:
            raise BTreeError(f"btree under block {root} is deeper than {WALK_MAX_DEPTH} levels "
                             "(a cycle?)", b)
        buf = bm.read(b, BTREE_NODE)
        flags, nr, mx, vs = check_header(buf, b)
        keys = struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE)
        if flags & INTERNAL_NODE:
            children = read_values(buf, nr, mx, 8)
            stack.extend((c, depth + 1) for c in reversed(children))
            continue
        yield b, keys, read_values(buf, nr, mx, vs)


def iter_items(bm, root: int) -> Iterator[tuple[int, object]]:
    """Yield ``(key, value)`` pairs under *root* in key order."""
    for _b, keys, values in iter_leaves(bm, root):
        yield from zip(keys, values)


def lookup(bm, root: int, key: int):
    """Return the value stored for *key* under *root*, or None."""
    b = root
    for _depth in range(WALK_MAX_DEPTH + 1):
        buf = bm.read(b, BTREE_NODE)
        flags, nr, mx, vs = check_header(buf, b)
        keys = struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE)
        i = lower_bound(keys, key)
        off = HEADER_SIZE + 8 * mx
        if flags & INTERNAL_NODE:
            if i < 0:
                return None
            b = struct.unpack_from("<Q", buf, off + 8 * i)[0]
            continue
        if i < 0 or keys[i] != key:
            return None
        if vs == 8:
            return struct.unpack_from("<Q", buf, off + 8 * i)[0]
        return bytes(buf[off + i * vs:off + (i + 1) * vs])
    raise BTreeError(f"btree under block {root} is deeper than {WALK_MAX_DEPTH} levels "
                     "(a cycle?)", b)

