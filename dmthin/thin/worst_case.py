"""The worst case of :func:`~dmthin.thin.metadata_size.worst_case_blocks`,
built: thin metadata in which every data block is mapped once, spread
evenly over the devices, and every btree node but the roots holds a third of
its entries -- the emptiest the kernel lets nodes get (it merges below) and
the tools accept.  It passes thin_check 0.9.0 and 1.1.0, and the blocks it
takes are what ``dmthin metadata-size --exact`` reports.
"""
from __future__ import annotations

import os
import struct
from array import array

from ..pdata.btree.builder import BlockWriter
from ..pdata.btree.node import (
    HEADER_FIELDS,
    HEADER_FIELDS_OFFSET,
    HEADER_SIZE,
    INTERNAL_NODE,
    LEAF_NODE,
    calc_max_entries,
)
from ..pdata.checksum import BITMAP, BLOCK_SIZE, BTREE_NODE, SUPERBLOCK
from ..pdata.space_map.build import build_metadata_space_map, metadata_space_map_blocks
from ..pdata.space_map.format import (
    BITMAP_HEADER_SIZE,
    ENTRIES_PER_BITMAP,
    INDEX_ENTRY,
    SpaceMapRoot,
    bitmap_all_ones,
    nr_bitmaps,
)
from .format import TIME_BITS, DeviceDetails, Superblock, pack_sm_root
from .metadata_size import worst_case_blocks

E = ENTRIES_PER_BITMAP


def least_fill_sizes(n: int, max_entries: int) -> list[int]:
    """Node sizes for *n* entries with as many nodes as the least fill
    (a third) allows; one root node below two nodes' worth."""
    least = max_entries // 3
    if n < 2 * least:
        return [n]
    k = n // least
    base, extra = divmod(n, k)
    return [base + 1] * extra + [base] * (k - extra)


def _node(w: BlockWriter, flags: int, keys: bytes, values: bytes, nr: int, vs: int) -> int:
    mx = calc_max_entries(vs)
    b = w.alloc(BTREE_NODE)
    off = w.offset(b)
    HEADER_FIELDS.pack_into(w.buf, off + HEADER_FIELDS_OFFSET, flags, b, nr, mx, vs)
    w.buf[off + HEADER_SIZE:off + HEADER_SIZE + len(keys)] = keys
    voff = off + HEADER_SIZE + 8 * mx
    w.buf[voff:voff + len(values)] = values
    return b


def write_sparse_btree(w: BlockWriter, keys: list[int], values: bytes, vs: int) -> int:
    """A btree of *keys* and packed *values* at the least fill; its root."""
    level: list[tuple[int, int]] = []
    i = 0
    for size in least_fill_sizes(len(keys), calc_max_entries(vs)):
        kb = struct.pack(f"<{size}Q", *keys[i:i + size])
        level.append((keys[i] if size else 0,
                      _node(w, LEAF_NODE, kb, values[i * vs:(i + size) * vs], size, vs)))
        i += size
    while len(level) > 1:
        parents: list[tuple[int, int]] = []
        i = 0
        for size in least_fill_sizes(len(level), calc_max_entries(8)):
            chunk = level[i:i + size]
            kb = struct.pack(f"<{size}Q", *(k for k, _ in chunk))
            vb = struct.pack(f"<{size}Q", *(c for _, c in chunk))
            parents.append((chunk[0][0], _node(w, INTERNAL_NODE, kb, vb, size, 8)))
            i += size
        level = parents
    return level[0][1]


def build_worst_case(path: str | os.PathLike[str], nr_data_blocks: int, max_thins: int,
                     data_block_size: int = 128) -> int:
    """Write the worst-case metadata to *path* (created or truncated, sparse,
    exactly as big as it needs); return its number of blocks."""
    nr_meta = worst_case_blocks(nr_data_blocks, max_thins)
    fd = os.open(os.fspath(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, nr_meta * BLOCK_SIZE)
        w = BlockWriter(fd)
        q, r = divmod(nr_data_blocks, max_thins)
        roots, details = [], []
        data = 0
        for dev in range(max_thins):
            n = q + (1 if dev < r else 0)
            values = array("Q", range(data << TIME_BITS, (data + n) << TIME_BITS,
                                      1 << TIME_BITS))
            roots.append(write_sparse_btree(w, list(range(n)), values.tobytes(), 8))
            details.append(DeviceDetails(n, 0, 0, 0).pack())
            data += n
        ids = list(range(max_thins))
        top = write_sparse_btree(w, ids, array("Q", roots).tobytes(), 8)
        det = write_sparse_btree(w, ids, b"".join(details), 24)
        entries = []
        for bi in range(nr_bitmaps(nr_data_blocks)):
            b = w.alloc(BITMAP)
            used = min(E, nr_data_blocks - bi * E)
            body = bitmap_all_ones(used)
            off = w.offset(b) + BITMAP_HEADER_SIZE
            w.buf[off:off + len(body)] = body
            entries.append(INDEX_ENTRY.pack(b, E - used, used))
        ref = write_sparse_btree(w, [], b"", 4)
        index = write_sparse_btree(w, list(range(len(entries))), b"".join(entries), 16)
        data_sm = SpaceMapRoot(nr_data_blocks, nr_data_blocks, index, ref)
        used = w.next + metadata_space_map_blocks(nr_meta)
        meta_sm = build_metadata_space_map(w, nr_meta, used)
        w.flush()
        sb = Superblock(data_sm_root=pack_sm_root(data_sm), metadata_sm_root=pack_sm_root(meta_sm),
                        data_mapping_root=top, device_details_root=det,
                        data_block_size=data_block_size, metadata_nr_blocks=nr_meta)
        buf = bytearray(BLOCK_SIZE)
        sb.pack_into(buf)
        SUPERBLOCK.prepare_for_write(buf, 0)
        os.pwrite(fd, buf, 0)
        os.fsync(fd)
        return used
    finally:
        os.close(fd)
