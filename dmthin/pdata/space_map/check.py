"""Read-only decoding of the on-disk space maps, and comparison of their
reference counts with the counts a checker computed from the trees
(dm-space-map-common.{c,h}, dm-space-map-metadata.c, dm-space-map-disk.c).

The records (bitmaps, index entries, the ref-count tree) are described and
decoded in :mod:`dmthin.pdata.space_map.format`.  Comparison streams one
bitmap at a time against a :class:`~dmthin.pdata.refcounts.RefCounts` and
merges the ref-count tree in key order, so memory stays bounded.
"""
from __future__ import annotations

import enum
from collections.abc import Callable, Iterator

from ...errors import MetadataError
from ...units import MAX_METADATA_BITMAPS
from ..block import BlockManager
from ..btree.check import BTreeChecker
from ..btree.node import Value
from ..btree.walk import iter_items
from ..checksum import BITMAP, INDEX
from ..refcounts import RefCounts
from .format import (
    CAP3,
    ENTRIES_PER_BITMAP,
    INDEX_ENTRY_SIZE,
    REF_COUNT,
    REF_COUNT_SIZE,
    IndexEntry,
    decode_bitmap_counts,
    metadata_index_entry_offset,
    nr_bitmaps,
)


def read_metadata_index(checker: BTreeChecker, bitmap_root: int,
                        nr_blocks: int) -> list[IndexEntry]:
    """Read the metadata space map's index block and count it and its
    bitmaps in *checker*.  Raises :class:`MetadataError` (bad index block,
    too many bitmaps, an entry outside the device)."""
    n = nr_bitmaps(nr_blocks)
    if n > MAX_METADATA_BITMAPS:
        raise MetadataError(f"metadata space map: {nr_blocks} blocks need {n} bitmaps, "
                            f"more than the index block holds ({MAX_METADATA_BITMAPS})")
    checker.count(bitmap_root, "metadata space map index block")
    buf = checker.bm.read(bitmap_root, INDEX)
    entries = [IndexEntry.unpack(buf, metadata_index_entry_offset(i)) for i in range(n)]
    for i, e in enumerate(entries):
        checker.count(e.blocknr, f"metadata space map index entry {i}")
    return entries


def read_data_index(checker: BTreeChecker, bitmap_root: int,
                    nr_blocks: int) -> list[IndexEntry]:
    """Walk the data space map's index btree (value_size 16), counting its
    nodes and the bitmaps in *checker*.  Raises :class:`MetadataError`
    (including btree :class:`~dmthin.pdata.btree.check.NodeError`)."""
    n = nr_bitmaps(nr_blocks)
    entries: list[IndexEntry] = []
    for _b, keys, values, _path in checker.walk(bitmap_root, INDEX_ENTRY_SIZE,
                                                tree="data space map index",
                                                shareable=False):
        for k, v in zip(keys, values, strict=True):
            if k != len(entries):
                raise MetadataError(f"data space map index: entry for bitmap {k} where "
                                    f"bitmap {len(entries)} was expected")
            entries.append(IndexEntry.unpack(v))
    if len(entries) != n:
        raise MetadataError(f"data space map index has {len(entries)} bitmaps, expected "
                            f"{n} for {nr_blocks} blocks")
    for i, e in enumerate(entries):
        checker.count(e.blocknr, f"data space map index entry {i}")
    return entries


def count_ref_count_tree(checker: BTreeChecker, root: int, what: str) -> int:
    """Walk a ref-count tree (value_size 4) for its checks and node counts;
    return its number of entries.  Raises :class:`MetadataError`."""
    return checker.walk_all(root, REF_COUNT_SIZE, tree=f"{what} ref count tree",
                            shareable=False)


class CountProblem(enum.Enum):
    """The kind of a difference found by :func:`compare_counts`."""
    LEAKED = "leaked"            # on-disk > 0, computed 0 (non-fatal)
    WRONG = "wrong"              # both > 0 but different, or ref-count tree disagrees
    MISSING = "missing"          # on-disk 0, computed > 0 (in use but free)
    UNREADABLE = "unreadable"    # a bitmap block cannot be read


class CountReport:
    """The outcome of :func:`compare_counts`: blocks ``leaked`` (on-disk > 0,
    computed 0), ``wrong`` (both > 0 but different), ``missing`` (on-disk 0,
    computed > 0: in use but free), ``unreadable_bitmaps``, and the on-disk
    entries with a count above 0 (``allocated``)."""

    def __init__(self) -> None:
        self.leaked = 0
        self.wrong = 0
        self.missing = 0
        self.unreadable_bitmaps = 0
        self.allocated = 0

    @property
    def problems(self) -> int:
        return self.leaked + self.wrong + self.missing + self.unreadable_bitmaps


def compare_counts(bm: BlockManager, entries: list[IndexEntry], nr_blocks: int, ref_count_root: int,
                   computed: RefCounts, *, what: str,
                   problem: Callable[[CountProblem, str], None],
                   progress: Callable[[int], None] | None = None,
                   on_leak: Callable[[int], None] | None = None) -> CountReport:
    """Compare the on-disk counts of blocks ``0..nr_blocks-1`` with
    *computed*, calling *problem(kind, line)* for each difference (the
    caller caps the lines) and *on_leak(block)* for each leaked block.
    *what* is "metadata" or "data".  The ref-count tree must have been
    validated already (see :func:`count_ref_count_tree`).  Raises
    :class:`MetadataError` only if the ref-count tree cannot be read."""
    rep = CountReport()
    overflow = _peekable(iter_items(bm, ref_count_root))
    for i, entry in enumerate(entries):
        base = i * ENTRIES_PER_BITMAP
        n = min(ENTRIES_PER_BITMAP, nr_blocks - base)
        if n <= 0:
            break
        try:
            disk = decode_bitmap_counts(bm.read(entry.blocknr, BITMAP))
        except MetadataError as e:
            rep.unreadable_bitmaps += 1
            problem(CountProblem.UNREADABLE,
                    f"{what} space map: bitmap {i} (block {entry.blocknr}) is unreadable: {e}")
            overflow.skip_below(base + n)
            if progress:
                progress(n)
            continue
        disk = disk[:n]
        rep.allocated += n - disk.count(0)
        chunk = computed.bitmap(i)
        want = bytes(n) if chunk is None else chunk[:n].translate(CAP3)
        if disk != want:
            for j in range(n):
                d = disk[j]
                if d != want[j] and d != 3:
                    # (A bitmap count of 3 is compared exactly below.)
                    _differ(rep, problem, what, base + j, d, computed.get(base + j), on_leak)
        # Counts of 3 and more: merge with the ref-count tree.
        pos = disk.find(3)
        while pos >= 0:
            b = base + pos
            for k, _v in overflow.skip_below(b):
                rep.wrong += 1
                problem(CountProblem.WRONG,
                        f"{what} space map: ref count tree has an entry for block {k} "
                        "whose bitmap count is below 3")
            item = overflow.peek()
            c = computed.get(b)
            if item is not None and item[0] == b:
                next(overflow)
                d = REF_COUNT.unpack(item[1])[0]
                if d != c:
                    _differ(rep, problem, what, b, d, c, on_leak)
            else:
                rep.wrong += 1
                problem(CountProblem.WRONG,
                        f"{what} space map: block {b} has bitmap count 3+ but no entry in "
                        f"the ref count tree (expected count {c})")
            pos = disk.find(3, pos + 1)
        if progress:
            progress(n)
    for k, _v in overflow.skip_below(1 << 64):
        if k < nr_blocks:
            rep.wrong += 1
            problem(CountProblem.WRONG,
                    f"{what} space map: ref count tree has an entry for block {k} whose "
                    "bitmap count is below 3")
    return rep


def _differ(rep: CountReport, problem: Callable[[CountProblem, str], None], what: str,
            b: int, disk: int, computed: int,
            on_leak: Callable[[int], None] | None = None) -> None:
    if computed == 0:
        rep.leaked += 1
        if on_leak is not None:
            on_leak(b)
        problem(CountProblem.LEAKED, f"{what} space map: block {b} is leaked: count {disk} "
                "on disk but nothing references it")
    elif disk == 0:
        rep.missing += 1
        problem(CountProblem.MISSING, f"{what} space map: block {b} is in use ({computed} "
                "references) but marked free")
    else:
        rep.wrong += 1
        problem(CountProblem.WRONG,
                f"{what} space map: block {b} has count {disk} on disk, expected {computed}")


class _peekable:
    """An iterator of ``(key, value)`` with peek and skip."""

    def __init__(self, it: Iterator[tuple[int, Value]]):
        self._it = it
        self._head: tuple[int, Value] | None = None
        self._has = False

    def peek(self) -> tuple[int, Value] | None:
        if not self._has:
            self._head = next(self._it, None)
            self._has = True
        return self._head

    def __iter__(self) -> _peekable:
        return self

    def __next__(self) -> tuple[int, Value]:
        item = self.peek()
        if item is None:
            raise StopIteration
        self._has = False
        return item

    def skip_below(self, key: int) -> list[tuple[int, Value]]:
        """Consume and return the items with keys below *key*."""
        out: list[tuple[int, Value]] = []
        while (item := self.peek()) is not None and item[0] < key:
            out.append(next(self))
        return out
