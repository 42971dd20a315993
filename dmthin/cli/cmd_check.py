"""``dmthin check``: validate thin-pool metadata like ``thin_check``.

Prints ``TRANSACTION_ID=`` and ``METADATA_FREE_BLOCKS=`` on stdout when the
superblock is readable (as thin_check does), one line per problem on stderr,
and exits 0 when the metadata is good, 1 otherwise.  Takes every thin_check
0.9.0 option, so LVM can run it as its ``thin_check_executable``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ..thin.check import DEFAULT_MAX_LINES, CheckOptions
from ..thin.check_fix import FixOptions, check_and_fix
from ..units import parse_int
from .commands import SUMMARIES
from .common import add_command, add_metadata_arg, add_version_arg, metadata_path, parse_natural
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
    add_version_arg(p)
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
    p.add_argument("--auto-repair", action="store_true",
                   help="free leaked blocks (one committed metadata transaction), then "
                        "clear needs_check")
    p.add_argument("--clear-needs-check-flag", action="store_true",
                   help="after a clean full check, clear the superblock's needs_check flag "
                        "(rewrites only the superblock)")
    p.add_argument("--override-mapping-root", metavar="BLOCK",
                   help="check the top-level mapping tree at BLOCK instead of the "
                        "superblock's")
    p.add_argument("--max-lines", default=str(DEFAULT_MAX_LINES), metavar="N",
                   help=f"report at most N blocks per kind of count problem "
                        f"(default {DEFAULT_MAX_LINES})")


def run(args: argparse.Namespace) -> int:
    """Check the metadata; return the exit code.  Raises
    :class:`UsageError` for a bad argument, :class:`OSError` if the file
    cannot be opened (the dispatcher prints them as one line)."""
    max_lines = parse_int(args.max_lines, "--max-lines", minimum=1)
    path = metadata_path(args.metadata)
    opts = CheckOptions(super_block_only=args.super_block_only,
                        metadata_snap=args.metadata_snap,
                        skip_mappings=args.skip_mappings,
                        ignore_non_fatal_errors=args.ignore_non_fatal_errors,
                        max_lines=max_lines,
                        override_mapping_root=None if args.override_mapping_root is None
                        else parse_natural(args.override_mapping_root,
                                           "--override-mapping-root block number"))
    fix = FixOptions(auto_repair=args.auto_repair,
                     clear_needs_check=args.clear_needs_check_flag)
    with command_report("checking", "blk", quiet=args.quiet, scale=False) as report:
        result = check_and_fix(path, opts, fix, report).check
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
