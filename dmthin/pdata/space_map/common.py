"""The on-disk space-map format shared by both space maps
(dm-space-map-common.c).

Counts are kept 2 bits per block in bitmap blocks (16320 entries each);
count 3 means "look in the overflow ref-count btree".  Bit order: within
each little-endian 64-bit word, entry *i* uses bits 2i (the HIGH bit of the
count) and 2i+1 (the LOW bit).  So the raw field ``(byte >> 2*(e%4)) & 3``
decodes 0->0, 2->1, 1->2, 3->3.

An index entry (16 bytes) names a bitmap block and keeps ``nr_free`` and the
``none_free_before`` search hint.  :class:`LowLevel` implements lookup,
find-free, inc/dec and extend over an index; its subclasses keep the index
in one block (metadata) or in a btree (data).
"""
from __future__ import annotations

import struct
from abc import ABC, abstractmethod

from ...errors import MetadataError, NoSpace
from ...units import ENTRIES_PER_BITMAP
from ..btree import insert as bt_insert
from ..btree import remove as bt_remove
from ..btree.spine import BTreeInfo, ValueType
from ..checksum import BITMAP, BLOCK_SIZE

BITMAP_HEADER = 16
INDEX_ENTRY = struct.Struct("<QII")     # blocknr nr_free none_free_before
REF_COUNT = struct.Struct("<I")

# raw 2-bit field -> count, and count -> raw field
FIELD_TO_COUNT = (0, 2, 1, 3)
COUNT_TO_FIELD = (0, 2, 1, 3)


def _make_free_table() -> bytes:
    """byte -> 1 if any of its four 2-bit fields is 0 (a free entry)."""
    return bytes(1 if any(((v >> (2 * i)) & 3) == 0 for i in range(4)) else 0
                 for v in range(256))


HAS_FREE = _make_free_table()


def bitmap_get(buf, e: int) -> int:
    """The count field (0..3) of entry *e* of a bitmap block."""
    return FIELD_TO_COUNT[(buf[BITMAP_HEADER + (e >> 2)] >> ((e & 3) << 1)) & 3]


def bitmap_set(buf: bytearray, e: int, count: int) -> None:
    i = BITMAP_HEADER + (e >> 2)
    shift = (e & 3) << 1
    buf[i] = (buf[i] & ~(3 << shift) & 0xFF) | (COUNT_TO_FIELD[count] << shift)


def bitmap_find_free(buf, begin: int, end: int) -> int | None:
    """First entry in [begin, end) with count 0, or None."""
    e = begin
    stop = min(end, (begin | 3) + 5)      # the cursor usually points at a free entry
    while e < stop:
        if not (buf[BITMAP_HEADER + (e >> 2)] >> ((e & 3) << 1)) & 3:
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
    first_byte = BITMAP_HEADER + (e >> 2)
    last_byte = BITMAP_HEADER + ((end + 3) >> 2)
    flags = bytes(buf[first_byte:last_byte]).translate(HAS_FREE)
    pos = flags.find(1)
    while pos >= 0:
        base = (first_byte + pos - BITMAP_HEADER) << 2
        for k in range(4):
            cand = base + k
            if cand >= end:
                return None
            if cand >= begin and bitmap_get(buf, cand) == 0:
                return cand
        pos = flags.find(1, pos + 1)
    return None


def decode_bitmap_counts(buf) -> bytes:
    """All 16320 counts (0..3) of a bitmap block, as a bytes object."""
    out = bytearray(ENTRIES_PER_BITMAP)
    data = memoryview(buf)[BITMAP_HEADER:BLOCK_SIZE]
    for shift, k in ((0, 0), (2, 1), (4, 2), (6, 3)):
        out[k::4] = bytes(data).translate(_FIELD_TABLES[shift])
    return bytes(out)


_FIELD_TABLES = {shift: bytes(FIELD_TO_COUNT[(v >> shift) & 3] for v in range(256))
                 for shift in (0, 2, 4, 6)}


def find_common_free_block(old_ll: "LowLevel", ll: "LowLevel", begin: int) -> int | None:
    """A block free in both the last committed state (*old_ll*) and the
    current one (*ll*), searching from *begin* to the end, then wrapping
    round to the start (``sm_ll_find_common_free_block``, called twice as
    both space maps do since Linux 5.13).  None if there is none."""
    for lo, hi in ((begin, ll.nr_blocks), (0, begin)):
        while True:
            b = ll.find_free_block(lo, hi)
            if b is None:
                break
            if b >= old_ll.nr_blocks or old_ll.lookup(b) == 0:
                return b
            lo = b + 1
    return None


class IndexEntry:
    """``struct disk_index_entry``."""

    __slots__ = ("blocknr", "nr_free", "none_free_before")

    def __init__(self, blocknr: int = 0, nr_free: int = 0, none_free_before: int = 0):
        self.blocknr = blocknr
        self.nr_free = nr_free
        self.none_free_before = none_free_before

    def copy(self) -> "IndexEntry":
        return IndexEntry(self.blocknr, self.nr_free, self.none_free_before)

    def pack(self) -> bytes:
        return INDEX_ENTRY.pack(self.blocknr, self.nr_free, self.none_free_before)

    @classmethod
    def unpack(cls, raw, offset: int = 0) -> "IndexEntry":
        return cls(*INDEX_ENTRY.unpack_from(raw, offset))

    def __repr__(self) -> str:
        return f"IndexEntry({self.blocknr}, free={self.nr_free}, nfb={self.none_free_before})"


def ref_count_info(tm) -> BTreeInfo:
    """The overflow tree: block -> le32 count (only counts >= 3)."""
    return BTreeInfo(tm, 1, ValueType(4))


class LowLevel(ABC):
    """``struct ll_disk``: counts over an index of bitmaps.

    Subclasses provide ``load_ie``, ``save_ie``, ``init_index``,
    ``max_entries`` and ``commit_index``.
    """

    entries_per_block = ENTRIES_PER_BITMAP

    def __init__(self, tm):
        self.tm = tm
        self.nr_blocks = 0
        self.nr_allocated = 0
        self.bitmap_root = 0
        self.ref_count_root = 0
        self.rc_info = ref_count_info(tm)

    # -- subclass hooks ------------------------------------------------------
    @abstractmethod
    def load_ie(self, index: int) -> IndexEntry:
        """A copy of index entry *index*."""

    def peek_ie(self, index: int) -> IndexEntry:
        """The index entry, not to be modified (no copy)."""
        return self.load_ie(index)

    @abstractmethod
    def save_ie(self, index: int, ie: IndexEntry) -> None:
        """Store index entry *index*."""

    @abstractmethod
    def max_entries(self) -> int:
        """The most bitmaps the index can hold."""

    @abstractmethod
    def commit(self) -> None:
        """Write the index (at the space map's commit)."""

    @abstractmethod
    def snapshot(self) -> "LowLevel":
        """A copy of this state, for lookups in the last committed one."""

    # -- reading ---------------------------------------------------------------
    def lookup_bitmap(self, b: int) -> int:
        index, bit = divmod(b, self.entries_per_block)
        buf = self.tm.bm.read(self.peek_ie(index).blocknr, BITMAP)
        return FIELD_TO_COUNT[(buf[BITMAP_HEADER + (bit >> 2)] >> ((bit & 3) << 1)) & 3]

    def lookup_big(self, b: int) -> int:
        raw = bt_insert.lookup(self.rc_info, self.ref_count_root, [b])
        if raw is None:
            raise MetadataError(f"space map: block {b} has count 3+ but no overflow entry")
        return REF_COUNT.unpack(raw)[0]

    def lookup(self, b: int) -> int:
        if b >= self.nr_blocks:
            raise MetadataError(f"space map lookup of block {b} beyond {self.nr_blocks} blocks")
        count = self.lookup_bitmap(b)
        return count if count != 3 else self.lookup_big(b)

    def find_free_block(self, begin: int, end: int) -> int | None:
        """``sm_ll_find_free_block``: first block with count 0 in [begin, end)."""
        epb = self.entries_per_block
        index_begin, begin_bit = divmod(begin, epb)
        index_end = -(-end // epb)
        end_bit = end - (index_end - 1) * epb if end else 0
        for i in range(index_begin, index_end):
            ie = self.peek_ie(i)
            if ie.nr_free:
                buf = self.tm.read(ie.blocknr, BITMAP)
                bit_end = end_bit if i == index_end - 1 else epb
                pos = bitmap_find_free(buf, max(begin_bit, ie.none_free_before), bit_end)
                if pos is not None:
                    return i * epb + pos
            begin_bit = 0
        return None

    # -- mutation ---------------------------------------------------------------------
    def _mutate(self, b: int, e: int, delta: int) -> int:
        """Add *delta* (+1/-1) to the counts of [b, e); return the change in
        the number of allocated blocks."""
        allocations = 0
        epb = self.entries_per_block
        while b < e:
            index, bit = divmod(b, epb)
            bit_end = min(bit + (e - b), epb)
            allocations += self._mutate_bitmap(index, bit, bit_end, b, delta)
            b += bit_end - bit
        return allocations

    def _mutate_bitmap(self, index: int, bit: int, bit_end: int, b: int, delta: int) -> int:
        tm = self.tm
        ie = self.load_ie(index)
        new_loc, buf, _inc = tm.shadow_block(ie.blocknr, BITMAP)
        ie.blocknr = new_loc
        allocations = 0
        for k in range(bit, bit_end):
            blk = b + (k - bit)
            old = bitmap_get(buf, k)
            if old == 3:
                old = self.lookup_big(blk)
            if delta < 0 and old == 0:
                raise MetadataError(f"unable to decrement the reference count of block {blk} "
                                    "below 0")
            new = old + delta
            if new <= 2:
                bitmap_set(buf, k, new)
                if old > 2:
                    self.ref_count_root, _ = bt_remove.remove(self.rc_info, self.ref_count_root,
                                                              [blk])
                    buf = tm.shadow_block(ie.blocknr, BITMAP)[1]
            else:
                bitmap_set(buf, k, 3)
                self.ref_count_root, _ = bt_insert.insert(self.rc_info, self.ref_count_root,
                                                          [blk], REF_COUNT.pack(new))
                # the btree work may have evicted or touched the bitmap: re-lock it
                buf = tm.shadow_block(ie.blocknr, BITMAP)[1]
            if new and not old:
                allocations += 1
                ie.nr_free -= 1
                if ie.none_free_before == k:
                    ie.none_free_before = k + 1
            elif old and not new:
                allocations -= 1
                ie.nr_free += 1
                ie.none_free_before = min(ie.none_free_before, k)
        self.nr_allocated += allocations
        self.save_ie(index, ie)
        return allocations

    def inc(self, b: int, e: int | None = None) -> int:
        return self._mutate(b, b + 1 if e is None else e, +1)

    def dec(self, b: int, e: int | None = None) -> int:
        return self._mutate(b, b + 1 if e is None else e, -1)

    def extend(self, extra_blocks: int) -> None:
        """``sm_ll_extend``: add bitmaps for *extra_blocks* more blocks."""
        epb = self.entries_per_block
        nr_blocks = self.nr_blocks + extra_blocks
        old_bitmaps = -(-self.nr_blocks // epb)
        bitmaps = -(-nr_blocks // epb)
        if bitmaps > self.max_entries():
            raise NoSpace(f"space map too large: {nr_blocks} blocks need {bitmaps} bitmaps, "
                          f"the maximum is {self.max_entries()}")
        self.nr_blocks = nr_blocks
        for i in range(old_bitmaps, bitmaps):
            b, _buf = self.tm.new_block(BITMAP)
            self.save_ie(i, IndexEntry(b, epb, 0))
