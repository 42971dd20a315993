"""Thin-pool metadata: the kernel's dm-thin-metadata.c in Python.

:class:`ThinMetadata` formats and opens a metadata file and offers the pool's
metadata operations: thin and snapshot creation, deletion, mappings with
their block times, transaction ids, metadata snapshots, data allocation and
commit.  It writes the kernel's format byte for byte, so ``thin_check``,
``thin_dump`` and a real kernel accept its files.

The trees and records are described in :mod:`dmthin.thin.format`.

Changed device details are kept in memory and written at commit, as the
kernel does.  Any mutating call may raise
:class:`~dmthin.errors.NoSpace` when the metadata device is full; the
caller must then :meth:`abort`.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NamedTuple

from ..errors import (
    BadSuperblock,
    Busy,
    DeviceExists,
    DeviceNotFound,
    InvalidArgument,
    MetadataError,
    NotSupported,
)
from ..pdata.block import DEFAULT_CACHE_BLOCKS, BlockManager
from ..pdata.btree import ops as bt
from ..pdata.btree import remove as bt_remove
from ..pdata.btree.cursor import iter_range
from ..pdata.btree.hint import InsertHint
from ..pdata.btree.node import NODE_CODEC
from ..pdata.btree.spine import BTreeInfo, ValueType, runs
from ..pdata.checksum import BLOCK_SIZE, SUPERBLOCK
from ..pdata.space_map.disk import DiskSpaceMap
from ..pdata.space_map.metadata import MetadataSpaceMap
from ..pdata.transaction import TransactionManager
from ..units import MAX_METADATA_BLOCKS, ThinId, check_data_block_sectors
from .format import (
    MAPPING_VALUE_SIZE,
    MAX_DATA_BLOCKS,
    NEEDS_CHECK_FLAG,
    SUPERBLOCK_LOCATION,
    TIME_BITS,
    TIME_MASK,
    DeviceDetails,
    Superblock,
    clear_space_map_roots,
    pack_block_time,
    pack_sm_root,
)
from .superblock import read_superblock

__all__ = ["ThinMetadata", "DeviceDetails", "Lookup"]


class Lookup(NamedTuple):
    """A mapping as :meth:`ThinMetadata.lookup` finds it."""
    data_block: int
    time: int
    shared: bool


class ThinMetadata:
    """Pool metadata in a file (or block device).  Use :meth:`format` or
    :meth:`open`."""

    def __init__(self, bm: BlockManager, read_only: bool):
        self.bm = bm
        self.read_only = read_only
        self.tm = TransactionManager(bm, NODE_CODEC)
        self._setup_infos()
        # ``struct dm_thin_device``: details held in memory until commit,
        # and the ids whose details changed.
        self._devices: dict[int, DeviceDetails] = {}
        self._changed: set[int] = set()
        self.superblock: Superblock | None = None

    # -- construction ----------------------------------------------------------------
    def _setup_infos(self) -> None:
        tm = self.tm

        def data_inc(values: list[int]) -> None:
            for b, e in runs([v >> TIME_BITS for v in values]):
                self.data_sm.inc(b, e)

        def data_dec(values: list[int]) -> None:
            for b, e in runs([v >> TIME_BITS for v in values]):
                self.data_sm.dec(b, e)

        data_vt = ValueType(MAPPING_VALUE_SIZE, data_inc, data_dec, lambda a, b: a == b)

        def subtree_inc(values: list[int]) -> None:
            for v in values:
                tm.inc(v)

        def subtree_dec(values: list[int]) -> None:
            for v in values:
                bt_remove.delete(self.bl_info, v)

        self.info = BTreeInfo(tm, 2, data_vt)
        self.bl_info = BTreeInfo(tm, 1, data_vt)
        self.tl_info = BTreeInfo(tm, 1, ValueType(8, subtree_inc, subtree_dec,
                                                  lambda a, b: a == b))
        self.details_info = BTreeInfo(tm, 1, ValueType(DeviceDetails.SIZE))
        # The last mapping insert's path (pdata.btree.hint); see _mutating.
        self._hint = InsertHint(self.info)

    @classmethod
    def format(cls, path: str | os.PathLike[str], data_block_sectors: int, nr_data_blocks: int,
               cache_blocks: int = DEFAULT_CACHE_BLOCKS) -> ThinMetadata:
        """Format the metadata file at *path* (which must exist; its size
        fixes the metadata size, capped at the kernel's maximum) for data
        blocks of *data_block_sectors* 512-byte sectors.  Raises
        :class:`InvalidArgument` for sizes the kernel refuses.
        """
        check_data_block_sectors(data_block_sectors)
        if not 0 <= nr_data_blocks <= MAX_DATA_BLOCKS:
            raise InvalidArgument(f"invalid number of data blocks {nr_data_blocks}")
        bm = BlockManager(path, writable=True, cache_blocks=cache_blocks)
        if bm.file_blocks < 16:
            bm.close()
            raise InvalidArgument(f"metadata file {os.fspath(path)} is too small "
                                  f"({bm.file_blocks} blocks): use at least 64K, ideally 2M")
        self = cls(bm, read_only=False)
        nr_blocks = min(bm.file_blocks, MAX_METADATA_BLOCKS)
        bm.nr_blocks = nr_blocks
        tm = self.tm
        self.metadata_sm = MetadataSpaceMap.create(tm, nr_blocks, SUPERBLOCK_LOCATION)
        self.data_sm = DiskSpaceMap.create(tm, 0)
        self.root = bt.empty(self.info)
        self.details_root = bt.empty(self.details_info)
        self.time = 0
        self.trans_id = 0
        self.flags = 0
        self.held_root = 0
        self.data_block_sectors = data_block_sectors
        self._sb_template = Superblock(data_block_size=data_block_sectors,
                                       metadata_nr_blocks=nr_blocks)
        self.commit()
        if nr_data_blocks:
            self.resize_data(nr_data_blocks)
            self.commit()
        return self

    @classmethod
    def open(cls, path: str | os.PathLike[str], read_only: bool = False,
             cache_blocks: int = DEFAULT_CACHE_BLOCKS,
             superblock_location: int = SUPERBLOCK_LOCATION) -> ThinMetadata:
        """Open formatted metadata.  Raises :class:`BadSuperblock` (wrong
        magic, unsupported version or feature flags, and for read-write
        opening of metadata with compat_ro flags), checksum errors, or
        :class:`MetadataError` if the file is smaller than its space map."""
        bm = BlockManager(path, writable=not read_only, cache_blocks=cache_blocks)
        try:
            sb = read_superblock(bm, superblock_location)
            if not read_only and sb.compat_ro_flags:
                raise BadSuperblock(f"metadata has compat_ro feature flags "
                                    f"{sb.compat_ro_flags:#x}: it can only be opened read-only")
            self = cls(bm, read_only)
            self._load(sb)
        except BaseException:
            bm.close()
            raise
        return self

    def _load(self, sb: Superblock) -> None:
        bm = self.bm
        msm = sb.metadata_sm
        if msm.nr_blocks > bm.file_blocks:
            raise MetadataError(f"metadata space map covers {msm.nr_blocks} blocks but "
                                f"{bm.path} holds only {bm.file_blocks}")
        bm.nr_blocks = msm.nr_blocks
        self.tm = TransactionManager(bm, NODE_CODEC)
        self._setup_infos()
        self.metadata_sm = MetadataSpaceMap.open(self.tm, msm.nr_blocks, msm.nr_allocated,
                                                 msm.bitmap_root, msm.ref_count_root)
        dsm = sb.data_sm
        self.data_sm = DiskSpaceMap.open(self.tm, dsm.nr_blocks, dsm.nr_allocated,
                                         dsm.bitmap_root, dsm.ref_count_root)
        self.root = sb.data_mapping_root
        self.details_root = sb.device_details_root
        self.time = sb.time
        self.trans_id = sb.trans_id
        self.flags = sb.flags
        self.held_root = sb.held_root
        self.data_block_sectors = sb.data_block_size
        self._sb_template = sb
        self.superblock = sb
        self._devices = {}
        self._changed = set()

    def close(self) -> None:
        """Close without committing (uncommitted changes are lost)."""
        self.bm.close()

    def __enter__(self) -> ThinMetadata:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- properties -----------------------------------------------------------------------
    @property
    def nr_data_blocks(self) -> int:
        return self.data_sm.nr_blocks

    @property
    def nr_metadata_blocks(self) -> int:
        return self.metadata_sm.nr_blocks

    @property
    def data_block_size(self) -> int:
        """Alias of :attr:`data_block_sectors` (Pool.data_block_size is bytes)."""
        return self.data_block_sectors

    @property
    def transaction_id(self) -> int:
        return self.trans_id

    @property
    def needs_check(self) -> bool:
        return bool(self.flags & NEEDS_CHECK_FLAG)

    def nr_free_data_blocks(self) -> int:
        return self.data_sm.nr_free()

    def nr_free_metadata_blocks(self) -> int:
        return self.metadata_sm.nr_free()

    def data_block_count(self, b: int) -> int:
        return self.data_sm.get_count(b)

    def _check_writable(self) -> None:
        """Raise :class:`NotSupported` if the metadata is open read-only."""
        if self.read_only:
            raise NotSupported("metadata is open read-only")

    def _mutating(self) -> None:
        """:meth:`_check_writable`; then, as the trees are about to change
        other than by a mapping insert, forget the insert hint."""
        self._check_writable()
        self._hint.forget()

    # -- commit / abort ----------------------------------------------------------------------
    def _write_changed_details(self) -> None:
        changed = self._changed
        for dev_id in reversed(list(self._devices)):
            if dev_id in changed:
                self.details_root, _ = bt.insert(self.details_info, self.details_root,
                                                 [dev_id], self._devices[dev_id].pack())
        changed.clear()

    def commit(self) -> None:
        """``__commit_transaction``: details, data space map, metadata space
        map and every dirty block, then the superblock last."""
        self._mutating()
        self._write_changed_details()
        self.data_sm.commit()
        self.tm.pre_commit()
        sb = self._sb_template.replace(
            flags=self.flags, time=self.time, trans_id=self.trans_id, held_root=self.held_root,
            data_mapping_root=self.root, device_details_root=self.details_root,
            data_sm_root=pack_sm_root(self.data_sm.root()),
            metadata_sm_root=pack_sm_root(self.metadata_sm.root()))
        buf = bytearray(BLOCK_SIZE)
        sb.pack_into(buf)
        self.tm.commit(SUPERBLOCK_LOCATION, buf, SUPERBLOCK)
        self.superblock = sb
        self._sb_template = sb

    def abort(self) -> None:
        """Drop every uncommitted change: back to the last commit."""
        self._hint.forget()
        self.tm.abort()
        self._load(read_superblock(self.bm, SUPERBLOCK_LOCATION))

    # -- devices -------------------------------------------------------------------------------
    def _open_device(self, dev_id: int, create: bool = False) -> DeviceDetails:
        """*dev_id*'s details (kept until commit); new ones if *create*."""
        td = self._devices.get(dev_id)
        if td is None:
            raw = bt.lookup(self.details_info, self.details_root, [dev_id])
            if raw is not None:
                td = DeviceDetails.unpack(raw)
            elif create:
                td = DeviceDetails(0, self.trans_id, self.time, self.time)
                self._changed.add(dev_id)
                create = False
            else:
                raise DeviceNotFound(f"no thin device {dev_id}")
            self._devices[dev_id] = td
        if create:
            raise DeviceExists(f"thin device {dev_id} already exists")
        return td

    def device_ids(self) -> list[int]:
        """Ids of every thin device, ascending (the top-level tree's keys)."""
        return [k for k, _v in iter_range(self.tm, self.root)]

    def details(self, dev_id: int) -> DeviceDetails:
        """A copy of device *dev_id*'s details.  Raises
        :class:`DeviceNotFound` (ENODATA)."""
        return self._open_device(dev_id).copy()

    def snapshotted_time(self, dev_id: int) -> int:
        """Device *dev_id*'s snapshotted time, as :meth:`details` gives it
        (without the copy: the simulator reads it per I/O).  Raises
        :class:`DeviceNotFound` (ENODATA)."""
        td = self._devices.get(dev_id)
        return (td if td is not None else self._open_device(dev_id)).snapshotted_time

    def has_device(self, dev_id: int) -> bool:
        """True if thin device *dev_id* exists (committed or not)."""
        return dev_id in self._devices or \
            bt.lookup(self.details_info, self.details_root, [dev_id]) is not None

    def create_thin(self, dev_id: int) -> None:
        """``__create_thin``: EEXIST if the id is used, EINVAL above 2^24-1."""
        self._mutating()
        dev_id = ThinId(dev_id)
        if self.has_device(dev_id):
            raise DeviceExists(f"thin device {dev_id} already exists")
        dev_root = bt.empty(self.bl_info)
        self.root, _ = bt.insert(self.tl_info, self.root, [dev_id], dev_root)
        self._open_device(dev_id, create=True)

    def create_snap(self, dev_id: int, origin_id: int) -> None:
        """``__create_snap``: share the origin's subtree, bump the time."""
        self._mutating()
        dev_id, origin_id = ThinId(dev_id), ThinId(origin_id)
        if self.has_device(dev_id):
            raise DeviceExists(f"thin device {dev_id} already exists")
        origin_root = bt.lookup(self.tl_info, self.root, [origin_id])
        if origin_root is None:
            raise DeviceNotFound(f"no thin device {origin_id} to snapshot")
        self.tm.inc(origin_root)
        self.root, _ = bt.insert(self.tl_info, self.root, [dev_id], origin_root)
        self.time += 1
        snap = self._open_device(dev_id, create=True)
        origin = self._open_device(origin_id)
        self._changed.add(origin_id)
        origin.snapshotted_time = self.time
        snap.mapped_blocks = origin.mapped_blocks
        snap.snapshotted_time = self.time

    def delete(self, dev_id: int) -> None:
        """``__delete_device``: drop the details and the mapping subtree."""
        self._mutating()
        self._open_device(ThinId(dev_id))
        del self._devices[dev_id]
        self._changed.discard(dev_id)
        self.details_root, _ = bt_remove.remove(self.details_info, self.details_root, [dev_id])
        self.root, removed = bt_remove.remove(self.tl_info, self.root, [dev_id])
        if not removed:
            raise MetadataError(f"thin device {dev_id} has details but no mapping tree")

    def set_transaction_id(self, old: int, new: int) -> None:
        """Compare and swap; :class:`InvalidArgument` on mismatch."""
        self._mutating()
        if self.trans_id != old:
            raise InvalidArgument(f"mismatched transaction id: the pool's is {self.trans_id}, "
                                  f"not {old}")
        self.trans_id = new

    def set_needs_check(self) -> None:
        self._mutating()
        self.flags |= NEEDS_CHECK_FLAG

    # -- metadata snapshots ------------------------------------------------------------------
    def reserve_metadata_snap(self) -> int:
        """Commit, then copy the superblock to a held block; return it.
        :class:`Busy` (EBUSY) if a snapshot is already held."""
        self._mutating()
        if self.held_root:
            raise Busy(f"a metadata snapshot is already held at block {self.held_root}: "
                       "release it first")
        self.commit()
        tm = self.tm
        self.metadata_sm.inc(SUPERBLOCK_LOCATION)
        held, buf, _inc = tm.shadow_block(SUPERBLOCK_LOCATION, SUPERBLOCK)
        copy = Superblock.unpack(buf)
        clear_space_map_roots(buf)        # the copy's space maps are not published
        tm.inc(copy.data_mapping_root)
        tm.inc(copy.device_details_root)
        self.held_root = held
        return held

    def release_metadata_snap(self) -> None:
        """:class:`InvalidArgument` (EINVAL) if no snapshot is held."""
        self._mutating()
        held, self.held_root = self.held_root, 0
        if not held:
            raise InvalidArgument("no pool metadata snapshot found: nothing to release")
        copy = Superblock.unpack(self.tm.read(held, SUPERBLOCK))
        bt_remove.delete(self.info, copy.data_mapping_root)
        bt_remove.delete(self.details_info, copy.device_details_root)
        self.tm.dec(held)

    # -- mappings ---------------------------------------------------------------------------------
    def _subtree(self, dev_id: int) -> int:
        root: int | None = bt.lookup(self.tl_info, self.root, [dev_id])
        if root is None:
            raise DeviceNotFound(f"no thin device {dev_id}")
        return root

    def lookup(self, dev_id: int, vblock: int) -> Lookup | None:
        """The mapping of *vblock*, or None; ``shared`` as the kernel's
        ``__snapshotted_since``."""
        td = self._open_device(dev_id)
        v = bt.lookup(self.info, self.root, [dev_id, vblock])
        if v is None:
            return None
        time = v & TIME_MASK
        return Lookup(v >> TIME_BITS, time, td.snapshotted_time > time)

    def insert(self, dev_id: int, vblock: int, data_block: int) -> None:
        """Map *vblock* to *data_block* with the current time.  The caller
        owns one reference to *data_block*; a replaced mapping's block is
        released."""
        self._check_writable()
        td = self._open_device(dev_id)
        if not 0 <= data_block < self.data_sm.nr_blocks:
            raise InvalidArgument(f"data block {data_block} is outside the pool "
                                  f"({self.data_sm.nr_blocks} blocks)")
        self.root, inserted = self._hint.insert(self.root, [dev_id, vblock],
                                                pack_block_time(data_block, self.time))
        if inserted:
            td.mapped_blocks += 1
        self._changed.add(dev_id)

    def remove(self, dev_id: int, vblock: int) -> bool:
        """Unmap *vblock*; return False if it was not mapped."""
        self._mutating()
        td = self._open_device(dev_id)
        if bt.lookup(self.info, self.root, [dev_id, vblock]) is None:
            return False
        self.root, removed = bt_remove.remove(self.info, self.root, [dev_id, vblock])
        if removed:
            td.mapped_blocks -= 1
            self._changed.add(dev_id)
        return removed

    def remove_range(self, dev_id: int, begin: int, end: int) -> int:
        """``__remove_range``: unmap [begin, end); return how many."""
        self._mutating()
        td = self._open_device(dev_id)
        mapping_root = self._subtree(dev_id)
        self.tm.inc(mapping_root)
        self.root, _ = bt_remove.remove(self.tl_info, self.root, [dev_id])
        total = 0
        while begin < end:
            nxt = bt.lookup_next(self.bl_info, mapping_root, begin)
            if nxt is None:
                break
            begin = nxt[0]
            if begin >= end:
                break
            mapping_root, count = bt_remove.remove_leaves(self.bl_info, mapping_root, begin, end)
            total += count
            if not count:
                break
        td.mapped_blocks -= total
        self._changed.add(dev_id)
        self.root, _ = bt.insert(self.tl_info, self.root, [dev_id], mapping_root)
        return total

    def mappings(self, dev_id: int, begin: int = 0, end: int | None = None
                 ) -> Iterator[tuple[int, int, int]]:
        """Yield ``(vblock, data_block, time)`` in order.  Do not modify the
        metadata while iterating."""
        for k, v in iter_range(self.tm, self._subtree(dev_id), begin, end):
            yield k, v >> TIME_BITS, v & TIME_MASK

    def highest_mapped_block(self, dev_id: int) -> int | None:
        return bt.find_highest_key(self.bl_info, self._subtree(dev_id))

    # -- data space ------------------------------------------------------------------------------
    def alloc_data_block(self) -> int:
        """Allocate a data block in the kernel's order; :class:`NoSpace`."""
        self._check_writable()
        return self.data_sm.new_block()

    def metadata_file_blocks(self) -> int:
        """Blocks the metadata file (or device) holds now, capped at the
        kernel's maximum: more than :attr:`nr_metadata_blocks` after it grew."""
        self.bm.refresh_size()
        return min(self.bm.file_blocks, MAX_METADATA_BLOCKS)

    def resize_metadata(self, nr_blocks: int | None = None) -> int:
        """Grow the metadata space map onto a grown metadata file
        (``dm_pool_resize_metadata_dev``); *nr_blocks* defaults to the
        file's size, capped at the kernel's maximum.  Returns the new size in
        blocks.  Raises :class:`InvalidArgument` if the file is smaller than
        the space map."""
        self._mutating()
        self.bm.refresh_size()
        if nr_blocks is None:
            nr_blocks = self.bm.file_blocks
        nr_blocks = min(nr_blocks, MAX_METADATA_BLOCKS)
        old = self.metadata_sm.nr_blocks
        if nr_blocks < old:
            raise InvalidArgument(f"metadata device ({nr_blocks} blocks) too small: "
                                  f"expected {old}")
        if nr_blocks > self.bm.file_blocks:
            raise InvalidArgument(f"metadata file holds {self.bm.file_blocks} blocks, "
                                  f"not {nr_blocks}")
        if nr_blocks > old:
            self.bm.nr_blocks = nr_blocks
            self.metadata_sm.extend(nr_blocks - old)
        return nr_blocks

    def resize_data(self, nr_blocks: int) -> None:
        """Grow the data space map (``dm_pool_resize_data_dev``)."""
        self._mutating()
        old = self.data_sm.nr_blocks
        if nr_blocks < old:
            raise InvalidArgument(f"cannot reduce the data space from {old} to {nr_blocks} blocks")
        if nr_blocks > old:
            self.data_sm.extend(nr_blocks - old)
