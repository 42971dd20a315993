"""``dmthin restore``: metadata XML to thin metadata (thin_restore)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..errors import UsageError
from ..thin.restore import restore
from .commands import SUMMARIES
from .common import add_command, add_version_arg, parse_overrides
from .progress import command_report

#: below this input size a restore is quick: no bar
PROGRESS_MIN_BYTES = 8 << 20


def register(subs: Any) -> None:
    """Add the ``restore`` subcommand."""
    p = add_command(
        subs, "restore", run, SUMMARIES["restore"], tool=True,
        description="Restore thin-pool metadata from thin_dump XML (0.9.0 or 1.x form). The "
                    "output must exist; its size fixes the metadata size. The whole input is "
                    "validated before anything is written (the input is read twice; memory "
                    "does not grow with the number of mappings). OUTPUT may be a pool "
                    "directory.")
    add_version_arg(p)
    p.add_argument("-i", "--input", required=True, metavar="XML",
                   help="the XML file, or - for stdin (copied to a temporary file: it is "
                        "read twice)")
    p.add_argument("-o", "--output", required=True, metavar="METADATA")
    p.add_argument("--transaction-id", metavar="N", help="override the transaction id")
    p.add_argument("--data-block-size", metavar="SECTORS", help="override the data block size")
    p.add_argument("--nr-data-blocks", metavar="N", help="override the number of data blocks")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Restore; return 0.  Raises :class:`UsageError`,
    :class:`~dmthin.errors.PoolLocked`, :class:`~dmthin.errors.MetadataError`
    and :class:`OSError`."""
    stdin = args.input == "-"
    if not stdin and not os.path.exists(args.input):
        raise UsageError(f"input {args.input} does not exist")
    pool = None
    output = args.output
    if os.path.isdir(output):
        # A pool directory: restore its metadata under the pool's writer lock,
        # so a running dmthin process on that pool is never overwritten.  (A
        # pool directory's layout only now, as metadata_path does: restoring
        # into a file does not pay its import.)
        from ..pooldir import PoolDir
        pool = PoolDir(output)
        pool.check_dir()
        output = os.fspath(pool.metadata_path)
    overrides = parse_overrides(args)
    size = os.path.getsize(args.input) if not stdin and os.path.isfile(args.input) else 0
    if pool is not None:
        pool.lock()
    try:
        with command_report("restore", "B", quiet=args.quiet, min_step=65536) as report:
            source = sys.stdin.buffer if stdin else args.input
            # a pool's metadata file may be held by a loop device: in place
            restore(source, output, progress=(lambda done: report.progress(done, size))
                    if size > PROGRESS_MIN_BYTES else None, in_place=pool is not None or None,
                    nofollow=pool is not None, **overrides)
    finally:
        if pool is not None:
            pool.unlock()
    return 0
