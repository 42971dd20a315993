"""Block checksums and block kinds (dm-block-manager.c, checksum.rs).

Every metadata block starts with ``le32 csum`` and carries its own location
as ``le64 blocknr`` at offset 8.  The checksum covers bytes 4..4095:
``crc32c(~0, block[4:]) ^ salt`` in the kernel's form, which is the standard
CRC-32C with its final inversion undone.
"""
from __future__ import annotations

import struct
from collections.abc import Callable

from ..errors import BlockNrMismatch, ChecksumError, MetadataError
from ..units import METADATA_BLOCK_SIZE
from .accel import ffi as _ffi
from .accel import lib as _lib

BLOCK_SIZE = METADATA_BLOCK_SIZE         # every metadata block

SUPERBLOCK_CSUM_XOR = 160774   # dm-thin-metadata.c
BTREE_CSUM_XOR = 121107        # dm-btree-spine.c
BITMAP_CSUM_XOR = 240779       # dm-space-map-common.c
INDEX_CSUM_XOR = 160478        # dm-space-map-common.c

_CSUM = struct.Struct("<I")
_BLOCKNR = struct.Struct("<Q")

#: what a block is read into or written from
Buffer = bytes | bytearray | memoryview

#: the standard CRC-32C of a buffer, and the kernel's form over a block's
#: bytes 4..4095 (no final inversion): the accelerator's, else the ``crc32c``
#: package's (imported only then: its import costs more than a tool's whole
#: run on small metadata)
_crc: Callable[[Buffer], int]
_block_crc: Callable[[Buffer], int]
if _lib is not None:
    def _crc(data: Buffer) -> int:
        return int(_lib.dm_crc32c(0xFFFFFFFF, _ffi.from_buffer(data), len(data))) ^ 0xFFFFFFFF

    def _block_crc(buf: Buffer) -> int:
        n = min(len(buf), BLOCK_SIZE) - 4
        return int(_lib.dm_crc32c(0xFFFFFFFF, _ffi.from_buffer(buf) + 4, max(n, 0)))
else:
    from crc32c import crc32c as _crc

    def _block_crc(buf: Buffer) -> int:
        return _crc(memoryview(buf)[4:BLOCK_SIZE]) ^ 0xFFFFFFFF


def block_checksum(buf: Buffer, salt: int) -> int:
    """The checksum the kernel stores at offset 0 for a block of this kind."""
    return _block_crc(buf) ^ salt


class Validator:
    """One kind of block: stamps ``blocknr`` and ``csum`` before a write and
    checks them after a read (the kernel's ``dm_block_validator``)."""

    def __init__(self, name: str, salt: int):
        self.name = name
        self.salt = salt

    def __repr__(self) -> str:
        return f"<Validator {self.name}>"

    def prepare_for_write(self, buf: bytearray | memoryview, blocknr: int) -> None:
        _BLOCKNR.pack_into(buf, 8, blocknr)
        _CSUM.pack_into(buf, 0, block_checksum(buf, self.salt))

    def check(self, buf: Buffer, blocknr: int) -> None:
        """Raise :class:`BlockNrMismatch` or :class:`ChecksumError`."""
        stored_nr = _BLOCKNR.unpack_from(buf, 8)[0]
        if stored_nr != blocknr:
            raise BlockNrMismatch(f"{self.name} block {blocknr}: blocknr field is {stored_nr} "
                                  "(block written at the wrong place or not a "
                                  f"{self.name} block)", blocknr)
        stored = _CSUM.unpack_from(buf, 0)[0]
        if stored != block_checksum(buf, self.salt):
            kind = block_kind(buf)
            what = f" (it is a {kind} block)" if kind and kind != self.name else ""
            raise ChecksumError(f"bad checksum in {self.name} block {blocknr}{what}", blocknr)


SUPERBLOCK = Validator("superblock", SUPERBLOCK_CSUM_XOR)
BTREE_NODE = Validator("btree node", BTREE_CSUM_XOR)
BITMAP = Validator("bitmap", BITMAP_CSUM_XOR)
INDEX = Validator("index", INDEX_CSUM_XOR)

_KINDS = {v.salt: v.name for v in (SUPERBLOCK, BTREE_NODE, BITMAP, INDEX)}


def block_kind(buf: Buffer) -> str | None:
    """Classify a block by ``stored ^ computed`` against the salts, as the
    tools do; None if no salt matches."""
    if len(buf) < BLOCK_SIZE:
        return None
    x = _CSUM.unpack_from(buf, 0)[0] ^ block_checksum(buf, 0)
    return _KINDS.get(x)


def check_crc32c() -> None:
    """Self-test of the CRC implementation (standard check value)."""
    if _crc(b"123456789") != 0xE3069283:
        raise MetadataError("crc32c implementation gives a wrong check value")
