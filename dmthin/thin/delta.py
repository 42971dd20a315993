"""``thin_delta``: what differs between two thin devices, as XML.

The mappings of each device are read as runs of consecutive virtual blocks
mapped to consecutive data blocks (the time is ignored), streamed leaf by
leaf; the two run streams are walked together and split wherever either
changes, giving ranges that are ``same`` (both map them to the same data
blocks), ``different``, ``left_only`` or ``right_only`` -- thin_delta
0.9.0's ``dump_diff``.  The plain form merges touching ranges of one kind
into ``<KIND begin=.. length=../>``; ``--verbose`` lists each range with its
data blocks inside ``<KIND>`` ... ``</KIND>``.  Output is byte-identical to
thin_delta 0.9.0, including the superblock line (``nr_data_blocks`` 0 and
the snapshot's own superblock with ``-m``).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TextIO

from ..errors import DeviceNotFound, MetadataError
from ..pdata.block import BlockManager
from ..pdata.btree.walk import lookup
from .accel import ffi, lib
from .format import TIME_BITS, Superblock
from .leaves import leaf_batches, leaf_blocks, leaf_items
from .reader import select_superblock

Run = tuple[int, int, int]            # virtual begin, data begin, length
SAME, DIFFERENT, LEFT_ONLY, RIGHT_ONLY = "same", "different", "left_only", "right_only"


def device_runs(bm: BlockManager, root: int, accelerated: bool = True) -> Iterator[Run]:
    """Runs of one device's mappings, in virtual block order (*accelerated*:
    the tree read by the accelerator's walker when it can)."""
    v0 = d0 = -1
    n = 0
    for keys, values in leaf_items(bm, root, accelerated=accelerated):
        for k, v in zip(keys, values, strict=True):
            d = v >> TIME_BITS
            if k == v0 + n and d == d0 + n:
                n += 1
                continue
            if n:
                yield v0, d0, n
            v0, d0, n = k, d, 1
    if n:
        yield v0, d0, n


def diff_runs(left: Iterator[Run], right: Iterator[Run]
              ) -> Iterator[tuple[str, int, int, int, int]]:
    """``(kind, vbegin, left_data, right_data, length)`` for each range
    where the two run streams agree or differ (0.9.0's ``dump_diff``; the
    data block of the absent side is -1)."""
    lm = next(left, None)
    rm = next(right, None)
    while lm is not None and rm is not None:
        lv, ld, ln = lm
        rv, rd, rn = rm
        if lv < rv:
            n = min(ln, rv - lv)
            yield LEFT_ONLY, lv, ld, -1, n
            lm = (lv + n, ld + n, ln - n) if n < ln else next(left, None)
        elif lv > rv:
            n = min(rn, lv - rv)
            yield RIGHT_ONLY, rv, -1, rd, n
            rm = (rv + n, rd + n, rn - n) if n < rn else next(right, None)
        else:
            n = min(ln, rn)
            yield (DIFFERENT if ld != rd else SAME), lv, ld, rd, n
            lm = (lv + n, ld + n, ln - n) if n < ln else next(left, None)
            rm = (rv + n, rd + n, rn - n) if n < rn else next(right, None)
    while lm is not None:
        yield LEFT_ONLY, lm[0], lm[1], -1, lm[2]
        lm = next(left, None)
    while rm is not None:
        yield RIGHT_ONLY, rm[0], -1, rm[1], rm[2]
        rm = next(right, None)


def _write_simple(out: TextIO, ranges: Iterator[tuple[str, int, int, int, int]]) -> None:
    kind, begin, end = None, 0, 0
    write = out.write
    for k, v, _ld, _rd, n in ranges:
        if k is kind and v == end:
            end += n
            continue
        if kind is not None:
            write(f'    <{kind} begin="{begin}" length="{end - begin}"/>\n')
        kind, begin, end = k, v, v + n
    if kind is not None:
        write(f'    <{kind} begin="{begin}" length="{end - begin}"/>\n')


def _write_verbose(out: TextIO, ranges: Iterator[tuple[str, int, int, int, int]]) -> None:
    kind = None
    write = out.write
    for k, v, ld, rd, n in ranges:
        if k is not kind:
            if kind is not None:
                write(f"    </{kind}>\n")
            write(f"    <{k}>\n")
            kind = k
        if k is DIFFERENT:
            write(f'      <range begin="{v}" left_data_begin="{ld}" right_data_begin="{rd}" '
                  f'length="{n}"/>\n')
        else:
            write(f'      <range begin="{v}" data_begin="{rd if k is RIGHT_ONLY else ld}" '
                  f'length="{n}"/>\n')
    if kind is not None:
        write(f"    </{kind}>\n")


def _root(bm: BlockManager, sb: Superblock, dev_id: int, which: str) -> int:
    root = lookup(bm, sb.data_mapping_root, dev_id)
    if root is None:
        raise DeviceNotFound(f"Unable to find mapping tree for {which} ({dev_id})")
    return int(root)


def delta(bm: BlockManager, dev1: int, dev2: int, out: TextIO, *, verbose: bool = False,
          metadata_snap: bool | int | None = None, accelerated: bool = True) -> None:
    """Write thin_delta's XML for devices *dev1* and *dev2* of the metadata
    behind *bm* to *out*.  *metadata_snap*: read the held metadata snapshot
    (True) or require it to be at that block.  Raises
    :class:`~dmthin.errors.DeviceNotFound` (a device is missing) and
    :class:`~dmthin.errors.MetadataError` (no snapshot, damage).  With
    *accelerated* (and :mod:`dmthin.thin.accel` built) the loops run in C++."""
    if metadata_snap is None or metadata_snap is False:
        sb = select_superblock(bm)
        nr_data = sb.data_sm.nr_blocks
    else:
        live = select_superblock(bm)
        if not live.held_root:
            raise MetadataError("no current metadata snap")
        if metadata_snap is not True and int(metadata_snap) != live.held_root:
            raise MetadataError("metadata snapshot does not match that in superblock")
        sb = select_superblock(bm, True)
        nr_data = 0                 # a snapshot's copy does not record the space maps
    root1, root2 = _root(bm, sb, dev1, "snap1"), _root(bm, sb, dev2, "snap2")
    # Both trees walked once before a line is written: damage is refused with
    # nothing on the output, as thin_delta 0.9.0 (which reads both whole
    # first) does, while the diff itself streams.
    for root in (root1, root2):
        for _leaf in leaf_blocks(bm, root, accelerated=accelerated):
            pass
    snap = f' metadata_snap="{sb.held_root}"' if sb.held_root else ""
    out.write(f'<superblock uuid="" time="{sb.time}" transaction="{sb.trans_id}" '
              f'data_block_size="{sb.data_block_size}" nr_data_blocks="{nr_data}"{snap}>\n'
              f'  <diff left="{dev1}" right="{dev2}">\n')
    if lib is not None and accelerated:
        _delta_accel(bm, root1, root2, out, verbose)
    else:
        ranges = diff_runs(device_runs(bm, root1, accelerated),
                           device_runs(bm, root2, accelerated))
        (_write_verbose if verbose else _write_simple)(out, ranges)
    out.write("  </diff>\n</superblock>\n")


_NEED_LEFT, _NEED_RIGHT, _OUT_FULL, _DONE = range(4)
_LEAF_RUNS = 256          # more than the runs a leaf (at most 254 mappings) ends
_OUT_BYTES = 1 << 20


class _Side:
    """One device's runs fed to the accelerator a leaf at a time."""

    def __init__(self, bm: BlockManager, root: int):
        self.leaves = leaf_batches(bm, root)
        self.state = ffi.new("uint64_t[3]")
        self.cap = _LEAF_RUNS
        self.buf: Any = ffi.new("uint64_t[]", 3 * self.cap)
        self.n = 0
        self.pos = ffi.new("size_t *")
        self.flushed = False

    def refill(self) -> bool:
        """Load the next runs; False when there are none left."""
        while True:
            got = next(self.leaves, None)
            if got is None:
                if self.flushed or not self.state[2]:
                    return False
                self.buf[0:3] = [self.state[0], self.state[1], self.state[2]]
                self.n, self.flushed = 1, True
                self.pos[0] = 0
                return True
            blocks, n = got
            if _LEAF_RUNS * n > self.cap:
                self.cap = _LEAF_RUNS * n
                self.buf = ffi.new("uint64_t[]", 3 * self.cap)
            k = lib.dm_leaves_runs(blocks, n, self.state, self.buf, self.cap)
            if k < 0:
                raise MetadataError("a mapping leaf cannot be decoded")
            if k:
                self.n = k
                self.pos[0] = 0
                return True


def _delta_accel(bm: BlockManager, root1: int, root2: int, out: TextIO, verbose: bool) -> None:
    """:func:`diff_runs` and the writers, in the accelerator; same bytes."""
    ctx = ffi.new("struct dm_delta *")
    lib.dm_delta_init(ctx, 1 if verbose else 0)
    left, right = _Side(bm, root1), _Side(bm, root2)
    text = ffi.new("char[]", _OUT_BYTES)
    used = ffi.new("size_t *")
    while True:
        st = lib.dm_delta_run(ctx, left.buf, left.n, left.pos, right.buf, right.n, right.pos,
                              text, _OUT_BYTES, used)
        if st == _NEED_LEFT:
            if not left.refill():
                ctx.ldone = 1
        elif st == _NEED_RIGHT:
            if not right.refill():
                ctx.rdone = 1
        else:
            out.write(ffi.buffer(text, used[0])[:].decode("ascii"))
            used[0] = 0
            if st == _DONE:
                return
