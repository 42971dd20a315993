"""``thin_trim``: discard the data blocks no thin device maps.

A data block is discarded only when the data space map gives it count 0
*and* no mapping of the live trees or of a held metadata snapshot points to
it: damaged or inconsistent metadata never costs data (the walk stops with
an error before anything is discarded).  Free blocks are discarded in
maximal runs: ``BLKDISCARD`` on a block device, a punched hole
(``fallocate(PUNCH_HOLE|KEEP_SIZE)``) in a regular file such as a
dmthin pool's ``data`` file.  (thin_trim 0.9.0 also discards the last
mapped block when free blocks follow it; dmthin does not.)

The pool must not be active: a metadata block device is opened with
``O_EXCL``, which fails while the kernel holds it.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import struct
from collections.abc import Callable, Iterator
from typing import Any, cast

from ..errors import Busy, MetadataError, UsageError
from ..pdata.block import BlockManager
from ..pdata.btree.walk import iter_items
from ..pdata.checksum import BITMAP
from ..pdata.space_map.format import ENTRIES_PER_BITMAP, IndexEntry, decode_bitmap_counts
from ..units import SECTOR_SIZE
from .accel import ffi, lib
from .format import TIME_BITS, Superblock
from .leaves import leaf_batches, leaf_items, node_set, top_level
from .superblock import read_superblock

BLKDISCARD = 0x1277                      # _IO(0x12, 119)
BLKGETSIZE64 = 0x80081272                # _IOR(0x12, 114, size_t)
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
_NONZERO = bytes([0] + [1] * 255)


def open_metadata(path: str | os.PathLike[str]) -> BlockManager:
    """The metadata, read-only; a block device exclusively.  Raises
    :class:`Busy` if the pool is active, ``OSError`` otherwise."""
    p = os.fspath(path)
    if stat.S_ISBLK(os.stat(p).st_mode):
        try:
            os.close(os.open(p, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC))
        except OSError as e:
            if e.errno == errno.EBUSY:
                raise Busy(f"{p} is in use (is the pool active?): deactivate the pool "
                           "before trimming") from None
            raise
    return BlockManager(p, writable=False, cache_blocks=1024)


def referenced(bm: BlockManager, sb: Superblock, nr_data: int,
               accelerated: bool = True) -> bytearray:
    """One byte per data block: 1 where a mapping (live or in the held
    metadata snapshot) points to it (*accelerated*: the trees walked and the
    blocks marked by the accelerator when it is built).  Raises
    :class:`~dmthin.errors.MetadataError` on damage or a mapping past the end."""
    used = bytearray(nr_data)
    roots = [sb.data_mapping_root]
    if sb.held_root:
        roots.append(read_superblock(bm, sb.held_root).data_mapping_root)
    seen = node_set(bm)
    fast = accelerated and lib is not None
    marks: Any = ffi.from_buffer(used) if fast else None
    bad: Any = ffi.new("uint64_t *") if fast else None
    for top in roots:
        for _dev, root in top_level(bm, top):
            if fast:
                for blocks, n in leaf_batches(bm, root, seen):
                    if lib.dm_leaves_mark(blocks, n, TIME_BITS, marks, nr_data, bad) < 0:
                        raise _past_end(int(bad[0]), nr_data)
                continue
            for _keys, values in leaf_items(bm, root, seen, accelerated=False):
                for v in values:
                    d = v >> TIME_BITS
                    if d >= nr_data:
                        raise _past_end(d, nr_data)
                    used[d] = 1
    return used


def _past_end(d: int, nr_data: int) -> MetadataError:
    return MetadataError(f"a mapping points to data block {d}, past the data device "
                         f"({nr_data} blocks): run check")


def free_runs(bm: BlockManager, sb: Superblock) -> Iterator[tuple[int, int]]:
    """Maximal runs ``(begin, end)`` of data blocks with count 0 in the
    space map and no mapping.  Raises :class:`~dmthin.errors.MetadataError`."""
    dsm = sb.data_sm
    nr = dsm.nr_blocks
    used = referenced(bm, sb, nr)
    entries = [IndexEntry.unpack(cast(bytes, v)) for _k, v in iter_items(bm, dsm.bitmap_root)]
    if len(entries) < -(-nr // ENTRIES_PER_BITMAP):
        raise MetadataError("the data space map index is short: run check")
    start = -1
    for i, entry in enumerate(entries):
        base = i * ENTRIES_PER_BITMAP
        if base >= nr:
            break
        n = min(ENTRIES_PER_BITMAP, nr - base)
        counts = decode_bitmap_counts(bm.read(entry.blocknr, BITMAP))[:n].translate(_NONZERO)
        taken = (int.from_bytes(counts, "little")
                 | int.from_bytes(used[base:base + n], "little")).to_bytes(n, "little")
        j = 0
        while j < n:
            if start < 0:
                k = taken.find(0, j)
                if k < 0:
                    break
                start, j = base + k, k
            k = taken.find(1, j)
            if k < 0:
                break
            yield start, base + k
            start, j = -1, k
    if start >= 0:
        yield start, nr


def _discard_device(fd: int) -> Callable[[int, int], None]:
    def discard(offset: int, length: int) -> None:
        fcntl.ioctl(fd, BLKDISCARD, struct.pack("QQ", offset, length))
    return discard


def _punch_file(fd: int) -> Callable[[int, int], None]:
    libc = ctypes.CDLL(None, use_errno=True)
    fallocate = libc.fallocate
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]

    def punch(offset: int, length: int) -> None:
        if fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length):
            e = ctypes.get_errno()
            raise OSError(e, f"punching a hole in the data file: {os.strerror(e)}")
    return punch


def trim(metadata: str | os.PathLike[str], data: str | os.PathLike[str],
         emit: Callable[[str], None] | None = None) -> int:
    """Discard every unmapped data block of the pool (*metadata*, *data*);
    return the number of blocks discarded.  *emit* gets one line per run.
    Raises :class:`UsageError` (data device too small, not a file or
    device), :class:`Busy`, :class:`~dmthin.errors.MetadataError` and
    ``OSError``; nothing is discarded unless the whole metadata was read."""
    bm = open_metadata(metadata)
    try:
        sb = read_superblock(bm)
        runs = list(free_runs(bm, sb))
    finally:
        bm.close()
    bs = sb.data_block_size * SECTOR_SIZE
    fd = os.open(os.fspath(data), os.O_WRONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISBLK(st.st_mode):
            size = struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, bytes(8)))[0]
            discard = _discard_device(fd)
        elif stat.S_ISREG(st.st_mode):
            size, discard = st.st_size, _punch_file(fd)
        else:
            raise UsageError(f"{os.fspath(data)} is neither a block device nor a regular file")
        if size < sb.data_sm.nr_blocks * bs:
            raise UsageError(f"the data device is {size} bytes, smaller than the pool's "
                             f"{sb.data_sm.nr_blocks} blocks of {bs} bytes: wrong device?")
        total = 0
        for b, e in runs:
            if emit:
                emit(f"emitting discard for blocks ({b}, {e}]")
            discard(b * bs, (e - b) * bs)
            total += e - b
        return total
    finally:
        os.close(fd)
