"""Walk thin metadata and emit IR events (the producer side of thin_dump).

Read-only and streaming: the device-details tree is read into a dict (one
entry per device), then each device's mapping subtree is walked one leaf at
a time, so memory stays bounded by the block cache whatever the number of
mappings.  Semantics follow ``thin_dump`` 0.9.0: devices come in the order of
the top-level mapping tree, runs of mappings are grouped across leaves, the
superblock's ``nr_data_blocks`` is the data space map's size (0 in a
metadata snapshot, whose space-map roots are zeroed), and ``metadata_snap``
is never emitted.
"""
from __future__ import annotations

import os
import stat
import struct

from ..errors import BTreeError, MetadataError
from ..pdata.block import BlockManager
from ..pdata.btree.walk import iter_items, iter_leaves
from .ir import Device, RunBuilder, Superblock, to_map
from .superblock import Superblock as DiskSuperblock, read_superblock

_DETAILS = struct.Struct("<QQII")


def open_block_manager(path, cache_blocks: int = 1024) -> BlockManager:
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


def select_superblock(bm, metadata_snap: bool | int | None = None) -> DiskSuperblock:
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


def read_details(bm, root: int) -> dict[int, Device]:
    """Decode the device-details tree into ``{dev_id: Device}``.  Raises
    :class:`~dmthin.errors.MetadataError` on damage."""
    devs: dict[int, Device] = {}
    for _b, keys, values in iter_leaves(bm, root):
        for k, v in zip(keys, values):
            if isinstance(v, int) or len(v) != _DETAILS.size:
                raise BTreeError(f"device details tree: leaf {_b} has values of the wrong "
                                 f"size (expected {_DETAILS.size} bytes)", _b)
            mapped, trans, ctime, stime = _DETAILS.unpack(v)
            devs[k] = Device(k, mapped, trans, ctime, stime)
    return devs


def iter_mapping_leaves(bm, root: int):
    """Yield ``(keys, packed_values)`` for each leaf of one device's mapping
    subtree, checking value size and key order across leaves."""
    last = -1
    for b, keys, values in iter_leaves(bm, root):
        if not keys:
            continue
        if not isinstance(values, tuple):
            raise BTreeError(f"mapping leaf {b} does not hold 8-byte block_time values", b)
        if keys[0] <= last:
            raise BTreeError(f"mapping leaf {b}: keys out of order ({keys[0]} after {last})", b)
        last = keys[-1]
        yield keys, values


def dump(bm, visitor, *, metadata_snap: bool | int | None = None,
         dev_ids=None, skip_mappings: bool = False, progress=None) -> None:
    """Emit the IR of the metadata behind block manager *bm* to *visitor*.

    *dev_ids*: only these devices; *progress*: called with the number of
    mappings emitted so far.  Raises :class:`~dmthin.errors.MetadataError`
    (corruption, no metadata snapshot) and ``OSError``."""
    sb = select_superblock(bm, metadata_snap)
    details = read_details(bm, sb.device_details_root)
    visitor.superblock_b(Superblock(
        uuid="", time=sb.time, transaction=sb.trans_id, flags=sb.flags, version=sb.version,
        data_block_size=sb.data_block_size, nr_data_blocks=sb.data_sm.nr_blocks,
        metadata_snap=None))
    wanted = None if dev_ids is None else set(dev_ids)
    done = 0
    emit_runs = getattr(visitor, "map_runs", None)
    if emit_runs is None:
        emit_map = visitor.map

        def emit_runs(runs):
            for r in runs:
                emit_map(to_map(r))
    for dev_id, subroot in iter_items(bm, sb.data_mapping_root):
        if wanted is not None and dev_id not in wanted:
            continue
        dev = details.get(dev_id)
        if dev is None:
            raise MetadataError(f"mappings present for device {dev_id}, but it is not in the "
                                "device details tree (run check)")
        visitor.device_b(dev)
        if not skip_mappings:
            runs = RunBuilder()
            for keys, values in iter_mapping_leaves(bm, subroot):
                done_runs = runs.add_leaf(keys, values)
                if done_runs:
                    emit_runs(done_runs)
                if progress is not None:
                    done += len(keys)
                    progress(done)
            last = runs.finish()
            if last:
                emit_runs(last)
        visitor.device_e()
    visitor.superblock_e()
    visitor.eof()


def total_mapped(bm, metadata_snap: bool | int | None = None) -> int:
    """Sum of ``mapped_blocks`` over all devices (a progress-bar total)."""
    sb = select_superblock(bm, metadata_snap)
    return sum(d.mapped_blocks for d in read_details(bm, sb.device_details_root).values())
