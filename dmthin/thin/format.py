"""Thin provisioning's on-disk records (dm-thin-metadata.c), in one place.

- **block_time**: a mapping's value, ``le64 (data_block << 24) | time``: 40
  bits of data block, 24 bits of the pool's time (its snapshot count) when
  the block was mapped.
- **device details** (``struct disk_device_details``, 24 bytes): the value
  of the details tree, keyed by thin device id.
- **superblock** (``struct thin_disk_superblock``, block 0): 364 bytes, the
  rest of the block zero; it holds the two space-map roots
  (:class:`~dmthin.pdata.space_map.format.SpaceMapRoot`, 128 bytes
  reserved each).  Offsets verified against thin_restore output.

The trees (``__setup_btree_details``): the mapping tree has two levels,
dev_id -> subtree root, then vblock -> block_time; the details tree has one,
dev_id -> device details.
"""
from __future__ import annotations

import struct
from typing import Any, NamedTuple

from ..pdata.checksum import BLOCK_SIZE
from ..pdata.space_map.format import SpaceMapRoot
from ..units import MAX_DATA_BLOCK as MAX_DATA_BLOCK
from ..units import MAX_DATA_BLOCKS as MAX_DATA_BLOCKS
from ..units import METADATA_BLOCK_SECTORS as METADATA_BLOCK_SECTORS

# -- block_time ----------------------------------------------------------------------
TIME_BITS = 24
TIME_MASK = (1 << TIME_BITS) - 1
MAX_TIME = TIME_MASK
MAPPING_VALUE_SIZE = 8
# The data block limits (units.MAX_DATA_BLOCKS, a count, and MAX_DATA_BLOCK,
# an index) are what the other 40 bits of a mapping can hold.
assert MAX_DATA_BLOCKS == 1 << (8 * MAPPING_VALUE_SIZE - TIME_BITS)


class BlockTime(NamedTuple):
    """A mapping's value, decoded.  Hot loops use :data:`TIME_BITS` and
    :data:`TIME_MASK` directly: ``v >> TIME_BITS``, ``v & TIME_MASK``, and a
    run of consecutive data blocks with one time steps by ``1 << TIME_BITS``."""
    data_block: int
    time: int

    def pack(self) -> int:
        return (self.data_block << TIME_BITS) | (self.time & TIME_MASK)

    @classmethod
    def unpack(cls, value: int) -> BlockTime:
        return cls(value >> TIME_BITS, value & TIME_MASK)


def pack_block_time(data_block: int, time: int) -> int:
    """``pack_block_time``: the mapping value of *data_block* at *time*."""
    return (data_block << TIME_BITS) | (time & TIME_MASK)


# -- device details -----------------------------------------------------------------------
_DETAILS = struct.Struct("<QQII")   # mapped_blocks transaction_id creation_time snapshotted_time


class DeviceDetails:
    """``struct disk_device_details``: one thin device's details (mutable: the
    engine updates them; a plain class, as the tools' start-up does not pay
    for :mod:`dataclasses`)."""

    __slots__ = ("mapped_blocks", "transaction_id", "creation_time", "snapshotted_time")

    SIZE = _DETAILS.size            # 24: the details tree's value size

    def __init__(self, mapped_blocks: int, transaction_id: int, creation_time: int,
                 snapshotted_time: int):
        self.mapped_blocks = mapped_blocks
        self.transaction_id = transaction_id
        self.creation_time = creation_time
        self.snapshotted_time = snapshotted_time

    def _fields(self) -> tuple[int, int, int, int]:
        return (self.mapped_blocks, self.transaction_id, self.creation_time,
                self.snapshotted_time)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DeviceDetails):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]   # mutable

    def __repr__(self) -> str:
        return (f"DeviceDetails(mapped_blocks={self.mapped_blocks}, "
                f"transaction_id={self.transaction_id}, creation_time={self.creation_time}, "
                f"snapshotted_time={self.snapshotted_time})")

    def pack(self) -> bytes:
        return _DETAILS.pack(*self._fields())

    @classmethod
    def unpack(cls, raw: bytes | bytearray | memoryview) -> DeviceDetails:
        """Raises ``struct.error`` unless *raw* is :attr:`SIZE` bytes."""
        return cls(*_DETAILS.unpack(raw))

    def copy(self) -> DeviceDetails:
        return DeviceDetails(*self._fields())

    def replace(self, **kw: int) -> DeviceDetails:
        """A copy with the fields *kw* changed."""
        d = self.copy()
        for k, v in kw.items():
            setattr(d, k, v)
        return d


# -- superblock ---------------------------------------------------------------------------
SUPERBLOCK_LOCATION = 0
MAX_SUPERBLOCK_TIME = (1 << 32) - 1             # le32 time
THIN_SUPERBLOCK_MAGIC = 27022010
THIN_VERSION = 2
THIN_MIN_VERSION = 1
NEEDS_CHECK_FLAG = 1
INCOMPAT_SUPP = 0
COMPAT_RO_SUPP = 0

SPACE_MAP_ROOT_SIZE = 128
MAGIC_OFFSET = 32
DATA_SM_ROOT = slice(64, 64 + SPACE_MAP_ROOT_SIZE)
METADATA_SM_ROOT = slice(DATA_SM_ROOT.stop, DATA_SM_ROOT.stop + SPACE_MAP_ROOT_SIZE)
SPACE_MAP_ROOTS = slice(DATA_SM_ROOT.start, METADATA_SM_ROOT.stop)     # both: 64..320

# csum flags blocknr uuid magic version time trans_id held_root
_FIXED = struct.Struct("<IIQ16sQIIQQ")            # 0..64
# data_mapping_root device_details_root data_block_size metadata_block_size
# metadata_nr_blocks compat_flags compat_ro_flags incompat_flags
_TAIL = struct.Struct("<QQIIQIII")                # 320..364
_TAIL_OFFSET = METADATA_SM_ROOT.stop
_MAGIC = struct.Struct("<Q")


#: what block 0 holds while a restore rewrites metadata in place (dmthin's
#: own mark, not the kernel's): not all zeroes, so no kernel formats over it,
#: and its magic field is 0, so no kernel or tool opens it
INCOMPLETE_RESTORE_MARK = b"dmthin: incomplete restore\n"
assert len(INCOMPLETE_RESTORE_MARK) <= MAGIC_OFFSET


def incomplete_restore_block() -> bytes:
    """The block 0 written before an in-place restore writes anything else."""
    return INCOMPLETE_RESTORE_MARK + bytes(BLOCK_SIZE - len(INCOMPLETE_RESTORE_MARK))


def superblock_magic(buf: bytes | bytearray) -> int:
    """The magic number field of a (would-be) superblock block."""
    magic: int = _MAGIC.unpack_from(buf, MAGIC_OFFSET)[0]
    return magic


def clear_space_map_roots(buf: bytearray) -> None:
    """Zero both space-map roots of a superblock (a metadata snapshot's copy
    does not publish them)."""
    buf[SPACE_MAP_ROOTS] = bytes(SPACE_MAP_ROOTS.stop - SPACE_MAP_ROOTS.start)


def pack_sm_root(root: SpaceMapRoot) -> bytes:
    """A space-map root as the 128 bytes the superblock reserves for it."""
    return root.pack().ljust(SPACE_MAP_ROOT_SIZE, b"\0")


class Superblock(NamedTuple):
    """``struct thin_disk_superblock`` (csum and blocknr are the validator's)."""
    flags: int = 0
    uuid: bytes = bytes(16)
    magic: int = THIN_SUPERBLOCK_MAGIC
    version: int = THIN_VERSION
    time: int = 0
    trans_id: int = 0
    held_root: int = 0
    data_sm_root: bytes = bytes(SPACE_MAP_ROOT_SIZE)
    metadata_sm_root: bytes = bytes(SPACE_MAP_ROOT_SIZE)
    data_mapping_root: int = 0
    device_details_root: int = 0
    data_block_size: int = 0          # in sectors (the kernel's field names)
    metadata_block_size: int = METADATA_BLOCK_SECTORS     # in sectors
    metadata_nr_blocks: int = 0
    compat_flags: int = 0
    compat_ro_flags: int = 0
    incompat_flags: int = 0

    @property
    def needs_check(self) -> bool:
        return bool(self.flags & NEEDS_CHECK_FLAG)

    @property
    def data_sm(self) -> SpaceMapRoot:
        return SpaceMapRoot.unpack(self.data_sm_root)

    @property
    def metadata_sm(self) -> SpaceMapRoot:
        return SpaceMapRoot.unpack(self.metadata_sm_root)

    def replace(self, **kw: Any) -> Superblock:
        return self._replace(**kw)

    def pack_into(self, buf: bytearray) -> None:
        """Write the superblock fields into *buf* (csum/blocknr: the validator)."""
        buf[4:BLOCK_SIZE] = bytes(BLOCK_SIZE - 4)
        _FIXED.pack_into(buf, 0, 0, self.flags, SUPERBLOCK_LOCATION, self.uuid, self.magic,
                         self.version, self.time, self.trans_id, self.held_root)
        buf[DATA_SM_ROOT] = self.data_sm_root
        buf[METADATA_SM_ROOT] = self.metadata_sm_root
        _TAIL.pack_into(buf, _TAIL_OFFSET, self.data_mapping_root, self.device_details_root,
                        self.data_block_size, self.metadata_block_size,
                        self.metadata_nr_blocks, self.compat_flags, self.compat_ro_flags,
                        self.incompat_flags)

    @classmethod
    def unpack(cls, buf: bytes | bytearray) -> Superblock:
        (_csum, flags, _nr, uuid, magic, version, time, trans_id,
         held_root) = _FIXED.unpack_from(buf, 0)
        (mroot, droot, dbs, mbs, mnr, compat, compat_ro,
         incompat) = _TAIL.unpack_from(buf, _TAIL_OFFSET)
        return cls(flags, uuid, magic, version, time, trans_id, held_root,
                   bytes(buf[DATA_SM_ROOT]), bytes(buf[METADATA_SM_ROOT]), mroot, droot, dbs,
                   mbs, mnr, compat, compat_ro, incompat)
