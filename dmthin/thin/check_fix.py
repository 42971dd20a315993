"""What ``thin_check`` may write: leak repair and the needs_check flag.

:func:`check_and_fix` runs :func:`~dmthin.thin.check.check_metadata` and
then, as thin_check 0.9.0 does:

* ``auto_repair`` (``--auto-repair``): when the only problems are leaked
  blocks (a positive count on disk, nothing references the block), set
  their counts to 0 in one metadata transaction -- committed blocks are
  never overwritten, the superblock is written last -- and check again;
* ``clear_needs_check`` (``--clear-needs-check-flag``), and ``auto_repair``
  too: after a check that found nothing at all (or whose leaks were just
  repaired), clear the superblock's needs_check flag.  Only the superblock is rewritten (with
  its checksum), in place, as the kernel commits it, then synced.

Both need a full check of the live metadata: they are refused with a
metadata snapshot, an overridden mapping root, ``skip_mappings``,
``super_block_only`` and ``ignore_non_fatal_errors`` (thin_check 0.9.0's
``check_conformance``).  A check that finds any other problem writes
nothing.  (thin_check 1.x also repairs leaks under
``--clear-needs-check-flag`` alone; 0.9.0, and dmthin, exit 1 instead.)
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import NamedTuple

from ..errors import UsageError
from ..pdata.block import BlockManager
from ..pdata.checksum import BLOCK_SIZE, SUPERBLOCK
from ..report import NullReport, Report
from .check import CheckOptions, CheckResult, check_metadata
from .format import NEEDS_CHECK_FLAG, SUPERBLOCK_LOCATION
from .superblock import read_superblock


class FixOptions(NamedTuple):
    """What thin_check may change after checking."""
    auto_repair: bool = False
    clear_needs_check: bool = False


class FixResult:
    """The final ``check`` and what was written: leaked metadata and data
    blocks freed, the needs_check flag cleared."""

    def __init__(self, check: CheckResult):
        self.check = check
        self.repaired_metadata = 0
        self.repaired_data = 0
        self.cleared_needs_check = False


def conformance_error(opts: CheckOptions, fix: FixOptions) -> str | None:
    """Why *fix* cannot be done with check options *opts* (thin_check
    0.9.0's wording), or None."""
    if not (fix.auto_repair or fix.clear_needs_check):
        return None
    if opts.ignore_non_fatal_errors:
        return "cannot perform fix by ignoring non-fatal errors"
    if opts.metadata_snap:
        return "cannot perform fix within metadata snap"
    if opts.override_mapping_root is not None:
        return "cannot perform fix with an overridden mapping root"
    if opts.skip_mappings or opts.super_block_only:
        return "cannot perform fix without a full examination"
    return None


def check_and_fix(path: str | os.PathLike[str], opts: CheckOptions, fix: FixOptions,
                  report: Report | None = None) -> FixResult:
    """Check *path*, then repair leaks and/or clear needs_check as *fix*
    asks (see the module docstring).  The check's findings and what was
    written go to *report* (as lines of info).  Raises :class:`UsageError`
    for option combinations thin_check refuses, ``OSError`` if *path*
    cannot be opened or written, and :class:`~dmthin.errors.MetadataError`
    if the metadata changed under the fix."""
    why = conformance_error(opts, fix)
    if why is not None:
        raise UsageError(why)
    report = report if report is not None else NullReport()
    result = check_metadata(path, opts, report)
    out = FixResult(result)
    if not (fix.auto_repair or fix.clear_needs_check):
        return out
    r = result.findings
    if fix.auto_repair and not r.fatal and r.non_fatal and result.counts_compared:
        out.repaired_metadata, out.repaired_data = repair_leaks(
            path, result.leaked_metadata, result.leaked_data)
        report.info(f"fixed leaks: {out.repaired_metadata} metadata and {out.repaired_data} "
                    "data blocks freed")
        out.check = result = check_metadata(path, opts, report)
        r = result.findings
    clean = not r.fatal and not r.non_fatal and result.counts_compared
    if clean and result.superblock is not None:
        out.cleared_needs_check = clear_needs_check(path)
        if out.cleared_needs_check:
            report.info("cleared needs_check flag")
    return out


def repair_leaks(path: str | os.PathLike[str], metadata_blocks: Iterable[int],
                 data_blocks: Iterable[int]) -> tuple[int, int]:
    """Set the counts of the leaked *metadata_blocks* and *data_blocks* to
    0 in one committed transaction; return how many of each were freed.
    The caller has checked that nothing references them.  Raises
    :class:`~dmthin.errors.MetadataError` and ``OSError``."""
    # The metadata engine (btree updates, space maps, transactions) only for
    # --auto-repair: a plain check, which never writes, does not pay its import.
    from .metadata import ThinMetadata
    md = ThinMetadata.open(path, cache_blocks=4096)
    try:
        freed = []
        for sm, blocks in ((md.metadata_sm, metadata_blocks), (md.data_sm, data_blocks)):
            n = 0
            for b in blocks:
                count = sm.get_count(b)
                if count:
                    n += 1
                for _ in range(count):
                    sm.dec(b)
            freed.append(n)
        md.commit()
    except BaseException:
        md.close()
        raise
    md.close()
    return freed[0], freed[1]


def clear_needs_check(path: str | os.PathLike[str]) -> bool:
    """Clear the needs_check flag of the superblock at block 0: rewrite
    only that block (fields unchanged but the flag, checksum recomputed)
    and sync.  Return False if the flag was not set (nothing written).
    Raises :class:`~dmthin.errors.MetadataError` if the superblock is not
    valid, ``OSError`` on I/O errors."""
    bm = BlockManager(path, writable=True, cache_blocks=16)
    try:
        sb = read_superblock(bm, SUPERBLOCK_LOCATION)
        if not sb.flags & NEEDS_CHECK_FLAG:
            return False
        buf = bytearray(BLOCK_SIZE)
        sb.replace(flags=sb.flags & ~NEEDS_CHECK_FLAG).pack_into(buf)
        SUPERBLOCK.prepare_for_write(buf, SUPERBLOCK_LOCATION)
        if os.pwrite(bm.fd, buf, 0) != BLOCK_SIZE:
            raise OSError(f"short write of the superblock to {bm.path}")
        os.fsync(bm.fd)
        return True
    finally:
        bm.close()
