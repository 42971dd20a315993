"""The metadata space map (dm-space-map-metadata.c).

It manages the blocks it is itself stored in, so its own updates may need
new blocks: operations made while it is already working ("recursing") are
queued as block ops and applied when the outermost operation ends, as the
kernel's ring buffer does.  Its index is a single block of up to 255 index
entries, shadowed at each commit.  A new block must be free in both the last
committed state and the current one; the allocation cursor moves on past
each allocation and wraps around (Linux 5.13+: it is not reset at commit).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable

from ...errors import NoSpace
from ...units import MAX_METADATA_BITMAPS, MAX_METADATA_BLOCKS
from ..btree import ops as bt_ops
from ..checksum import INDEX
from ..transaction import TransactionManager
from .common import LowLevel, SpaceMapBase, find_common_free_block
from .format import METADATA_INDEX_OFFSET, IndexEntry, metadata_index_entry_offset

MAX_RECURSIVE_ALLOCATIONS = 1024


class MetadataLowLevel(LowLevel):
    """Index entries kept in one index block (``mi_le``)."""

    def __init__(self, tm: TransactionManager):
        super().__init__(tm)
        self.mi = [IndexEntry() for _ in range(MAX_METADATA_BITMAPS)]
        self.index_changed = False

    def snapshot(self) -> MetadataLowLevel:
        ll = MetadataLowLevel.__new__(MetadataLowLevel)
        ll.__dict__.update(self.__dict__)
        ll.mi = [ie.copy() for ie in self.mi]
        return ll

    def load_ie(self, index: int) -> IndexEntry:
        return self.mi[index].copy()

    def peek_ie(self, index: int) -> IndexEntry:
        return self.mi[index]

    def save_ie(self, index: int, ie: IndexEntry) -> None:
        self.index_changed = True
        self.mi[index] = ie.copy()

    def max_entries(self) -> int:
        return MAX_METADATA_BITMAPS

    def _pack_index(self, buf: bytearray) -> None:
        buf[METADATA_INDEX_OFFSET:] = b"".join(ie.pack() for ie in self.mi)

    def init_index(self) -> None:
        b, buf = self.tm.new_block(INDEX)
        self._pack_index(buf)
        self.bitmap_root = b

    def open_index(self) -> None:
        buf = self.tm.read(self.bitmap_root, INDEX)
        self.mi = [IndexEntry.unpack(buf, metadata_index_entry_offset(i))
                   for i in range(MAX_METADATA_BITMAPS)]

    def commit(self) -> None:
        if not self.index_changed:
            return
        b, buf, _inc = self.tm.shadow_block(self.bitmap_root, INDEX)
        self._pack_index(buf)
        self.bitmap_root = b
        self.index_changed = False


class MetadataSpaceMap(SpaceMapBase):
    """The metadata space map, with the kernel's recursion handling.  It
    attaches itself to its transaction manager (``tm.sm``)."""

    ll: MetadataLowLevel

    def __init__(self, tm: TransactionManager):
        super().__init__(tm)
        tm.sm = self
        self.ll = MetadataLowLevel(tm)
        self.old_ll = self.ll
        self.recursion_count = 0
        self.uncommitted: deque[tuple[int, int, int]] = deque()   # (delta, b, e)
        self.bootstrap = False
        self.threshold: tuple[int, Callable[[], None]] | None = None
        self._threshold_last: int | None = None

    # -- construction --------------------------------------------------------
    @classmethod
    def create(cls, tm: TransactionManager, nr_blocks: int, superblock: int = 0
               ) -> MetadataSpaceMap:
        """``dm_sm_metadata_create``: format a space map for *nr_blocks*."""
        sm = cls(tm)
        sm.begin = superblock + 1
        sm.bootstrap = True
        try:
            ll = sm.ll
            ll.init_index()
            ll.ref_count_root = bt_ops.empty(ll.rc_info)
            ll.extend(min(nr_blocks, MAX_METADATA_BLOCKS))
        finally:
            sm.bootstrap = False
        sm._add_bop(+1, superblock, sm.begin)
        sm._apply_bops()
        sm.commit()
        return sm

    def _opened(self) -> None:
        self.ll.open_index()
        self.old_ll = self.ll.snapshot()

    # -- block ops -------------------------------------------------------------------
    def _add_bop(self, delta: int, b: int, e: int) -> None:
        if len(self.uncommitted) >= MAX_RECURSIVE_ALLOCATIONS:
            raise NoSpace("metadata space map: too many recursive allocations")
        self.uncommitted.append((delta, b, e))

    def _apply_bops(self) -> None:
        while self.uncommitted:
            delta, b, e = self.uncommitted[0]
            if delta > 0:
                self.ll.inc(b, e)
            else:
                self.ll.dec(b, e)
            self.uncommitted.popleft()

    def _run(self, delta: int, b: int, e: int) -> None:
        if self.bootstrap or self.recursion_count:
            self._add_bop(delta, b, e)
            return
        self.recursion_count += 1
        try:
            if delta > 0:
                self.ll.inc(b, e)
            else:
                self.ll.dec(b, e)
        finally:
            if self.recursion_count == 1:
                self._apply_bops()
            self.recursion_count -= 1

    def _adjustment(self, b: int) -> int:
        adj = 0
        for delta, lo, hi in self.uncommitted:
            if lo <= b < hi:
                adj += delta
        return adj

    # -- the space map interface ---------------------------------------------------------
    def nr_free(self) -> int:
        if self.bootstrap:
            return self.ll.nr_blocks - self.begin
        return super().nr_free()

    def get_count(self, b: int) -> int:
        if self.bootstrap:
            return 1 if b < self.begin else 0
        return self.ll.lookup(b) + self._adjustment(b)

    def count_is_more_than_one(self, b: int) -> bool:
        if self.bootstrap:
            return False
        adj = self._adjustment(b)
        if adj > 1:
            return True
        rc = self.ll.lookup_bitmap(b)
        return True if rc == 3 else rc + adj > 1

    def inc(self, b: int, e: int | None = None) -> None:
        # Blocks incremented behind the transaction manager's back (e.g. the
        # superblock for a metadata snapshot) lose its count-one shortcut.
        self.tm.forget_unshared(b, b + 1 if e is None else e)
        self._run(+1, b, b + 1 if e is None else e)

    def dec(self, b: int, e: int | None = None) -> None:
        self._run(-1, b, b + 1 if e is None else e)

    def new_block(self) -> int:
        """Allocate a block free in both the old and the new state."""
        if self.bootstrap:
            # The kernel tests equality: while formatting, nr_blocks is still
            # 0 when the index and overflow-tree blocks are taken.
            if self.begin == self.ll.nr_blocks:
                raise NoSpace("out of metadata space")
            b = self.begin
            self.begin += 1
            return b
        found = find_common_free_block(self.old_ll, self.ll, self.begin)
        if found is None:
            raise NoSpace("out of metadata space")
        b = found
        self.begin = b + 1
        self._run(+1, b, b + 1)
        self.allocated_this_transaction += 1
        self._check_threshold()
        return b

    def _check_threshold(self) -> None:
        if self.threshold is None:
            return
        value, fn = self.threshold
        free = self.nr_free()
        below = free <= value
        already = self._threshold_last is not None and self._threshold_last <= value
        if below and not already:
            fn()
        self._threshold_last = free

    def register_threshold_callback(self, value: int, fn: Callable[[], None]) -> None:
        self.threshold = (value, fn)

    def extend(self, extra_blocks: int) -> None:
        """``sm_metadata_extend``: grow onto a larger metadata device."""
        ll = self.ll
        old_len = ll.nr_blocks
        self.begin = old_len
        self.bootstrap = True
        try:
            ll.extend(extra_blocks)
            while True:
                self._add_bop(+1, old_len, self.begin)
                old_len = self.begin
                self._apply_bops()
                ll.commit()
                if old_len == self.begin:
                    break
        finally:
            self.bootstrap = False
