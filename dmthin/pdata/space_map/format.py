"""The space maps' on-disk records (dm-space-map-common.h), in one place.

- A **bitmap block** (BITMAP validator) has a 16-byte header (csum,
  not_used, blocknr), then 2-bit reference counts, 16320 of them
  (:data:`ENTRIES_PER_BITMAP`).  Entry *e* lives in byte ``e // 4`` at bits
  ``2 * (e % 4)`` and ``2 * (e % 4) + 1``; the kernel reads bit 2i as the
  HIGH bit of the count, so the raw field decodes 0 -> 0, 2 -> 1, 1 -> 2,
  3 -> "3 or more: see the ref-count tree".
- The **ref-count ("overflow") tree** maps a block to its ``le32`` count, for
  counts of 3 and more.
- An **index entry** (``struct disk_index_entry``, 16 bytes) names a bitmap
  block and keeps its ``nr_free`` and the ``none_free_before`` search hint.
  The metadata space map keeps up to 255 of them in one index block (INDEX
  validator) after a 16-byte header; the data space map keeps them in a
  btree keyed 0, 1, 2, ...
- A **space-map root** (``struct disk_sm_root``, 32 bytes) says where a space
  map lives; the thin superblock reserves 128 bytes for each of its two.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from ..checksum import BLOCK_SIZE

BITMAP_HEADER_SIZE = 16                                  # csum, not_used, blocknr
ENTRIES_PER_BYTE = 4
ENTRIES_PER_BITMAP = (BLOCK_SIZE - BITMAP_HEADER_SIZE) * ENTRIES_PER_BYTE   # 16320
COUNT_IN_TREE = 3                                        # the field value "look in the tree"

INDEX_ENTRY = struct.Struct("<QII")      # blocknr nr_free none_free_before
INDEX_ENTRY_SIZE = INDEX_ENTRY.size      # 16
METADATA_INDEX_OFFSET = 16               # index block: csum, padding, blocknr, then entries

REF_COUNT = struct.Struct("<I")          # the ref-count tree's values
REF_COUNT_SIZE = REF_COUNT.size          # 4

SM_ROOT = struct.Struct("<QQQQ")         # nr_blocks nr_allocated bitmap_root ref_count_root

# raw 2-bit field -> count, and count (0..3) -> raw field
FIELD_TO_COUNT = (0, 2, 1, 3)
COUNT_TO_FIELD = (0, 2, 1, 3)

# byte -> 1 if any of its four 2-bit fields is 0 (a free entry)
HAS_FREE = bytes(1 if any(((v >> (2 * i)) & 3) == 0 for i in range(4)) else 0
                 for v in range(256))
# a saturating count (0..255) -> its raw 2-bit field (3 for 3 and more)
_COUNT_TO_FIELD_TABLE = bytes([COUNT_TO_FIELD[min(c, 3)] for c in range(256)])
# a saturating count -> the count a bitmap can show (0..3)
CAP3 = bytes(min(c, 3) for c in range(256))
_FIELD_TABLES = tuple(bytes(FIELD_TO_COUNT[(v >> shift) & 3] for v in range(256))
                      for shift in (0, 2, 4, 6))


def nr_bitmaps(nr_blocks: int) -> int:
    """Bitmap blocks needed for *nr_blocks* entries."""
    return -(-nr_blocks // ENTRIES_PER_BITMAP)


# -- bitmap blocks -----------------------------------------------------------------
def bitmap_get(buf: bytes | bytearray | memoryview, e: int) -> int:
    """The count field (0..3) of entry *e* of a bitmap block."""
    return FIELD_TO_COUNT[(buf[BITMAP_HEADER_SIZE + (e >> 2)] >> ((e & 3) << 1)) & 3]


def bitmap_set(buf: bytearray, e: int, count: int) -> None:
    """Set entry *e* of a bitmap block to *count* (0..3)."""
    i = BITMAP_HEADER_SIZE + (e >> 2)
    shift = (e & 3) << 1
    buf[i] = (buf[i] & ~(3 << shift) & 0xFF) | (COUNT_TO_FIELD[count] << shift)


def bitmap_find_free(buf: bytes | bytearray, begin: int, end: int) -> int | None:
    """First entry in [begin, end) with count 0, or None."""
    e = begin
    stop = min(end, (begin | 3) + 5)      # the cursor usually points at a free entry
    while e < stop:
        if not (buf[BITMAP_HEADER_SIZE + (e >> 2)] >> ((e & 3) << 1)) & 3:
            return e
        e += 1
    if e >= end:
        return None
    while e < end and e & 3:
        if bitmap_get(buf, e) == 0:
            return e
        e += 1
    if e >= end:
        return None
    first_byte = BITMAP_HEADER_SIZE + (e >> 2)
    last_byte = BITMAP_HEADER_SIZE + ((end + 3) >> 2)
    flags = bytes(buf[first_byte:last_byte]).translate(HAS_FREE)
    pos = flags.find(1)
    while pos >= 0:
        base = (first_byte + pos - BITMAP_HEADER_SIZE) << 2
        for k in range(4):
            cand = base + k
            if cand >= end:
                return None
            if cand >= begin and bitmap_get(buf, cand) == 0:
                return cand
        pos = flags.find(1, pos + 1)
    return None


def decode_bitmap_counts(buf: bytes | bytearray) -> bytes:
    """All 16320 counts (0..3) of a bitmap block, one byte each."""
    out = bytearray(ENTRIES_PER_BITMAP)
    data = bytes(memoryview(buf)[BITMAP_HEADER_SIZE:BLOCK_SIZE])
    for k in range(ENTRIES_PER_BYTE):
        out[k::ENTRIES_PER_BYTE] = data.translate(_FIELD_TABLES[k])
    return bytes(out)


def encode_bitmap_counts(counts: bytes | bytearray) -> bytes:
    """Per-block counts (saturating bytes: 3 and more mean "in the tree"),
    at most 16320 of them, as the 2-bit fields of a bitmap block's body (one
    byte per 4 entries; the 16-byte header is not included)."""
    f = bytes(counts).translate(_COUNT_TO_FIELD_TABLE)
    f += bytes(-len(f) % ENTRIES_PER_BYTE)
    x = int.from_bytes(f, "little")
    z = x | (x >> 6) | (x >> 12) | (x >> 18)
    return z.to_bytes(len(f), "little")[0::ENTRIES_PER_BYTE]


def bitmap_all_ones(n: int) -> bytes:
    """The body of a bitmap whose first *n* entries have count 1 and the
    rest 0 (a metadata space map written in one go)."""
    full, rest = divmod(n, ENTRIES_PER_BYTE)
    out = bytes([COUNT_TO_FIELD[1] * 0b01010101]) * full
    if rest:
        out += bytes([sum(COUNT_TO_FIELD[1] << (2 * k) for k in range(rest))])
    return out


# -- index entries and roots ---------------------------------------------------------
class IndexEntry:
    """``struct disk_index_entry``."""

    __slots__ = ("blocknr", "nr_free", "none_free_before")

    def __init__(self, blocknr: int = 0, nr_free: int = 0, none_free_before: int = 0):
        self.blocknr = blocknr
        self.nr_free = nr_free
        self.none_free_before = none_free_before

    def copy(self) -> IndexEntry:
        return IndexEntry(self.blocknr, self.nr_free, self.none_free_before)

    def pack(self) -> bytes:
        return INDEX_ENTRY.pack(self.blocknr, self.nr_free, self.none_free_before)

    @classmethod
    def unpack(cls, raw: bytes | bytearray | memoryview, offset: int = 0) -> IndexEntry:
        return cls(*INDEX_ENTRY.unpack_from(raw, offset))

    def __repr__(self) -> str:
        return f"IndexEntry({self.blocknr}, free={self.nr_free}, nfb={self.none_free_before})"


def metadata_index_entry_offset(i: int) -> int:
    """Offset of entry *i* in the metadata space map's index block."""
    return METADATA_INDEX_OFFSET + i * INDEX_ENTRY_SIZE


class SpaceMapRoot(NamedTuple):
    """``struct disk_sm_root``: where a space map lives."""
    nr_blocks: int = 0
    nr_allocated: int = 0
    bitmap_root: int = 0
    ref_count_root: int = 0

    def pack(self) -> bytes:
        """The 32 bytes of the root."""
        return SM_ROOT.pack(*self)

    @classmethod
    def unpack(cls, raw: bytes | bytearray | memoryview, offset: int = 0) -> SpaceMapRoot:
        return cls(*SM_ROOT.unpack_from(raw, offset))
