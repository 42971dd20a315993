"""``dmthin check``: validate thin-pool metadata like ``thin_check``.

Prints ``TRANSACTION_ID=`` and ``METADATA_FREE_BLOCKS=`` on stdout when the
superblock is readable (as thin_check does), one line per problem on stderr,
and exits 0 when the metadata is good, 1 otherwise.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import UsageError
from ..thin.check import DEFAULT_MAX_LINES, CheckOptions, check_metadata
from .commands import SUMMARIES
from .common import add_command, add_metadata_arg, metadata_path
from .progress import command_report

EXIT_BAD_METADATA = 1


def register(subs: Any) -> None:
    """Add the ``check`` subcommand."""
    p = add_command(
        subs, "check", run, SUMMARIES["check"], tool=True,
        description="Check thin-pool metadata: superblock, device details and mapping "
                    "trees, metadata snapshot and both space maps. Exits 0 if the metadata "
                    "is good, 1 otherwise (one line per problem on stderr).")
    add_metadata_arg(p)
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing; the exit code tells the verdict")
    p.add_argument("-m", "--metadata-snap", action="store_true",
                   help="check the held metadata snapshot (its superblock copy and trees)")
    p.add_argument("--super-block-only", action="store_true",
                   help="only check the superblock")
    p.add_argument("--skip-mappings", action="store_true",
                   help="do not walk the mapping subtrees (nor compare space-map counts)")
    p.add_argument("--ignore-non-fatal-errors", action="store_true",
                   help="pass despite non-fatal problems (leaked blocks)")
    p.add_argument("--max-lines", type=int, default=DEFAULT_MAX_LINES, metavar="N",
                   help=f"report at most N blocks per kind of count problem "
                        f"(default {DEFAULT_MAX_LINES})")


def run(args: argparse.Namespace) -> int:
    """Check the metadata; return the exit code.  Raises
    :class:`UsageError` for a bad argument, :class:`OSError` if the file
    cannot be opened (the dispatcher prints them as one line)."""
    if args.max_lines < 1:
        raise UsageError("--max-lines must be at least 1")
    path = metadata_path(args.metadata)
    opts = CheckOptions(super_block_only=args.super_block_only,
                        metadata_snap=args.metadata_snap,
                        skip_mappings=args.skip_mappings,
                        ignore_non_fatal_errors=args.ignore_non_fatal_errors,
                        max_lines=args.max_lines)
    with command_report("checking", "blk", quiet=args.quiet, scale=False) as report:
        result = check_metadata(path, opts, report)
    if not args.quiet and result.transaction_id is not None:
        # As thin_check: printed whenever the superblock could be read.
        print(f"TRANSACTION_ID={result.transaction_id}")
        print(f"METADATA_FREE_BLOCKS={result.metadata_free_blocks}", flush=True)
    if not result.ok:
        if not args.quiet:
            n = len(result.problems)
            print(f"dmthin check: {path}: bad metadata ({n} problem{'s' * (n != 1)} "
                  "reported)", file=sys.stderr)
        return EXIT_BAD_METADATA
    return 0
