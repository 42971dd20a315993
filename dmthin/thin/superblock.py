"""The thin superblock (block 0): ``struct thin_disk_superblock``.

364 bytes, the rest of the block zero.  Offsets verified against
thin_restore output (dm-thin-format.md §2).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from ..errors import BadSuperblock
from ..pdata.checksum import BLOCK_SIZE, SUPERBLOCK

SUPERBLOCK_LOCATION = 0
THIN_SUPERBLOCK_MAGIC = 27022010
THIN_VERSION = 2
THIN_MIN_VERSION = 1
NEEDS_CHECK_FLAG = 1
SPACE_MAP_ROOT_SIZE = 128
INCOMPAT_SUPP = 0
COMPAT_RO_SUPP = 0

# csum flags blocknr uuid magic version time trans_id held_root
_FIXED = struct.Struct("<IIQ16sQIIQQ")            # 64 bytes
_TAIL = struct.Struct("<QQIIQIII")                # 320..364
_SM_ROOT = struct.Struct("<QQQQ")                 # nr_blocks nr_allocated bitmap_root ref_count_root


@dataclass(frozen=True)
class SMRoot:
    """``struct disk_sm_root``."""
    nr_blocks: int = 0
    nr_allocated: int = 0
    bitmap_root: int = 0
    ref_count_root: int = 0

    def pack(self) -> bytes:
        return _SM_ROOT.pack(self.nr_blocks, self.nr_allocated, self.bitmap_root,
                             self.ref_count_root).ljust(SPACE_MAP_ROOT_SIZE, b"\0")

    @classmethod
    def unpack(cls, raw) -> "SMRoot":
        return cls(*_SM_ROOT.unpack_from(raw, 0))


@dataclass(frozen=True)
class Superblock:
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
    data_block_size: int = 0          # sectors
    metadata_block_size: int = 8      # sectors
    metadata_nr_blocks: int = 0
    compat_flags: int = 0
    compat_ro_flags: int = 0
    incompat_flags: int = 0

    @property
    def needs_check(self) -> bool:
        return bool(self.flags & NEEDS_CHECK_FLAG)

    @property
    def data_sm(self) -> SMRoot:
        return SMRoot.unpack(self.data_sm_root)

    @property
    def metadata_sm(self) -> SMRoot:
        return SMRoot.unpack(self.metadata_sm_root)

    def replace(self, **kw) -> "Superblock":
        return replace(self, **kw)

    def pack_into(self, buf: bytearray) -> None:
        """Write the superblock fields into *buf* (csum/blocknr: the validator)."""
        buf[4:BLOCK_SIZE] = bytes(BLOCK_SIZE - 4)
        _FIXED.pack_into(buf, 0, 0, self.flags, SUPERBLOCK_LOCATION, self.uuid, self.magic,
                         self.version, self.time, self.trans_id, self.held_root)
        buf[64:192] = self.data_sm_root
        buf[192:320] = self.metadata_sm_root
        _TAIL.pack_into(buf, 320, self.data_mapping_root, self.device_details_root,
                        self.data_block_size, self.metadata_block_size,
                        self.metadata_nr_blocks, self.compat_flags, self.compat_ro_flags,
                        self.incompat_flags)

    @classmethod
    def unpack(cls, buf) -> "Superblock":
        (_csum, flags, _nr, uuid, magic, version, time, trans_id,
         held_root) = _FIXED.unpack_from(buf, 0)
        (mroot, droot, dbs, mbs, mnr, compat, compat_ro, incompat) = _TAIL.unpack_from(buf, 320)
        return cls(flags, uuid, magic, version, time, trans_id, held_root,
                   bytes(buf[64:192]), bytes(buf[192:320]), mroot, droot, dbs, mbs, mnr,
                   compat, compat_ro, incompat)


def read_superblock(bm, location: int = SUPERBLOCK_LOCATION, *,
                    check_features: bool = True) -> Superblock:
    """Read and validate the superblock at *location* (0, or a held
    metadata-snapshot copy).  Raises :class:`BadSuperblock` with a clear
    reason, or the checksum/blocknr errors."""
    buf = bm.read(location, None)
    if not any(buf):
        raise BadSuperblock(f"superblock at block {location} is all zeroes: "
                            "this metadata has not been formatted", location)
    magic = struct.unpack_from("<Q", buf, 32)[0]
    if magic != THIN_SUPERBLOCK_MAGIC:
        raise BadSuperblock(f"bad superblock magic {magic} at block {location} (expected "
                            f"{THIN_SUPERBLOCK_MAGIC}): not thin-pool metadata", location)
    SUPERBLOCK.check(buf, location)
    sb = Superblock.unpack(buf)
    if check_features:
        if sb.incompat_flags & ~INCOMPAT_SUPP:
            raise BadSuperblock(f"metadata has unsupported incompatible feature flags "
                                f"{sb.incompat_flags:#x}: refusing to open it", location)
    if sb.version < THIN_MIN_VERSION or sb.version > THIN_VERSION:
        raise BadSuperblock(f"unsupported metadata version {sb.version} "
                            f"(supported {THIN_MIN_VERSION}..{THIN_VERSION})", location)
    if sb.metadata_block_size != 8:
        raise BadSuperblock(f"metadata block size is {sb.metadata_block_size} sectors, "
                            "expected 8 (4 KiB)", location)
    return sb
