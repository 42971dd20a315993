"""Restore's first pass: validate the input and plan the output.

:class:`Restorer` (a :class:`~dmthin.thin.ir.MetadataVisitor`) validates the
whole input and keeps only per-device summaries (mapping count, whether the
mappings came in key order), the 1.x ``<def>`` mappings, and the data block
reference counts (a :class:`~dmthin.pdata.refcounts.RefCounts`).  From that,
:func:`plan_blocks` knows the exact number of metadata blocks the restore
writes, before anything is written.
"""
from __future__ import annotations

from array import array
from typing import Any

from ..errors import InvalidArgument, UsageError
from ..pdata.btree.builder import btree_blocks
from ..pdata.btree.node import calc_max_entries
from ..pdata.refcounts import RefCounts
from ..pdata.space_map.build import disk_space_map_blocks, metadata_space_map_blocks
from ..pdata.space_map.format import nr_bitmaps
from ..units import (
    DATA_BLOCK_SIZE_MAX_SECTORS,
    DATA_BLOCK_SIZE_MIN_SECTORS,
    MetaBlocks,
    is_valid_data_block_sectors,
)
from .accel import ffi, lib
from .format import MAPPING_VALUE_SIZE, MAX_DATA_BLOCKS, MAX_SUPERBLOCK_TIME, DeviceDetails
from .ir import Device, Map, Superblock

_PENDING_MAX = 1 << 16
_REC = 6                              # words in one of the XML scanner's records
_U64_MAX = (1 << 64) - 1
#: mappings per full leaf: no mapping tree uses fewer blocks than this allows
_LEAF_ENTRIES = calc_max_entries(MAPPING_VALUE_SIZE)


class _Dev:
    """Pass-1 summary of one device: its mapping count and whether the
    mappings came in strictly increasing key order."""
    __slots__ = ("dev", "count", "end", "sorted")

    def __init__(self, dev: Device):
        self.dev = dev
        self.count = 0
        self.end = 0
        self.sorted = True


class Restorer:
    """Pass 1: the visitor validating everything a restore needs.

    Keeps per-device summaries, ``<def>`` mappings and the data block
    reference counts (:attr:`counts`), never the mappings themselves.
    Overrides (``None`` = from the XML): *transaction_id*,
    *data_block_sectors*, *nr_data_blocks*.  *capacity*, the output's size in
    metadata blocks, bounds what the input may claim before anything is
    allocated for it: the data space map's bitmaps and one leaf per 252
    mappings must fit, so no number in the input drives memory or time
    beyond what the output could hold (as thin_restore, which fails at once).
    Raises :class:`~dmthin.errors.InvalidArgument` (a ``ValueError``: the XML
    reader adds the position) for inconsistent input, :class:`UsageError`
    for input that cannot fit the output."""

    def __init__(self, *, transaction_id: int | None = None,
                 data_block_sectors: int | None = None, nr_data_blocks: int | None = None,
                 capacity: int | None = None):
        self.overrides = (transaction_id, data_block_sectors, nr_data_blocks)
        self.capacity = capacity
        #: mappings counted so far, and the most the output can hold
        self.nr_mappings = 0
        self.max_mappings = -1
        self.sb: Superblock | None = None
        self.devices: dict[int, _Dev] = {}
        self.defs: dict[str, list[Map]] = {}
        self.counts = RefCounts(0)
        self._pending: list[int] = []     # single mappings' data blocks, not yet counted
        # devices whose mappings came out of order, sorted (by _Collector)
        self.presorted: dict[int, tuple[array[int], array[int]]] = {}
        self.nr_data_blocks = 0
        self._cur: _Dev | None = None
        self._def: list[Map] | None = None
        self._st: Any = ffi.new("uint64_t[3]") if lib is not None else None

    # -- visitor ----------------------------------------------------------------
    def superblock_b(self, sb: Superblock) -> None:
        trans, dbs, nr = self.overrides
        sb = Superblock(sb.uuid, sb.time, sb.transaction if trans is None else trans,
                        sb.flags, sb.version,
                        sb.data_block_sectors if dbs is None else dbs,
                        sb.nr_data_blocks if nr is None else nr, None)
        d = sb.data_block_sectors
        if not is_valid_data_block_sectors(d):
            raise InvalidArgument(
                f"data_block_size={d} sectors is not a multiple of 128 between "
                f"{DATA_BLOCK_SIZE_MIN_SECTORS} and {DATA_BLOCK_SIZE_MAX_SECTORS} (64 KiB..1 GiB)")
        if sb.nr_data_blocks > MAX_DATA_BLOCKS:
            raise InvalidArgument(f"nr_data_blocks={sb.nr_data_blocks} exceeds 2^40, the most "
                                  "a mapping can address")
        if sb.time > MAX_SUPERBLOCK_TIME:
            raise InvalidArgument(f"superblock time={sb.time} does not fit 32 bits")
        if sb.version is not None and sb.version not in (1, 2):
            raise InvalidArgument(f"superblock version={sb.version} is not 1 or 2")
        if self.capacity is not None:
            need = nr_bitmaps(sb.nr_data_blocks)
            if need >= self.capacity:
                raise UsageError(f"the output is too small: nr_data_blocks="
                                 f"{sb.nr_data_blocks} alone needs {need} space-map bitmap "
                                 f"blocks but the output holds {self.capacity}; use a bigger "
                                 "metadata file or device")
            self.max_mappings = (self.capacity - 1 - need) * _LEAF_ENTRIES
        self.sb = sb
        self.nr_data_blocks = sb.nr_data_blocks
        self.counts = RefCounts(sb.nr_data_blocks)

    def superblock_e(self) -> None:
        pass

    def def_shared_b(self, name: str) -> None:
        self._def = self.defs[name] = []

    def def_shared_e(self) -> None:
        self._def = None

    def device_b(self, dev: Device) -> None:
        if dev.dev_id in self.devices:
            raise InvalidArgument(f"device {dev.dev_id} appears twice")
        self._cur = self.devices[dev.dev_id] = _Dev(dev)

    def device_e(self) -> None:
        self._cur = None
        self._count_pending()

    def map(self, m: Map) -> None:
        if self._def is not None:
            self._def.append(m)
            return
        self._add(m)

    def ref_shared(self, name: str) -> None:
        for m in self.defs[name]:
            self._add(m)

    def map_raw(self, o: int, d: int, t: int, n: int) -> None:
        """Fast path from the XML reader (no :class:`Map` object)."""
        cur = self._cur
        if n != 1 or cur is None or d >= self.nr_data_blocks:
            self.map(Map(o, d, t, n))
            return
        cur.count += 1
        if o < cur.end:
            cur.sorted = False
        cur.end = o + 1
        self.nr_mappings += 1
        pending = self._pending
        pending.append(d)
        if len(pending) >= _PENDING_MAX:
            self._count_pending()

    def map_records(self, recs: Any, k: int) -> int:
        """Mappings a batch at a time from the XML scanner (*recs*: its *k*
        records, 6 words each, see ``dm_xml_maps``), counted by the
        accelerator as that many :meth:`map_raw` calls would; returns how
        many leading records were taken (the caller delivers the rest one by
        one: a mapping outside a device or beyond the data device, an output
        too small, counts kept in chunks)."""
        cur = self._cur
        flat = self.counts.flat
        if cur is None or self._def is not None or flat is None:
            return 0
        total = lib.dm_runs_total(recs, k, self.nr_data_blocks)
        if total == _U64_MAX or 0 <= self.max_mappings < self.nr_mappings + total:
            return 0
        st = self._st
        st[0], st[1], st[2] = cur.end, 0, 0
        cflat = ffi.from_buffer(flat)
        i = lib.dm_plan_runs(recs, k, cflat, len(flat), st)
        while i < k:                   # a count about to saturate: the slow way
            self._sync(cur, st)
            rec = recs + _REC * i
            self._add(Map(rec[0], rec[1], rec[2], rec[3]))
            st[0], st[1], st[2] = cur.end, 0, 0
            i += 1 + lib.dm_plan_runs(rec + _REC, k - i - 1, cflat, len(flat), st)
        self._sync(cur, st)
        return k

    def _sync(self, cur: _Dev, st: Any) -> None:
        """Take the accelerator's pass-1 state *st* into device *cur*."""
        cur.end = st[0]
        if st[1]:
            cur.sorted = False
        cur.count += st[2]
        self.nr_mappings += st[2]

    def eof(self) -> None:
        self._count_pending()

    def _count_pending(self) -> None:
        self.counts.inc_blocks(self._pending)
        self._pending = []

    # -- helpers ------------------------------------------------------------------
    def _add(self, m: Map) -> None:
        t, d, _tm, n = m
        if d + n > self.nr_data_blocks:
            raise InvalidArgument(f"mapping to data block {d + n - 1} is beyond the end of the "
                                  f"data device (nr_data_blocks={self.nr_data_blocks})")
        self.nr_mappings += n
        if 0 <= self.max_mappings < self.nr_mappings:
            raise UsageError(f"the output is too small: {self.nr_mappings} mappings need at "
                             f"least {-(-self.nr_mappings // _LEAF_ENTRIES)} btree leaves but "
                             f"the output holds {self.capacity} blocks; use a bigger metadata "
                             "file or device")
        cur = self._cur
        if cur is None:
            raise InvalidArgument("a mapping outside any device")
        cur.count += n
        if t < cur.end:
            cur.sorted = False
        cur.end = t + n
        self.counts.inc_run(d, n)

    def count_of(self, b: int) -> int:
        """Reference count of data block *b* (for tests)."""
        return self.counts.get(b)


def plan_blocks(r: Restorer, nr_meta: int) -> int:
    """Metadata blocks (superblock included) the restore of validated *r*
    writes to a device of *nr_meta* blocks.  Raises :class:`UsageError`
    when it does not fit."""
    need = nr_bitmaps(r.nr_data_blocks)
    if need >= nr_meta:
        raise UsageError(f"the output is too small: nr_data_blocks={r.nr_data_blocks} alone "
                         f"needs {need} space-map bitmap blocks but the output holds {nr_meta}; "
                         "use a bigger metadata file or device")
    ndev = len(r.devices)
    total = 1 + sum(btree_blocks(d.count, MAPPING_VALUE_SIZE) for d in r.devices.values())
    total += btree_blocks(ndev, 8) + btree_blocks(ndev, DeviceDetails.SIZE)
    total += disk_space_map_blocks(r.nr_data_blocks, r.counts.nr_at_least_3())
    total += metadata_space_map_blocks(nr_meta)
    if total > nr_meta:
        raise UsageError(f"the output is too small: the metadata needs {total} blocks "
                         f"({MetaBlocks(total).bytes() >> 10} KiB) but the output holds {nr_meta}; "
                         "use a bigger metadata file or device")
    return total
