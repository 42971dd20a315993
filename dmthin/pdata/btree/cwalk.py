"""The accelerator's walker over whole trees of 8-byte values (a thin
device's mapping tree): leaves come out of C in batches, read with
``pread`` and validated there (``csrc/tree_walk.cpp``), instead of one
:meth:`BlockManager.read <dmthin.pdata.block.BlockManager.read>` and a
Python check per node.

The pure-Python walkers stay the reference: the C walker checks at least
what they check, and stops before handing out a leaf they would not.  A
caller seeing :attr:`LeafBatches.failed` re-walks the tree in Python past
the :attr:`LeafBatches.handed` leaves it already has, which raises the
walker's exception (or, where C was stricter, goes on with the same leaves).

Only for a read-only :class:`~dmthin.pdata.block.BlockManager` (see
:func:`usable`): a writable one may hold dirty blocks the file does not.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..accel import ffi, lib
from ..block import BlockManager
from ..checksum import BLOCK_SIZE

#: leaves a batch holds (256 KiB)
BATCH_LEAVES = 64


def usable(bm: BlockManager) -> bool:
    """True if the C walker may read *bm*'s file directly: the accelerator
    is built and *bm* is a plain read-only block manager (every cached
    block is clean, so the file says what :meth:`BlockManager.read` would)."""
    return lib is not None and type(bm) is BlockManager and not bm.writable and bm.fd >= 0


class NodeBitmap:
    """A set of metadata block numbers (nodes visited once across trees) as a
    bitmap over the metadata file, which the C walker reads and sets; numbers
    past the file go to a Python set."""

    def __init__(self, nr_blocks: int):
        self.nr_blocks = nr_blocks
        self.bits = bytearray((nr_blocks + 7) // 8)
        self.extra: set[int] = set()

    def __contains__(self, b: object) -> bool:
        if isinstance(b, int) and 0 <= b < self.nr_blocks:
            return bool(self.bits[b >> 3] & (1 << (b & 7)))
        return b in self.extra

    def add(self, b: int) -> None:
        if 0 <= b < self.nr_blocks:
            self.bits[b >> 3] |= 1 << (b & 7)
        else:
            self.extra.add(b)


class LeafBatches:
    """The leaves under *root*, as batches ``(blocks, n)``: *n* leaf blocks
    of :data:`~dmthin.pdata.checksum.BLOCK_SIZE` bytes in a row in the
    cdata ``uint8_t[]`` *blocks* (a fresh buffer each batch).

    *mapping*: validate as the mapping reader does
    (:func:`~dmthin.pdata.btree.walk.iter_leaf_nodes` with 8-byte values,
    keys ascending across leaves; empty leaves left out); else as
    :func:`~dmthin.thin.leaves.leaf_blocks` does, skipping the nodes in
    *seen* and adding the others.  On a problem iteration ends with
    :attr:`failed` set and *seen* as it was before the walk.  Requires
    :func:`usable`."""

    def __init__(self, bm: BlockManager, root: int, *, mapping: bool,
                 seen: NodeBitmap | None = None, batch: int = BATCH_LEAVES):
        self.bm = bm
        self.root = root
        self.mapping = mapping
        self.seen = seen
        self.batch = batch
        #: leaves handed out so far
        self.handed = 0
        #: True if the walk stopped on a problem (re-walk in Python)
        self.failed = False

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        seen = self.seen
        saved = bytes(seen.bits) if seen is not None else b""
        # The walker's state (200 KiB) is reused across walks: small trees
        # (most devices of a big pool) cost a call, not an allocation.
        w = _FREE.pop() if _FREE else ffi.new("struct dm_walk *")
        bits = ffi.from_buffer(seen.bits) if seen is not None else ffi.NULL
        lib.dm_walk_init(w, self.bm.fd, self.bm.file_blocks, self.root, int(self.mapping),
                         bits, seen.nr_blocks if seen is not None else 0)
        size = min(self.batch, _FIRST_BATCH)
        try:
            while True:
                out = ffi.new("uint8_t[]", size * BLOCK_SIZE)
                n = lib.dm_walk_leaves(w, out, size)
                if n < 0:
                    self.failed = True
                    if seen is not None:
                        seen.bits[:] = saved
                    return
                if n == 0:
                    return
                self.handed += n
                size = self.batch
                yield out, n
        finally:
            if len(_FREE) < _KEEP_FREE:
                _FREE.append(w)


#: walker states not in use (a walk may be left unfinished: it keeps its own)
_FREE: list[Any] = []
_KEEP_FREE = 4
#: leaves in a walk's first batch (a small tree's whole walk)
_FIRST_BATCH = 2
