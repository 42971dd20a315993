"""Reading and validating the thin superblock (block 0, or a metadata
snapshot's copy).  Its layout is in :mod:`dmthin.thin.format`."""
from __future__ import annotations

from ..errors import BadSuperblock
from ..pdata.block import BlockManager
from ..pdata.checksum import SUPERBLOCK
from .format import (
    INCOMPAT_SUPP,
    INCOMPLETE_RESTORE_MARK,
    METADATA_BLOCK_SECTORS,
    SUPERBLOCK_LOCATION,
    THIN_MIN_VERSION,
    THIN_SUPERBLOCK_MAGIC,
    THIN_VERSION,
    Superblock,
    superblock_magic,
)

__all__ = ["Superblock", "read_superblock"]


def read_superblock(bm: BlockManager, location: int = SUPERBLOCK_LOCATION, *,
                    check_features: bool = True) -> Superblock:
    """Read and validate the superblock at *location* (0, or a held
    metadata-snapshot copy).  Raises :class:`BadSuperblock` with a clear
    reason, or the checksum/blocknr errors."""
    buf = bm.read(location, None)
    if not any(buf):
        raise BadSuperblock(f"superblock at block {location} is all zeroes: "
                            "this metadata has not been formatted", location)
    magic = superblock_magic(buf)
    if magic != THIN_SUPERBLOCK_MAGIC and bytes(buf[:len(INCOMPLETE_RESTORE_MARK)]) == \
            INCOMPLETE_RESTORE_MARK:
        raise BadSuperblock(f"block {location} is marked 'incomplete restore': a restore into "
                            "this metadata was interrupted, so it holds neither the old nor "
                            "the new pool; run the restore (or thin_restore) again", location)
    if magic != THIN_SUPERBLOCK_MAGIC:
        raise BadSuperblock(f"bad superblock magic {magic} at block {location} (expected "
                            f"{THIN_SUPERBLOCK_MAGIC}): not thin-pool metadata", location)
    SUPERBLOCK.check(buf, location)
    sb = Superblock.unpack(buf)
    if check_features and sb.incompat_flags & ~INCOMPAT_SUPP:
        raise BadSuperblock(f"metadata has unsupported incompatible feature flags "
                            f"{sb.incompat_flags:#x}: refusing to open it", location)
    if sb.version < THIN_MIN_VERSION or sb.version > THIN_VERSION:
        raise BadSuperblock(f"unsupported metadata version {sb.version} "
                            f"(supported {THIN_MIN_VERSION}..{THIN_VERSION})", location)
    if sb.metadata_block_size != METADATA_BLOCK_SECTORS:
        raise BadSuperblock(f"metadata block size is {sb.metadata_block_size} sectors, "
                            f"expected {METADATA_BLOCK_SECTORS} (4 KiB)", location)
    return sb
