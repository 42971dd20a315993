"""Walking mapping trees leaf by leaf, for the tools that read every mapping
(delta, rmap, trim): the top-level tree's entries, and each leaf of a
device's mapping tree as its raw block (the accelerator reads blocks) or as
keys and values, optionally visiting each node once across devices (as the
0.9.0 and 1.1.0 walkers do for shared subtrees).
"""
from __future__ import annotations

import operator
import struct
from collections.abc import Iterator
from itertools import islice
from typing import Any, Protocol, cast

from ..errors import BTreeError
from ..pdata.block import BlockManager
from ..pdata.btree.cwalk import LeafBatches, NodeBitmap, usable
from ..pdata.btree.node import HEADER_SIZE, INTERNAL_NODE, WALK_MAX_DEPTH, check_header
from ..pdata.btree.walk import iter_leaves
from ..pdata.checksum import BLOCK_SIZE, BTREE_NODE
from .accel import ffi

Buffer = bytes | bytearray | memoryview
_NR_MX = struct.Struct("<II")


class NodeSet(Protocol):
    """The nodes a walk visits once across trees: a ``set`` or a
    :class:`~dmthin.pdata.btree.cwalk.NodeBitmap` (which the C walker takes)."""

    def __contains__(self, b: object, /) -> bool: ...

    def add(self, b: int, /) -> None: ...


def node_set(bm: BlockManager) -> NodeBitmap:
    """An empty set of *bm*'s nodes for :func:`leaf_blocks`'s *seen*."""
    return NodeBitmap(bm.file_blocks)


def top_level(bm: BlockManager, root: int) -> Iterator[tuple[int, int]]:
    """``(dev_id, mapping subtree root)`` of the top-level tree at *root*."""
    for _b, keys, values in iter_leaves(bm, root):
        yield from zip(keys, cast("tuple[int, ...]", values), strict=True)


def leaf_blocks(bm: BlockManager, root: int, seen: NodeSet | None = None,
                accelerated: bool = True) -> Iterator[tuple[Buffer, int, int]]:
    """``(block contents, nr_entries, max_entries)`` of each leaf of the
    mapping tree under *root*, in key order (validated: checksum, shape,
    8-byte values).  With *seen*, nodes in it are skipped and the others
    added.  With *accelerated* the accelerator's walker reads the tree when
    it can (:func:`~dmthin.pdata.btree.cwalk.usable`, *seen* None or a
    :func:`node_set`); the same leaves, the same errors.  Raises
    :class:`~dmthin.errors.BTreeError` (and the block manager's errors)."""
    skip = 0
    if accelerated and usable(bm) and (seen is None or isinstance(seen, NodeBitmap)):
        walk = LeafBatches(bm, root, mapping=False, seen=seen)
        for out, n in walk:
            view = memoryview(ffi.buffer(out))
            for i in range(n):
                blk = view[i * BLOCK_SIZE:(i + 1) * BLOCK_SIZE]
                nr, mx = _NR_MX.unpack_from(blk, 16)
                yield blk, nr, mx
        if not walk.failed:
            return
        skip = walk.handed
    # The reference walk (or, after the C walker stopped on a problem, the
    # walk that reports it: the leaves handed out already are skipped).
    yield from islice(_leaf_blocks(bm, root, seen), skip, None)


def leaf_batches(bm: BlockManager, root: int, seen: NodeSet | None = None
                 ) -> Iterator[tuple[Any, int]]:
    """:func:`leaf_blocks`' leaves as batches ``(blocks, n)`` for the
    accelerator's loops over leaves: *n* leaf blocks in a row in the cdata
    *blocks*; the C walker's batches when it can read *bm*, else (or past a
    problem it stopped on) one leaf a batch.  Requires the accelerator.
    Raises as :func:`leaf_blocks`."""
    skip = 0
    if usable(bm) and (seen is None or isinstance(seen, NodeBitmap)):
        walk = LeafBatches(bm, root, mapping=False, seen=seen)
        yield from walk
        if not walk.failed:
            return
        skip = walk.handed
    for buf, _nr, _mx in islice(_leaf_blocks(bm, root, seen), skip, None):
        yield ffi.from_buffer(buf), 1


def _leaf_blocks(bm: BlockManager, root: int, seen: NodeSet | None
                 ) -> Iterator[tuple[Buffer, int, int]]:
    # stack of (block, depth, low, high): the keys the parent allows (high
    # None: unbounded; a first child's low is its parent's, as the kernel
    # lowers an internal node's first key)
    stack: list[tuple[int, int, int, int | None]] = [(root, 0, 0, None)]
    while stack:
        b, depth, lo, hi = stack.pop()
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
        keys = struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE)
        if not all(map(operator.lt, keys, keys[1:])):
            i = next(i for i in range(1, nr) if keys[i] <= keys[i - 1])
            raise BTreeError(f"mapping tree node {b}: keys out of order (key {keys[i]} after "
                             f"{keys[i - 1]})", b)
        if nr and (keys[0] < lo or (hi is not None and keys[-1] >= hi)):
            top = "" if hi is None else hi - 1
            raise BTreeError(f"mapping tree node {b}: keys {keys[0]}..{keys[-1]} are outside "
                             f"the range its parent gives it ({lo}..{top})", b)
        if flags & INTERNAL_NODE:
            children = struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE + 8 * mx)
            for i in range(nr - 1, -1, -1):
                stack.append((children[i], depth + 1, keys[i] if i else lo,
                              keys[i + 1] if i + 1 < nr else hi))
        else:
            yield buf, nr, mx


def leaf_items(bm: BlockManager, root: int, seen: NodeSet | None = None,
               accelerated: bool = True) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
    """``(keys, values)`` of each leaf, as :func:`leaf_blocks`."""
    for buf, nr, mx in leaf_blocks(bm, root, seen, accelerated):
        yield (struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE),
               struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE + 8 * mx))
