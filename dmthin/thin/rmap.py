"""``thin_rmap``: which thin devices' blocks map each data block of some
regions of the data device.

Mappings are visited device by device, in virtual block order; those whose
data block lies in a region extend the current run while the device is the
same and both the virtual and the data block advance by one (thin_rmap
0.9.0's ``rmap_visitor``).  As in both 0.9.0 and 1.1.0, every btree node is
visited once: a leaf (or subtree) shared by several devices after a
snapshot is reported for the first device that has it, in device order.  The
runs are then ordered by their first data block with the algorithm 0.9.0
uses, libstdc++'s ``std::sort`` (introsort), which is not stable: runs
starting at the same data block (blocks shared by snapshots) come out in
exactly 0.9.0's order.  Output lines: ``data B..E -> thin(DEV) T..U`` (ends
exclusive).
"""
from __future__ import annotations

import bisect
from array import array
from collections.abc import Callable, MutableSequence, Sequence
from typing import Any, TextIO, TypeVar

from ..errors import MetadataError, UsageError
from ..pdata.block import BlockManager
from ..units import MAX_DATA_BLOCKS, parse_int
from .accel import ffi, lib
from .format import TIME_BITS
from .leaves import leaf_batches, leaf_items, node_set, top_level
from .reader import select_superblock

Run = tuple[int, int, int, int]          # data begin, data end, dev_id, thin begin
T = TypeVar("T")


def parse_region(text: str) -> tuple[int, int]:
    """``BEGIN..END`` (END exclusive) as a pair.  Raises :class:`UsageError`
    with thin_rmap's reasons."""
    begin, dots, end = text.partition("..")
    if not dots:
        raise UsageError(f"badly formed region (no dots): {text!r}")
    if not (begin.isascii() and begin.isdigit() and end.isascii() and end.isdigit()):
        raise UsageError(f"badly formed region (couldn't parse numbers): {text!r}")
    lo = parse_int(begin, "region begin", maximum=MAX_DATA_BLOCKS)
    hi = parse_int(end, "region end", maximum=MAX_DATA_BLOCKS)
    if hi <= lo:
        raise UsageError(f"badly formed region (end <= begin): {text!r}")
    return lo, hi


def _merge(regions: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Sorted, disjoint (begins, ends) covering *regions*."""
    begins: list[int] = []
    ends: list[int] = []
    for lo, hi in sorted(regions):
        if ends and lo <= ends[-1]:
            ends[-1] = max(ends[-1], hi)
        else:
            begins.append(lo)
            ends.append(hi)
    return begins, ends


def rmap_runs(bm: BlockManager, regions: Sequence[tuple[int, int]],
              accelerated: bool = True) -> list[Run]:
    """The runs of mappings into *regions*, in visiting order (device,
    then virtual block; *accelerated*: trees read by the accelerator's
    walker when it can).  Raises :class:`~dmthin.errors.MetadataError`."""
    begins, ends = _merge(regions)
    single = len(begins) == 1
    lo0, hi0 = begins[0], ends[0]
    runs: list[Run] = []
    append = runs.append
    sb = select_superblock(bm)
    seen = node_set(bm)
    for dev_id, root in top_level(bm, sb.data_mapping_root):
        cur: list[int] | None = None          # [data_begin, data_end, thin_begin]
        for keys, values in leaf_items(bm, root, seen, accelerated):
            for k, v in zip(keys, values, strict=True):
                d = v >> TIME_BITS
                if single:
                    if not lo0 <= d < hi0:
                        continue
                else:
                    i = bisect.bisect_right(begins, d) - 1
                    if i < 0 or d >= ends[i]:
                        continue
                if cur is not None:
                    if d == cur[1] and k == cur[2] + (cur[1] - cur[0]):
                        cur[1] = d + 1
                        continue
                    append((cur[0], cur[1], dev_id, cur[2]))
                cur = [d, d + 1, k]
        # The visitor's current run spans devices only in name: the next
        # device never continues it (the device differs), so end it here.
        if cur is not None:
            append((cur[0], cur[1], dev_id, cur[2]))
    return runs


def rmap(bm: BlockManager, regions: Sequence[tuple[int, int]], out: TextIO, *,
         accelerated: bool = True) -> None:
    """Write thin_rmap's lines for *regions* of the metadata behind *bm*.
    With *accelerated* (and :mod:`dmthin.thin.accel` built) the visiting,
    the sort (libstdc++'s own) and the lines run in C++; same bytes."""
    if lib is not None and accelerated:
        _rmap_accel(bm, regions, out)
        return
    runs = rmap_runs(bm, regions, accelerated=False)
    keys = [r[0] for r in runs]
    if len(set(keys)) == len(keys):
        runs.sort()                        # no ties: every sort gives this order
    else:
        libstdcxx_sort(runs, lambda a, b: a[0] < b[0])
    write = out.write
    for b, e, dev, t in runs:
        write(f"data {b}..{e} -> thin({dev}) {t}..{t + (e - b)}\n")


_LINES = 16384
_LEAF_RUNS = 256          # more than the runs a leaf (at most 254 mappings) ends


def _rmap_accel(bm: BlockManager, regions: Sequence[tuple[int, int]], out: TextIO) -> None:
    begins, ends = _merge(regions)
    cb, ce = ffi.new("uint64_t[]", begins), ffi.new("uint64_t[]", ends)
    state = ffi.new("uint64_t[4]")
    cap = 0
    buf: Any = None
    recs = array("Q")
    seen = node_set(bm)
    sb = select_superblock(bm)
    for dev, root in top_level(bm, sb.data_mapping_root):
        state[0] = 0
        for blocks, nb in leaf_batches(bm, root, seen):
            if _LEAF_RUNS * nb > cap:
                cap = _LEAF_RUNS * nb
                buf = ffi.new("uint64_t[]", 4 * cap)
            k = lib.dm_leaves_rmap(blocks, nb, cb, ce, len(begins), dev, state, buf, cap)
            if k < 0:
                raise MetadataError("a mapping leaf cannot be decoded")
            if k:
                recs.frombytes(ffi.buffer(buf, 32 * k))
        if state[0]:
            recs.extend((state[1], state[2], dev, state[3]))
    n = len(recs) // 4
    if not n:
        return
    order = ffi.new("uint32_t[]", n)
    lib.dm_sort_by_key(ffi.from_buffer("uint64_t[]", recs), order, n)
    text = ffi.new("char[]", 112 * _LINES)
    for off in range(0, n, _LINES):
        w = lib.dm_rmap_lines(ffi.from_buffer("uint64_t[]", recs), order + off,
                              min(_LINES, n - off), text, 112 * _LINES)
        out.write(ffi.buffer(text, w)[:].decode("ascii"))


# -- libstdc++'s std::sort, step for step --------------------------------------------------
_THRESHOLD = 16


def libstdcxx_sort(a: MutableSequence[T], less: Callable[[T, T], bool]) -> None:
    """Sort *a* in place exactly as libstdc++'s ``std::sort(first, last,
    comp)`` does (introsort: median-of-three quicksort down to 16 elements,
    heapsort past 2*log2(n) levels, then insertion sort), so that elements
    *less* does not order end up where it puts them."""
    n = len(a)
    if n > 1:
        _introsort_loop(a, 0, n, 2 * (n.bit_length() - 1), less)
        _final_insertion_sort(a, 0, n, less)


def _introsort_loop(a: MutableSequence[T], first: int, last: int, depth: int,
                    less: Callable[[T, T], bool]) -> None:
    while last - first > _THRESHOLD:
        if depth == 0:
            _heap_sort(a, first, last, less)
            return
        depth -= 1
        cut = _partition_pivot(a, first, last, less)
        _introsort_loop(a, cut, last, depth, less)
        last = cut


def _partition_pivot(a: MutableSequence[T], first: int, last: int,
                     less: Callable[[T, T], bool]) -> int:
    mid = first + (last - first) // 2
    x, y, z = first + 1, mid, last - 1
    if less(a[x], a[y]):
        if less(a[y], a[z]):
            m = y
        elif less(a[x], a[z]):
            m = z
        else:
            m = x
    elif less(a[x], a[z]):
        m = x
    elif less(a[y], a[z]):
        m = z
    else:
        m = y
    a[first], a[m] = a[m], a[first]
    pivot = a[first]
    lo, hi = first + 1, last
    while True:
        while less(a[lo], pivot):
            lo += 1
        hi -= 1
        while less(pivot, a[hi]):
            hi -= 1
        if lo >= hi:
            return lo
        a[lo], a[hi] = a[hi], a[lo]
        lo += 1


def _final_insertion_sort(a: MutableSequence[T], first: int, last: int,
                          less: Callable[[T, T], bool]) -> None:
    if last - first > _THRESHOLD:
        _insertion_sort(a, first, first + _THRESHOLD, less)
        for i in range(first + _THRESHOLD, last):
            _linear_insert(a, i, less)
    else:
        _insertion_sort(a, first, last, less)


def _insertion_sort(a: MutableSequence[T], first: int, last: int,
                    less: Callable[[T, T], bool]) -> None:
    for i in range(first + 1, last):
        if less(a[i], a[first]):
            val = a[i]
            a[first + 1:i + 1] = a[first:i]
            a[first] = val
        else:
            _linear_insert(a, i, less)


def _linear_insert(a: MutableSequence[T], i: int, less: Callable[[T, T], bool]) -> None:
    val = a[i]
    j = i - 1
    while less(val, a[j]):
        a[i] = a[j]
        i = j
        j -= 1
    a[i] = val


def _adjust_heap(a: MutableSequence[T], base: int, hole: int, n: int, val: T,
                 less: Callable[[T, T], bool]) -> None:
    top = hole
    child = hole
    while child < (n - 1) // 2:
        child = 2 * (child + 1)
        if less(a[base + child], a[base + child - 1]):
            child -= 1
        a[base + hole] = a[base + child]
        hole = child
    if n % 2 == 0 and child == (n - 2) // 2:
        child = 2 * (child + 1)
        a[base + hole] = a[base + child - 1]
        hole = child - 1
    parent = (hole - 1) // 2
    while hole > top and less(a[base + parent], val):
        a[base + hole] = a[base + parent]
        hole = parent
        parent = (hole - 1) // 2
    a[base + hole] = val


def _heap_sort(a: MutableSequence[T], first: int, last: int,
               less: Callable[[T, T], bool]) -> None:
    n = last - first
    if n >= 2:
        parent = (n - 2) // 2
        while True:
            _adjust_heap(a, first, parent, n, a[first + parent], less)
            if parent == 0:
                break
            parent -= 1
    while last - first > 1:
        last -= 1
        val = a[last]
        a[last] = a[first]
        _adjust_heap(a, first, 0, last - first, val, less)
