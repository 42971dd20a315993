"""Read-only decoding of the on-disk space maps, and comparison of their
reference counts with the counts a checker computed from the trees
(dm-space-map-common.{c,h}, dm-space-map-metadata.c, dm-space-map-disk.c).

* Bitmap blocks (BITMAP validator): a 16-byte header, then 2-bit entries,
  16320 per bitmap.  Entry *e* is in byte ``e // 4`` at bits ``2*(e % 4)``;
  the field decodes as 0 -> 0, 2 -> 1, 1 -> 2, 3 -> "3 or more: see the
  ref-count tree" (the kernel reads bit 2i as the high bit).
* The ref-count ("overflow") tree: key block -> ``le32`` count (value_size 4)
  for counts of 3 and more.
* Metadata sm: ``bitmap_root`` is one index block (INDEX validator) with up
  to 255 ``disk_index_entry`` (blocknr, nr_free, none_free_before) at 16.
* Data sm: ``bitmap_root`` is a btree of index entries (value_size 16) keyed
  0, 1, 2, ...

The codecs (bitmap decoding, index entries) are the engine's, in
:mod:`dmthin.pdata.space_map.common`.  Comparison streams one bitmap at a time against a
:class:`~dmthin.pdata.btree.check.RefCounter` and merges the ref-count tree
in key order, so memory stays bounded.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable, Iterator

from ...errors import MetadataError
from ...units import ENTRIES_PER_BITMAP
from ..btree.check import BTreeChecker, RefCounter
from ..btree.walk import iter_items
from ..checksum import BITMAP, INDEX
from .common import REF_COUNT, IndexEntry, decode_bitmap_counts

MAX_METADATA_BITMAPS = 255
INDEX_ENTRY_SIZE = 16
INDEX_ENTRIES_OFFSET = 16
REF_COUNT_VALUE_SIZE = 4
INDEX_VALUE_SIZE = 16

_CAP3 = bytes(min(c, 3) for c in range(256))


def nr_bitmaps(nr_blocks: int) -> int:
    """Bitmaps needed for *nr_blocks* entries."""
    return -(-nr_blocks // ENTRIES_PER_BITMAP)


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
    entries = [IndexEntry.unpack(buf, INDEX_ENTRIES_OFFSET + i * INDEX_ENTRY_SIZE)
               for i in range(n)]
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
    for _b, keys, values, _path in checker.walk(bitmap_root, INDEX_VALUE_SIZE,
                                                tree="data space map index",
                                                shareable=False):
        for k, v in zip(keys, values):
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
    return checker.walk_all(root, REF_COUNT_VALUE_SIZE, tree=f"{what} ref count tree",
                            shareable=False)


class CountProblem(enum.Enum):
    """The kind of a difference found by :func:`compare_counts`."""
    LEAKED = "leaked"            # on-disk > 0, computed 0 (non-fatal)
    WRONG = "wrong"              # both > 0 but different, or ref-count tree disagrees
    MISSING = "missing"          # on-disk 0, computed > 0 (in use but free)
    UNREADABLE = "unreadable"    # a bitmap block cannot be read


@dataclass
class CountReport:
    """The outcome of :func:`compare_counts`."""
    leaked: int = 0            # on-disk > 0, computed 0
    wrong: int = 0             # both > 0 but different
    missing: int = 0           # on-disk 0, computed > 0 (in use but free)
    unreadable_bitmaps: int = 0
    allocated: int = 0         # on-disk entries with count > 0

    @property
    def problems(self) -> int:
        return self.leaked + self.wrong + self.missing + self.unreadable_bitmaps


def compare_counts(bm, entries: list[IndexEntry], nr_blocks: int, ref_count_root: int,
                   computed: RefCounter, *, what: str,
                   problem: Callable[[CountProblem, str], None],
                   progress: Callable[[int], None] | None = None) -> CountReport:
    """Compare the on-disk counts of blocks ``0..nr_blocks-1`` with
    *computed*, calling *problem(kind, line)* for each difference (the
    caller caps the lines).  *what* is "metadata" or "data".  The ref-count tree must
    have been validated already (see :func:`count_ref_count_tree`).  Raises
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
        want = computed.small[base:base + n].translate(_CAP3)
        if disk != want:
            for j in range(n):
                d = disk[j]
                if d != want[j] and d != 3:
                    # (A bitmap count of 3 is compared exactly below.)
                    _differ(rep, problem, what, base + j, d, computed.get(base + j))
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
                    _differ(rep, problem, what, b, d, c)
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
            b: int, disk: int, computed: int) -> None:
    if computed == 0:
        rep.leaked += 1
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

    def __init__(self, it: Iterator):
        self._it = it
        self._head = None
        self._has = False

    def peek(self):
        if not self._has:
            self._head = next(self._it, None)
            self._has = True
        return self._head

    def __iter__(self):
        return self

    def __next__(self):
        item = self.peek()
        if item is None:
            raise StopIteration
        self._has = False
        return item

    def skip_below(self, key: int) -> list:
        """Consume and return the items with keys below *key*."""
        out = []
        while (item := self.peek()) is not None and item[0] < key:
            out.append(next(self))
        return out
