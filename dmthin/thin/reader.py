"""Read-only access to thin metadata, shared by dump and ls: opening a
metadata file or device, choosing the live superblock or a metadata
snapshot's copy, decoding the details tree and walking one device's
mapping leaves."""
from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterator, Sequence
from itertools import islice

from ..errors import BTreeError, MetadataError
from ..pdata.block import BlockManager
from ..pdata.btree.cwalk import LeafBatches, usable
from ..pdata.btree.node import HEADER_SIZE, read_u64_values
from ..pdata.btree.walk import iter_leaf_nodes, iter_leaves
from ..pdata.checksum import BLOCK_SIZE, Buffer
from .accel import ffi
from .format import MAPPING_VALUE_SIZE, DeviceDetails, Superblock
from .ir import Device
from .superblock import read_superblock


def open_block_manager(path: str | os.PathLike[str], cache_blocks: int = 1024) -> BlockManager:
    """Open a metadata file or device read-only.  Raises
    :class:`~dmthin.errors.MetadataError` if it is too small to hold a
    superblock, ``OSError`` if it cannot be opened."""
    bm = BlockManager(path, writable=False, cache_blocks=cache_blocks)
    if stat.S_ISBLK(os.fstat(bm.fd).st_mode):
        # A live pool's metadata device is written by the kernel behind the
        # page cache (dm-bufio): drop cached pages so reads see the device.
        os.posix_fadvise(bm.fd, 0, 0, os.POSIX_FADV_DONTNEED)
    if bm.file_blocks < 1:
        bm.close()
        raise MetadataError(f"{os.fspath(path)}: too small to hold thin metadata "
                            "(less than one 4 KiB block)")
    return bm


def select_superblock(bm: BlockManager, metadata_snap: bool | int | None = None) -> Superblock:
    """The superblock to dump: the live one (``metadata_snap`` None/False),
    the held metadata snapshot (True), or the copy at block *metadata_snap*.
    Raises :class:`~dmthin.errors.MetadataError` (incl. ``BadSuperblock``)."""
    sb = read_superblock(bm)
    if metadata_snap is None or metadata_snap is False:
        return sb
    if metadata_snap is True:
        if not sb.held_root:
            raise MetadataError("no metadata snapshot is held (superblock held_root is 0): "
                                "reserve one first, or run without -m")
        block = sb.held_root
    else:
        block = int(metadata_snap)
    if block == 0:
        raise MetadataError("block 0 is the live superblock, not a metadata snapshot")
    return read_superblock(bm, block)


def read_details(bm: BlockManager, root: int) -> dict[int, Device]:
    """Decode the device-details tree into ``{dev_id: Device}``.  Raises
    :class:`~dmthin.errors.MetadataError` on damage."""
    devs: dict[int, Device] = {}
    for _b, keys, values in iter_leaves(bm, root, DeviceDetails.SIZE):
        for k, v in zip(keys, values, strict=True):
            d = DeviceDetails.unpack(v)
            devs[k] = Device(k, d.mapped_blocks, d.transaction_id, d.creation_time,
                             d.snapshotted_time)
    return devs


def iter_mapping_leaves(bm: BlockManager, root: int, accelerated: bool = True
                        ) -> Iterator[tuple[tuple[int, ...], Sequence[int]]]:
    """Yield ``(keys, packed_values)`` for each leaf of one device's mapping
    subtree, validated as thin_dump does (see
    :func:`~dmthin.pdata.btree.walk.iter_leaves`), key order across leaves too.
    Raises :class:`~dmthin.errors.MetadataError` (incl. ``BTreeError``)."""
    for keys, buf, mx in iter_mapping_leaf_nodes(bm, root, accelerated):
        yield keys, read_u64_values(buf, len(keys), mx)


def mapping_leaf_batches(bm: BlockManager, root: int) -> LeafBatches | None:
    """The accelerator's walk of a mapping subtree (leaves in batches,
    validated as :func:`iter_mapping_leaf_nodes`), or None if it cannot read
    *bm*.  After a walk that :attr:`~LeafBatches.failed`, the caller goes on
    with ``iter_mapping_leaf_nodes(bm, root, skip=walk.handed)``."""
    return LeafBatches(bm, root, mapping=True) if usable(bm) else None


def iter_mapping_leaf_nodes(bm: BlockManager, root: int, accelerated: bool = True,
                            skip: int = 0) -> Iterator[tuple[tuple[int, ...], Buffer, int]]:
    """:func:`iter_mapping_leaves` with each leaf's block instead of its
    values: ``(keys, contents, max_entries)``; the first *skip* leaves left
    out.  With *accelerated* the accelerator's walker reads the tree when it
    can (same leaves, same errors)."""
    walk = mapping_leaf_batches(bm, root) if accelerated and not skip else None
    if walk is not None:
        for out, n in walk:
            view = memoryview(ffi.buffer(out))
            for i in range(n):
                blk = view[i * BLOCK_SIZE:(i + 1) * BLOCK_SIZE]
                nr, mx = _NR_MX.unpack_from(blk, 16)
                yield struct.unpack_from(f"<{nr}Q", blk, HEADER_SIZE), blk, mx
        if not walk.failed:
            return
        skip = walk.handed
    # The reference walk (or, after the C walker stopped on a problem, the
    # walk that reports it, past the leaves handed out already).
    yield from islice(_mapping_leaf_nodes(bm, root), skip, None)


_NR_MX = struct.Struct("<II")


def _mapping_leaf_nodes(bm: BlockManager, root: int
                        ) -> Iterator[tuple[tuple[int, ...], Buffer, int]]:
    last = -1
    for b, keys, buf, mx in iter_leaf_nodes(bm, root, MAPPING_VALUE_SIZE):
        if not keys:
            continue
        if keys[0] <= last:
            raise BTreeError(f"mapping leaf {b}: keys out of order ({keys[0]} after {last})", b)
        last = keys[-1]
        yield keys, buf, mx
