"""Writing whole space maps in one go, from counts (for restore).

:func:`build_disk_space_map` writes a data space map (bitmaps, ref-count
tree, index btree) holding the counts of a
:class:`~dmthin.pdata.refcounts.RefCounts`;
:func:`build_metadata_space_map` writes a metadata space map (empty
ref-count tree, bitmaps, index block) in which the first *nr_used* blocks
have count 1.  Both write through a
:class:`~dmthin.pdata.btree.builder.BlockWriter`, in the order the block
counts of :func:`disk_space_map_blocks` and
:func:`metadata_space_map_blocks` assume.
"""
from __future__ import annotations

from array import array

from ..btree.builder import BlockWriter, btree_blocks, build_btree
from ..checksum import BITMAP, INDEX
from ..refcounts import RefCounts
from .format import (
    BITMAP_HEADER_SIZE,
    ENTRIES_PER_BITMAP,
    INDEX_ENTRY,
    INDEX_ENTRY_SIZE,
    METADATA_INDEX_OFFSET,
    REF_COUNT,
    REF_COUNT_SIZE,
    SpaceMapRoot,
    bitmap_all_ones,
    encode_bitmap_counts,
    nr_bitmaps,
)

E = ENTRIES_PER_BITMAP


def disk_space_map_blocks(nr_blocks: int, nr_over2: int) -> int:
    """Blocks :func:`build_disk_space_map` writes for *nr_blocks* blocks of
    which *nr_over2* have a count of 3 or more."""
    n = nr_bitmaps(nr_blocks)
    return n + btree_blocks(nr_over2, REF_COUNT_SIZE) + btree_blocks(n, INDEX_ENTRY_SIZE)


def metadata_space_map_blocks(nr_blocks: int) -> int:
    """Blocks :func:`build_metadata_space_map` writes for *nr_blocks* blocks."""
    return btree_blocks(0, REF_COUNT_SIZE) + nr_bitmaps(nr_blocks) + 1


def build_disk_space_map(w: BlockWriter, counts: RefCounts) -> SpaceMapRoot:
    """Write the data space map of ``counts.size`` blocks with *counts*:
    the bitmaps, then the ref-count tree, then the index btree."""
    nr = counts.size
    index_keys: list[int] = []
    index_vals: list[bytes] = []
    allocated = 0
    for bi in range(nr_bitmaps(nr)):
        chunk = counts.bitmap(bi)
        valid = min(E, nr - bi * E)
        b = w.alloc(BITMAP)
        if chunk is None:
            used, nfb = 0, 0
        else:
            off = w.offset(b) + BITMAP_HEADER_SIZE
            w.buf[off:off + E // 4] = encode_bitmap_counts(chunk)
            used = valid - chunk.count(0, 0, valid)
            nfb = chunk.find(0, 0, valid)
            if nfb < 0:
                nfb = E
        allocated += used
        index_keys.append(bi)
        index_vals.append(INDEX_ENTRY.pack(b, E - used, nfb))
    over = list(counts.at_least_3())
    ref_keys = array("Q", (b for b, _c in over))
    ref_vals = b"".join(REF_COUNT.pack(c) for _b, c in over)
    ref_root = build_btree(w, ref_keys, ref_vals, REF_COUNT_SIZE)
    index_root = build_btree(w, index_keys, b"".join(index_vals), INDEX_ENTRY_SIZE)
    return SpaceMapRoot(nr, allocated, index_root, ref_root)


def build_metadata_space_map(w: BlockWriter, nr_blocks: int, nr_used: int) -> SpaceMapRoot:
    """Write a metadata space map of *nr_blocks* blocks in which blocks
    ``0 .. nr_used-1`` (this space map's own blocks among them) have count 1:
    an empty ref-count tree, the bitmaps, then the index block."""
    ref_root = build_btree(w, [], b"", REF_COUNT_SIZE)
    entries = []
    for bi in range(nr_bitmaps(nr_blocks)):
        b = w.alloc(BITMAP)
        used = max(0, min(nr_used, (bi + 1) * E) - bi * E)
        body = bitmap_all_ones(used)
        off = w.offset(b) + BITMAP_HEADER_SIZE
        w.buf[off:off + len(body)] = body
        entries.append(INDEX_ENTRY.pack(b, E - used, used if used < E else E))
    index = w.alloc(INDEX)
    ioff = w.offset(index) + METADATA_INDEX_OFFSET
    blob = b"".join(entries)
    w.buf[ioff:ioff + len(blob)] = blob
    return SpaceMapRoot(nr_blocks, nr_used, index, ref_root)
