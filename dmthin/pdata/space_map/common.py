"""The space-map machinery both space maps share (dm-space-map-common.c).

:class:`LowLevel` implements lookup, find-free, inc/dec and extend over an
index of bitmaps (the records are in :mod:`.format`); its subclasses keep
the index in one block (metadata) or in a btree (data).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TypeVar

from ...errors import MetadataError, NoSpace
from ..btree import ops as bt_ops
from ..btree import remove as bt_remove
from ..btree.spine import BTreeInfo, ValueType
from ..checksum import BITMAP
from ..transaction import TransactionManager
from .format import (
    BITMAP_HEADER_SIZE,
    ENTRIES_PER_BITMAP,
    FIELD_TO_COUNT,
    REF_COUNT,
    REF_COUNT_SIZE,
    IndexEntry,
    SpaceMapRoot,
    bitmap_find_free,
    bitmap_get,
    bitmap_set,
    nr_bitmaps,
)


def find_common_free_block(old_ll: LowLevel, ll: LowLevel, begin: int) -> int | None:
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


def ref_count_info(tm: TransactionManager) -> BTreeInfo:
    """The overflow tree: block -> le32 count (only counts >= 3)."""
    return BTreeInfo(tm, 1, ValueType(REF_COUNT_SIZE))


class LowLevel(ABC):
    """``struct ll_disk``: counts over an index of bitmaps.

    Subclasses provide ``load_ie``, ``save_ie``, ``init_index``,
    ``max_entries`` and ``commit_index``.
    """

    entries_per_block = ENTRIES_PER_BITMAP

    def __init__(self, tm: TransactionManager):
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
    def snapshot(self) -> LowLevel:
        """A copy of this state, for lookups in the last committed one."""

    # -- reading ---------------------------------------------------------------
    def lookup_bitmap(self, b: int) -> int:
        index, bit = divmod(b, self.entries_per_block)
        buf = self.tm.bm.read(self.peek_ie(index).blocknr, BITMAP)
        return FIELD_TO_COUNT[(buf[BITMAP_HEADER_SIZE + (bit >> 2)] >> ((bit & 3) << 1)) & 3]

    def lookup_big(self, b: int) -> int:
        raw = bt_ops.lookup(self.rc_info, self.ref_count_root, [b])
        if raw is None:
            raise MetadataError(f"space map: block {b} has count 3+ but no overflow entry")
        count: int = REF_COUNT.unpack(raw)[0]
        return count

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
                self.ref_count_root, _ = bt_ops.insert(self.rc_info, self.ref_count_root,
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
        old_bitmaps = nr_bitmaps(self.nr_blocks)
        bitmaps = nr_bitmaps(nr_blocks)
        if bitmaps > self.max_entries():
            raise NoSpace(f"space map too large: {nr_blocks} blocks need {bitmaps} bitmaps, "
                          f"the maximum is {self.max_entries()}")
        self.nr_blocks = nr_blocks
        for i in range(old_bitmaps, bitmaps):
            b, _buf = self.tm.new_block(BITMAP)
            self.save_ie(i, IndexEntry(b, epb, 0))


_SM = TypeVar("_SM", bound="SpaceMapBase")


class SpaceMapBase:
    """The state both space maps keep: a :class:`LowLevel` and its copy as
    of the last commit, the allocation cursor and the count of blocks
    allocated in this transaction."""

    ll: LowLevel
    old_ll: LowLevel

    def __init__(self, tm: TransactionManager) -> None:
        self.tm = tm
        self.begin = 0
        self.allocated_this_transaction = 0

    @classmethod
    def open(cls: type[_SM], tm: TransactionManager, nr_blocks: int, nr_allocated: int,
             bitmap_root: int, ref_count_root: int) -> _SM:
        """Open the space map a superblock's space-map root describes
        (``dm_sm_disk_open``, ``dm_sm_metadata_open``)."""
        sm = cls(tm)
        ll = sm.ll
        ll.nr_blocks, ll.nr_allocated = nr_blocks, nr_allocated
        ll.bitmap_root, ll.ref_count_root = bitmap_root, ref_count_root
        sm._opened()
        return sm

    def _opened(self) -> None:
        """Finish :meth:`open` once the root is in place."""

    def root(self) -> SpaceMapRoot:
        """Where this space map lives, for the superblock."""
        ll = self.ll
        return SpaceMapRoot(ll.nr_blocks, ll.nr_allocated, ll.bitmap_root, ll.ref_count_root)

    @property
    def nr_blocks(self) -> int:
        return self.ll.nr_blocks

    def nr_free(self) -> int:
        old = self.old_ll
        return old.nr_blocks - old.nr_allocated - self.allocated_this_transaction

    def commit(self) -> None:
        self.ll.commit()
        self.old_ll = self.ll.snapshot()
        self.allocated_this_transaction = 0
