"""Check thin-pool metadata as ``thin_check`` does (docs/format.md, sections 1-5).

:func:`check_metadata` validates, without writing anything:

1. the superblock: size of the file, magic, checksum, blocknr, version 1..2,
   feature flags, data block size, space-map roots;
2. the device details tree (value_size 24) and the top-level mapping tree
   (dev_id -> subtree root, or the tree at ``override_mapping_root``): the
   same set of devices;
3. unless ``skip_mappings``: every device's mapping subtree (value_size 8),
   ``mapped_blocks`` against the number of mappings, data blocks below
   ``nr_data_blocks``; shared subtrees are counted, not walked again;
4. the held metadata snapshot, if any (its copy of the superblock and its
   trees, which take part in the reference counts); with ``metadata_snap``
   (``-m``) only the snapshot's superblock copy and trees;
5. both space maps: the metadata counts (superblock, index block, bitmaps,
   every node by its number of parent pointers, +1 for the snapshot's roots)
   and the data counts (number of leaves referencing each data block).

Where the tools are laxer than the kernel, dmthin follows the kernel.
thin_check 0.9.0 and 1.1.0 accept, and dmthin rejects: a wrong superblock
magic (the kernel's ``sb_check`` returns -EILSEQ), a metadata file smaller
than its space map ("metadata device ... too small"), incompatible feature
flags, a data block size no pool table can match, ``nr_allocated >
nr_blocks``, a data-sm index whose keys are not 0, 1, 2, ... and a version
outside 1..2 (a format dmthin does not know).

Problems are collected in :class:`Findings`, one line each, and passed on
as found to the caller's :class:`~dmthin.report.Report` (which also gets the
progress); the number of per-block count lines is capped.  Like thin_check 1.x, every problem makes
the check fail except leaked blocks, which only count as non-fatal
(``ignore_non_fatal_errors`` then passes).  The result lists the leaked
blocks, for :mod:`dmthin.thin.check_fix` (``--auto-repair``).
"""
from __future__ import annotations

import os
import struct
from array import array
from collections.abc import Callable
from typing import NamedTuple

from ..blockdev import fd_size
from ..errors import BlockNrMismatch, ChecksumError, MetadataError
from ..pdata.accel import ffi, lib
from ..pdata.block import BlockManager
from ..pdata.btree.check import BTreeChecker, NodeError, new_totals
from ..pdata.btree.node import HEADER_SIZE, read_u64_values
from ..pdata.checksum import SUPERBLOCK
from ..pdata.refcounts import RefCounts
from ..pdata.space_map import check as smcheck
from ..pdata.space_map.format import IndexEntry, SpaceMapRoot
from ..report import NullReport, Report
from ..units import DATA_BLOCK_SIZE_MAX_SECTORS as MAX_DATA_BLOCK_SIZE
from ..units import DATA_BLOCK_SIZE_MIN_SECTORS as MIN_DATA_BLOCK_SIZE
from ..units import MAX_METADATA_BLOCKS, is_valid_data_block_sectors
from .format import (
    INCOMPAT_SUPP,
    INCOMPLETE_RESTORE_MARK,
    MAPPING_VALUE_SIZE,
    MAX_DATA_BLOCKS,
    METADATA_BLOCK_SECTORS,
    THIN_MIN_VERSION,
    THIN_SUPERBLOCK_MAGIC,
    THIN_VERSION,
    TIME_BITS,
    DeviceDetails,
    Superblock,
    superblock_magic,
)

_VALUE = struct.Struct("<Q")

DEFAULT_MAX_LINES = 20               # per kind of per-block problem


class CheckOptions(NamedTuple):
    """What to check (thin_check's options)."""
    super_block_only: bool = False
    metadata_snap: bool = False      # -m: only the held snapshot's trees
    skip_mappings: bool = False
    ignore_non_fatal_errors: bool = False
    max_lines: int = DEFAULT_MAX_LINES
    override_mapping_root: int | None = None   # check this top-level mapping root instead


class Findings:
    """Problems found, one line each, also passed on to *report* as they
    are found."""

    def __init__(self, report: Report | None = None):
        self.report: Report = NullReport() if report is None else report
        self.fatal: list[str] = []
        self.non_fatal: list[str] = []
        self.notes: list[str] = []

    def error(self, line: str) -> None:
        """A fatal problem."""
        self.fatal.append(line)
        self.report.fatal(line)

    def warning(self, line: str) -> None:
        """A non-fatal problem (a leak)."""
        self.non_fatal.append(line)
        self.report.warning(line)

    def note(self, line: str) -> None:
        """Information that does not change the verdict."""
        self.notes.append(line)
        self.report.info(line)

    def progress(self, done: int, total: int) -> None:
        """Pass progress on to the report."""
        self.report.progress(done, total)


class CheckResult:
    """The verdict.  ``ok`` is False if a fatal problem was found, or a
    non-fatal one without ``ignore_non_fatal_errors``.  Also: the
    ``superblock`` read, its ``transaction_id`` and the metadata space map's
    ``metadata_free_blocks`` (None without a superblock), ``nr_devices``,
    ``nr_mappings``, the blocks whose on-disk count is positive while nothing
    references them (``leaked_metadata``, ``leaked_data``), and whether both
    space maps' counts were compared with the trees (``counts_compared``: a
    full check)."""

    def __init__(self, ok: bool, findings: Findings, superblock: Superblock | None = None, *,
                 nr_devices: int = 0, nr_mappings: int = 0,
                 leaked_metadata: array[int] | None = None,
                 leaked_data: array[int] | None = None, counts_compared: bool = False):
        self.ok = ok
        self.findings = findings
        self.superblock = superblock
        self.transaction_id: int | None = None
        self.metadata_free_blocks: int | None = None
        self.nr_devices = nr_devices
        self.nr_mappings = nr_mappings
        self.leaked_metadata = array("Q") if leaked_metadata is None else leaked_metadata
        self.leaked_data = array("Q") if leaked_data is None else leaked_data
        self.counts_compared = counts_compared

    @property
    def problems(self) -> list[str]:
        """Every problem line, fatal ones first."""
        return self.findings.fatal + self.findings.non_fatal


class _Capped:
    """Emit at most *limit* lines of one kind; :meth:`close` summarises."""

    def __init__(self, sink: Callable[[str], None], limit: int, what: str):
        self.sink, self.limit, self.what, self.n = sink, limit, what, 0

    def __call__(self, line: str) -> None:
        self.n += 1
        if self.n <= self.limit:
            self.sink(line)

    def close(self) -> None:
        if self.n > self.limit:
            self.sink(f"... and {self.n - self.limit} more {self.what}")


def check_metadata(path: str | os.PathLike[str], options: CheckOptions | None = None,
                   report: Report | None = None, *, accelerated: bool = True) -> CheckResult:
    """Check the thin metadata in *path* (a file or block device).

    Never raises for bad metadata: every problem becomes a line of the
    result's findings, passed to *report* (fatal, warning or info) as it is
    found; *report* also gets the progress in metadata blocks.  Raises
    :class:`OSError` if *path* cannot be opened.  *accelerated*: count the
    mappings' data blocks with the accelerator when it is built (the same
    result)."""
    opts = options or CheckOptions()
    findings = Findings(report if report is not None else NullReport())
    bm = BlockManager(path, writable=False, cache_blocks=1024)
    try:
        return _Checker(bm, opts, findings, accelerated and lib is not None).run()
    finally:
        bm.close()


class _Checker:
    meta_counts: RefCounts | None
    data_counts: RefCounts
    ck: BTreeChecker
    totals: array[int] | None
    bad_data: _Capped

    def __init__(self, bm: BlockManager, opts: CheckOptions, report: Findings,
                 accelerated: bool = False):
        self.bm, self.opts, self.report = bm, opts, report
        self.accelerated = accelerated
        self.sb: Superblock | None = None
        self.meta_ok = True        # metadata counts complete
        self.data_ok = True        # data counts complete
        self.nr_mappings = 0
        self.nr_devices = 0
        self.progress_total = 0    # metadata blocks expected to be walked
        self.leaked = {"metadata": array("Q"), "data": array("Q")}
        self.compared: set[str] = set()

    # -- result --------------------------------------------------------------
    def _result(self) -> CheckResult:
        r = self.report
        ok = not r.fatal and (not r.non_fatal or self.opts.ignore_non_fatal_errors)
        sb = self.sb
        res = CheckResult(ok, r, sb, nr_devices=self.nr_devices, nr_mappings=self.nr_mappings,
                          leaked_metadata=self.leaked["metadata"],
                          leaked_data=self.leaked["data"],
                          counts_compared=self.compared == {"metadata", "data"})
        if sb is not None:
            res.transaction_id = sb.trans_id
            msm = sb.metadata_sm
            res.metadata_free_blocks = max(0, msm.nr_blocks - msm.nr_allocated)
        return res

    def run(self) -> CheckResult:
        try:
            if not self._superblock() or self.opts.super_block_only or self.sb is None:
                return self._result()
            if self.opts.metadata_snap:
                self._only_metadata_snap(self.sb)
            else:
                self._run_trees(self.sb)
        except MemoryError:
            self.report.error("out of memory while checking (metadata too large for this "
                              "machine?)")
        except (struct.error, IndexError, ValueError, OverflowError) as e:
            # Garbage that slipped past the checks above: still one line.
            self.report.error(f"malformed metadata stopped the check: "
                              f"{type(e).__name__}: {e}")
        return self._result()

    # -- superblock ----------------------------------------------------------
    def _superblock(self) -> bool:
        bm, err = self.bm, self.report.error
        if bm.file_blocks < 1:
            if _looks_like_xml(os.pread(bm.fd, 64, 0)):
                err(_XML_HINT)
            else:
                err(f"metadata is too small: {fd_size(bm.fd)} bytes, "
                    "not even a superblock (4096 bytes)")
            return False
        try:
            buf = bm.read_uncached(0)
        except MetadataError as e:
            err(f"cannot read the superblock: {e}")
            return False
        if not any(buf):
            err("superblock is all zeroes: this metadata has not been formatted")
            return False
        magic = superblock_magic(buf)
        if magic != THIN_SUPERBLOCK_MAGIC:
            if bytes(buf[:len(INCOMPLETE_RESTORE_MARK)]) == INCOMPLETE_RESTORE_MARK:
                err("superblock is marked 'incomplete restore': a restore into this metadata "
                    "was interrupted; run the restore again")
            elif _looks_like_xml(buf[:64]):
                err(_XML_HINT)
            else:
                err(f"bad superblock magic {magic} (expected {THIN_SUPERBLOCK_MAGIC}): "
                    "not thin-pool metadata")
            return False
        try:
            SUPERBLOCK.check(buf, 0)
        except (ChecksumError, BlockNrMismatch) as e:
            err(str(e))
            return False
        sb = self.sb = Superblock.unpack(buf)
        ok = True
        if not THIN_MIN_VERSION <= sb.version <= THIN_VERSION:
            err(f"unsupported metadata version {sb.version} "
                f"(supported {THIN_MIN_VERSION}..{THIN_VERSION})")
            ok = False
        if sb.incompat_flags & ~INCOMPAT_SUPP:
            err(f"superblock has unsupported incompatible feature flags "
                f"{sb.incompat_flags:#x}")
            ok = False
        if sb.metadata_block_size != METADATA_BLOCK_SECTORS:
            err(f"superblock metadata_block_size is {sb.metadata_block_size} sectors, "
                f"expected {METADATA_BLOCK_SECTORS}")
            ok = False
        dbs = sb.data_block_size
        if not is_valid_data_block_sectors(dbs):
            err(f"superblock data_block_size {dbs} sectors is invalid (a multiple of 128 "
                f"in {MIN_DATA_BLOCK_SIZE}..{MAX_DATA_BLOCK_SIZE})")
            ok = False
        if sb.needs_check:
            # Not a problem in itself (the tools pass it): the kernel set it
            # after an error and refuses to grow the pool until it is cleared.
            self.report.note("the superblock's needs_check flag is set")
        msm, dsm = sb.metadata_sm, sb.data_sm
        if not 0 < msm.nr_blocks <= MAX_METADATA_BLOCKS:
            err(f"metadata space map has {msm.nr_blocks} blocks, outside "
                f"1..{MAX_METADATA_BLOCKS}")
            ok = False
        elif msm.nr_blocks > bm.file_blocks:
            err(f"metadata is truncated: the space map covers {msm.nr_blocks} blocks but "
                f"the file holds only {bm.file_blocks}")
            ok = False
        if dsm.nr_blocks > MAX_DATA_BLOCKS:
            err(f"data space map has {dsm.nr_blocks} blocks, more than 2^40")
            ok = False
        for name, root in (("metadata", msm), ("data", dsm)):
            if root.nr_allocated > root.nr_blocks:
                err(f"{name} space map root: nr_allocated {root.nr_allocated} > "
                    f"nr_blocks {root.nr_blocks}")
                ok = False
        return ok

    # -- trees ---------------------------------------------------------------
    def _run_trees(self, sb: Superblock) -> None:
        msm, dsm = sb.metadata_sm, sb.data_sm
        nr_meta = msm.nr_blocks
        self.meta_counts = RefCounts(nr_meta)
        self.data_counts = RefCounts(dsm.nr_blocks)
        self.ck = BTreeChecker(self.bm, nr_meta, self.meta_counts)
        self.totals = None if self.opts.skip_mappings else new_totals(nr_meta)
        self.bad_data = _Capped(self.report.error, self.opts.max_lines,
                                "mappings to data blocks beyond the data device")
        self.progress_total = msm.nr_allocated or nr_meta
        self.ck.count(0, "superblock")

        mapping_root = sb.data_mapping_root
        if self.opts.override_mapping_root is not None:
            mapping_root = self.opts.override_mapping_root
        self._pool_trees(sb.device_details_root, mapping_root, "")
        if sb.held_root:
            self._metadata_snap(sb.held_root)
        self._space_maps(msm, dsm)
        self.bad_data.close()
        if self.opts.skip_mappings:
            self.report.notes.append("mappings not checked (--skip-mappings)")

    def _only_metadata_snap(self, sb: Superblock) -> None:
        """``-m``: check the held snapshot's superblock copy and trees (its
        space-map roots are zero by design, so no counts are compared)."""
        if not sb.held_root:
            self.report.error("no metadata snapshot found (held_root is 0)")
            return
        nr_meta = sb.metadata_sm.nr_blocks
        self.meta_counts = None
        self.data_counts = RefCounts(sb.data_sm.nr_blocks)
        self.ck = BTreeChecker(self.bm, nr_meta, None)
        self.totals = None if self.opts.skip_mappings else new_totals(nr_meta)
        self.bad_data = _Capped(self.report.error, self.opts.max_lines,
                                "mappings to data blocks beyond the data device")
        self._metadata_snap(sb.held_root)
        self.bad_data.close()

    def _tick(self) -> None:
        if self.progress_total:
            self.report.progress(self.ck.nodes_walked, self.progress_total)

    def _pool_trees(self, details_root: int, mapping_root: int, where: str) -> None:
        """Check one (details tree, mapping tree) pair: the live one or the
        metadata snapshot's (*where* prefixes the messages)."""
        err = self.report.error
        details: dict[int, DeviceDetails] | None = None
        found: dict[int, DeviceDetails] = {}
        try:
            for _b, keys, values, _p in self.ck.walk(details_root, DeviceDetails.SIZE,
                                                    tree=f"{where}device details tree",
                                                    tree_kind="device details"):
                for k, v in zip(keys, values, strict=True):
                    found[k] = DeviceDetails.unpack(v)
                self._tick()
            details = found
        except MetadataError as e:
            err(str(e))
            self.meta_ok = False
        roots: dict[int, int] | None = None
        found_roots: dict[int, int] = {}
        try:
            for _b, keys, values, _p in self.ck.walk(mapping_root, MAPPING_VALUE_SIZE,
                                                    tree=f"{where}top-level mapping tree",
                                                    tree_kind="top-level mapping"):
                found_roots.update(zip(keys, values, strict=True))
                self._tick()
            roots = found_roots
        except MetadataError as e:
            err(str(e))
            self.meta_ok = self.data_ok = False
        if details is not None and roots is not None and details.keys() != roots.keys():
            only_d = sorted(details.keys() - roots.keys())
            only_m = sorted(roots.keys() - details.keys())
            parts = []
            if only_d:
                parts.append(f"devices {_ids(only_d)} have details but no mappings")
            if only_m:
                parts.append(f"devices {_ids(only_m)} have mappings but no details")
            err(f"{where}inconsistency between the details tree and the mapping tree: "
                + "; ".join(parts))
        if not where:
            self.nr_devices = len(details if details is not None else roots or ())
        if roots is None or self.opts.skip_mappings:
            if self.opts.skip_mappings and roots is not None:
                # Count the subtree roots' references all the same.
                self.meta_ok = self.data_ok = False
            return
        for dev_id in sorted(roots):
            n = self._device(dev_id, roots[dev_id], where)
            if n is None or details is None or dev_id not in details:
                continue
            mapped = details[dev_id].mapped_blocks
            if mapped != n:
                err(f"{where}device {dev_id}: mapped_blocks is {mapped} but it has {n} "
                    "mappings")
            if not where:
                self.nr_mappings += n

    def _device(self, dev_id: int, root: int, where: str) -> int | None:
        """Walk one device's mapping subtree; return its number of mappings
        (None if the subtree is damaged)."""
        nr_data = self.data_counts.size          # the data space map's nr_blocks
        inc_blocks, inc_packed = self.data_counts.inc_blocks, self.data_counts.inc_packed
        beyond = nr_data << TIME_BITS          # the first mapping value beyond the data device
        bad = self.bad_data
        totals = self.totals
        flat = self.data_counts.flat if self.accelerated else None
        if flat is not None and self.ck.walk_u64_counting(
                root, tree_kind="mapping", value_counts=self.data_counts, shift=TIME_BITS,
                totals=totals):
            self._tick()
            if totals is None or not 0 <= root < len(totals):
                return None
            return totals[root]
        try:
            for _b, keys, buf, mx, _p in self.ck.walk_nodes(
                    root, MAPPING_VALUE_SIZE, tree=f"{where}mapping tree of device {dev_id}",
                    tree_kind="mapping", totals=totals):
                if flat is not None:
                    # The accelerator counts the leaf's blocks; it stops at
                    # one beyond the data device or about to saturate.
                    nr, i = len(keys), 0
                    cflat = ffi.from_buffer(flat)
                    cbuf = ffi.from_buffer(buf)
                    while True:
                        i = lib.dm_inc_leaf(cflat, nr_data, cbuf, nr, mx, i, TIME_BITS)
                        if i == nr:
                            break
                        data = _VALUE.unpack_from(buf, HEADER_SIZE + 8 * (mx + i))[0] \
                            >> TIME_BITS
                        if data >= nr_data:
                            bad(f"{where}device {dev_id}: block {keys[i]} maps to data block "
                                f"{data}, beyond the data device ({nr_data} blocks)")
                        else:
                            inc_blocks([data])
                        i += 1
                    self._tick()
                    continue
                values = read_u64_values(buf, len(keys), mx)
                if values and max(values) >= beyond:
                    blocks = [v >> TIME_BITS for v in values]
                    for k, data in zip(keys, blocks, strict=True):
                        if data >= nr_data:
                            bad(f"{where}device {dev_id}: block {k} maps to data block "
                                f"{data}, beyond the data device ({nr_data} blocks)")
                    inc_blocks([data for data in blocks if data < nr_data])
                else:
                    inc_packed(values, TIME_BITS)
                self._tick()
        except MetadataError as e:
            self.report.error(str(e))
            self.meta_ok = self.data_ok = False
            # Totals of partly walked nodes are unknown from now on.
            self.totals = totals = None
            return None
        if totals is None or not 0 <= root < len(totals):
            return None
        return totals[root]

    def _metadata_snap(self, held: int) -> None:
        err = self.report.error
        try:
            if self.ck.counts is not None:
                self.ck.count(held, "metadata snapshot")
            buf = self.bm.read_uncached(held)
            magic = superblock_magic(buf)
            if magic != THIN_SUPERBLOCK_MAGIC:
                raise MetadataError(f"metadata snapshot at block {held}: bad superblock "
                                    f"magic {magic}")
            SUPERBLOCK.check(buf, held)
        except MetadataError as e:
            err(f"metadata snapshot: {e}")
            self.meta_ok = self.data_ok = False
            return
        snap = Superblock.unpack(buf)
        self._pool_trees(snap.device_details_root, snap.data_mapping_root,
                         f"metadata snapshot (block {held}): ")

    # -- space maps ----------------------------------------------------------
    def _space_maps(self, msm: SpaceMapRoot, dsm: SpaceMapRoot) -> None:
        err = self.report.error
        meta_entries = data_entries = None
        try:
            meta_entries = smcheck.read_metadata_index(self.ck, msm.bitmap_root, msm.nr_blocks)
        except MetadataError as e:
            err(f"metadata space map: {e}")
            self.meta_ok = False
        meta_ref_ok = self._ref_tree(msm.ref_count_root, "metadata")
        try:
            data_entries = smcheck.read_data_index(self.ck, dsm.bitmap_root, dsm.nr_blocks)
        except NodeError as e:
            err(str(e))
            self.meta_ok = False
        except MetadataError as e:
            err(f"data space map: {e}")
            self.meta_ok = False
        data_ref_ok = self._ref_tree(dsm.ref_count_root, "data")
        self._tick()

        if data_entries is not None and data_ref_ok:
            if self.data_ok:
                self._compare(data_entries, dsm, self.data_counts, "data")
            else:
                self.report.note("data space map counts not compared: the mapping trees "
                                 "are damaged or were skipped")
        if meta_entries is not None and meta_ref_ok:
            if self.meta_ok and self.meta_counts is not None:
                self._compare(meta_entries, msm, self.meta_counts, "metadata")
            else:
                self.report.note("metadata space map counts not compared: some trees are "
                                 "damaged or were skipped")

    def _ref_tree(self, root: int, what: str) -> bool:
        try:
            smcheck.count_ref_count_tree(self.ck, root, f"{what} space map")
            return True
        except MetadataError as e:
            self.report.error(str(e))
            self.meta_ok = False
            return False

    def _compare(self, entries: list[IndexEntry], root: SpaceMapRoot, computed: RefCounts,
                 what: str) -> None:
        r = self.report
        fatal = _Capped(r.error, self.opts.max_lines, f"{what} count problems")
        leaks = _Capped(r.warning, self.opts.max_lines, f"leaked {what} blocks")

        def problem(kind: smcheck.CountProblem, line: str) -> None:
            (leaks if kind is smcheck.CountProblem.LEAKED else fatal)(line)

        try:
            smcheck.compare_counts(self.bm, entries, root.nr_blocks, root.ref_count_root,
                                   computed, what=what, problem=problem,
                                   on_leak=self.leaked[what].append)
            self.compared.add(what)
        except MetadataError as e:
            r.error(f"{what} space map: {e}")
        fatal.close()
        leaks.close()


_XML_HINT = ("this looks like XML, not thin-pool metadata: write it to a metadata file "
             "with 'dmthin restore' first")


def _looks_like_xml(head: bytes | bytearray) -> bool:
    return bytes(head).lstrip().startswith(b"<")


def _ids(ids: list[int], limit: int = 10) -> str:
    s = ", ".join(str(i) for i in ids[:limit])
    return s + (f" (and {len(ids) - limit} more)" if len(ids) > limit else "")
