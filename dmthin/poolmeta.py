"""What the facade reads from a pool's metadata itself: whether a file or
device holds a pool (never format over one), the superblock of a pool to
adopt, and the thin device ids of a metadata snapshot (the kernel backend
cannot decode metadata; :class:`dmthin.Pool` hands it :func:`read_thin_ids`).

Read-only: nothing here writes a byte.
"""
from __future__ import annotations

import os

from .errors import MetadataError
from .thin.format import MAGIC_OFFSET, THIN_SUPERBLOCK_MAGIC, Superblock, superblock_magic
from .thin.reader import open_block_manager, read_details
from .thin.superblock import read_superblock


def holds_thin_magic(fd: int) -> bool:
    """True if the first block of the open file or device *fd* carries the
    thin superblock magic (valid or damaged: either way someone's pool)."""
    raw = os.pread(fd, MAGIC_OFFSET + 8, 0)
    if len(raw) < MAGIC_OFFSET + 8:
        return False
    return bool(superblock_magic(raw) == THIN_SUPERBLOCK_MAGIC)


def read_pool_superblock(path: str | os.PathLike[str]) -> Superblock:
    """The validated superblock of the metadata at *path*.  Raises
    :class:`~dmthin.errors.MetadataError` (unformatted, bad magic or
    checksum) and ``OSError``."""
    bm = open_block_manager(path, cache_blocks=16)
    try:
        return read_superblock(bm)
    finally:
        bm.close()


def read_thin_ids(path: str, superblock: int = 0) -> list[int]:
    """Ids of the thin devices in the metadata at *path* (a file, or the
    metadata device of a live pool), read from the superblock at block
    *superblock*: 0 for the live one, a held root for a metadata snapshot.
    Raises :class:`~dmthin.errors.MetadataError` on damage."""
    bm = open_block_manager(path, cache_blocks=64)
    try:
        sb = read_superblock(bm, superblock)
        return sorted(read_details(bm, sb.device_details_root))
    except MetadataError as err:
        raise MetadataError(f"{path}: cannot list the thin devices: {err}") from None
    finally:
        bm.close()
