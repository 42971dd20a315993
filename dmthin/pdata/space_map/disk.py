"""The data space map (dm-space-map-disk.c).

Index entries live in a btree (key: bitmap index, value: 16-byte index
entry).  Like the kernel (5.15+), changed entries are cached and written to
the btree at commit.  Allocation is linear from a cursor that moves past each
allocated block and wraps around; a block must be free in both the last
committed state and the current one, so a block freed in this transaction is
not reused before commit.
"""
from __future__ import annotations

from ...errors import MetadataError, NoSpace
from ..btree import ops as bt_ops
from ..btree.spine import BTreeInfo, ValueType
from ..transaction import TransactionManager
from .common import LowLevel, SpaceMapBase, find_common_free_block
from .format import INDEX_ENTRY_SIZE, IndexEntry


def index_info(tm: TransactionManager) -> BTreeInfo:
    """The data space map's index: bitmap number -> index entry."""
    return BTreeInfo(tm, 1, ValueType(INDEX_ENTRY_SIZE))


class DiskLowLevel(LowLevel):
    """Index entries in a btree, with a write-back cache flushed at commit."""

    def __init__(self, tm: TransactionManager):
        super().__init__(tm)
        self.ie_info = index_info(tm)
        self._ie_cache: dict[int, IndexEntry] = {}
        self._dirty: set[int] = set()

    def snapshot(self) -> DiskLowLevel:
        ll = DiskLowLevel.__new__(DiskLowLevel)
        ll.__dict__.update(self.__dict__)
        ll._ie_cache = {i: ie.copy() for i, ie in self._ie_cache.items()}
        ll._dirty = set()
        return ll

    def load_ie(self, index: int) -> IndexEntry:
        ie = self._ie_cache.get(index)
        if ie is None:
            raw = bt_ops.lookup(self.ie_info, self.bitmap_root, [index])
            if raw is None:
                raise MetadataError(f"data space map: no index entry for bitmap {index}")
            ie = IndexEntry.unpack(raw)
            if len(self._ie_cache) > 4096:
                self._flush_clean()
            self._ie_cache[index] = ie
        return ie.copy()

    def peek_ie(self, index: int) -> IndexEntry:
        ie = self._ie_cache.get(index)
        return ie if ie is not None else self.load_ie(index)

    def _flush_clean(self) -> None:
        for i in [i for i in self._ie_cache if i not in self._dirty]:
            del self._ie_cache[i]

    def save_ie(self, index: int, ie: IndexEntry) -> None:
        self._ie_cache[index] = ie.copy()
        self._dirty.add(index)

    def max_entries(self) -> int:
        return 1 << 62

    def init_index(self) -> None:
        self.bitmap_root = bt_ops.empty(self.ie_info)

    def commit(self) -> None:
        for i in sorted(self._dirty):
            self.bitmap_root, _ = bt_ops.insert(self.ie_info, self.bitmap_root, [i],
                                                self._ie_cache[i].pack())
        self._dirty.clear()


class DiskSpaceMap(SpaceMapBase):
    """The data space map."""

    ll: DiskLowLevel

    def __init__(self, tm: TransactionManager):
        super().__init__(tm)
        self.ll = DiskLowLevel(tm)
        self.old_ll = self.ll.snapshot()

    @classmethod
    def create(cls, tm: TransactionManager, nr_blocks: int) -> DiskSpaceMap:
        """``dm_sm_disk_create``."""
        sm = cls(tm)
        ll = sm.ll
        ll.init_index()
        ll.ref_count_root = bt_ops.empty(ll.rc_info)
        ll.extend(nr_blocks)
        sm.commit()
        return sm

    def _opened(self) -> None:
        self.commit()

    def get_count(self, b: int) -> int:
        return self.ll.lookup(b)

    def count_is_more_than_one(self, b: int) -> bool:
        return self.get_count(b) > 1

    def inc(self, b: int, e: int | None = None) -> None:
        self.allocated_this_transaction += self.ll.inc(b, e)

    def dec(self, b: int, e: int | None = None) -> None:
        self.allocated_this_transaction += self.ll.dec(b, e)

    def new_block(self) -> int:
        """Allocate a data block (kernel order); :class:`NoSpace` when none."""
        b = find_common_free_block(self.old_ll, self.ll, self.begin)
        if b is None:
            raise NoSpace("out of data space")
        self.begin = b + 1
        self.inc(b)
        return b

    def extend(self, extra_blocks: int) -> None:
        self.ll.extend(extra_blocks)
