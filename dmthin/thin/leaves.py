"""Walking mapping trees leaf by leaf, for the tools that read every mapping
(delta, rmap, trim): the top-level tree's entries, and each leaf of a
device's mapping tree as its raw block (the accelerator reads blocks) or as
keys and values, optionally visiting each node once across devices (as the
0.9.0 and 1.1.0 walkers do for shared subtrees).
"""
from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import cast

from ..errors import BTreeError
from ..pdata.block import BlockManager
from ..pdata.btree.node import HEADER_SIZE, INTERNAL_NODE, WALK_MAX_DEPTH, check_header
from ..pdata.btree.walk import iter_leaves
from ..pdata.checksum import BTREE_NODE

Buffer = bytes | bytearray | memoryview


def top_level(bm: BlockManager, root: int) -> Iterator[tuple[int, int]]:
    """``(dev_id, mapping subtree root)`` of the top-level tree at *root*."""
    for _b, keys, values in iter_leaves(bm, root):
        yield from zip(keys, cast("tuple[int, ...]", values), strict=True)


def leaf_blocks(bm: BlockManager, root: int, seen: set[int] | None = None
                ) -> Iterator[tuple[Buffer, int, int]]:
    """``(block contents, nr_entries, max_entries)`` of each leaf of the
    mapping tree under *root*, in key order (validated: checksum, shape,
    8-byte values).  With *seen*, nodes in it are skipped and the others
    added.  Raises :class:`~dmthin.errors.BTreeError`."""
    stack = [(root, 0)]
    while stack:
        b, depth = stack.pop()
        if seen is not None:
            if b in seen:
                continue
            seen.add(b)
        if depth > WALK_MAX_DEPTH:
            raise BTreeError(f"mapping tree under block {root} is deeper than "
                             f"{WALK_MAX_DEPTH} levels (a cycle?)", b)
        buf = bm.read(b, BTREE_NODE)
        flags, nr, mx, vs = check_header(buf, b)
        if vs != 8:
            raise BTreeError(f"mapping tree node {b} has value size {vs}, not 8", b)
        if flags & INTERNAL_NODE:
            children = struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE + 8 * mx)
            stack.extend((c, depth + 1) for c in reversed(children))
        else:
            yield buf, nr, mx


def leaf_items(bm: BlockManager, root: int, seen: set[int] | None = None
               ) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
    """``(keys, values)`` of each leaf, as :func:`leaf_blocks`."""
    for buf, nr, mx in leaf_blocks(bm, root, seen):
        yield (struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE),
               struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE + 8 * mx))
