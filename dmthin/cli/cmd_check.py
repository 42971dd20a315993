"""``dmthin check``: validate thin-pool metadata like ``thin_check``.

Prints ``TRANSACTION_ID=`` and ``METADATA_FREE_BLOCKS=`` on stdout when the
superblock is readable (as thin_check does), one line per problem on stderr,
and exits 0 when the metadata is good, 1 otherwise.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import UsageError
from ..pooldir import PoolDir
from ..thin.check import DEFAULT_MAX_LINES, CheckOptions, check_metadata

EXIT_BAD_METADATA = 1


def register(subs) -> None:
    """Add the ``check`` subcommand."""
    p = subs.add_parser(
        "check", help="check thin metadata (like thin_check)",
        description="Check thin-pool metadata: superblock, device details and mapping "
                    "trees, metadata snapshot and both space maps. Exits 0 if the metadata "
                    "is good, 1 otherwise (one line per problem on stderr).")
    p.add_argument("metadata", metavar="METADATA",
                   help="metadata file or block device, or a pool directory "
                        "(its metadata file is checked)")
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
    p.set_defaults(func=run)


def metadata_path(arg: str) -> str:
    """The metadata file named by *arg*: itself, or ``ARG/metadata`` for a
    pool directory.  Raises :class:`UsageError` if there is none."""
    if os.path.isdir(arg):
        path = os.fspath(PoolDir(arg).metadata_path)
        if not os.path.exists(path):
            raise UsageError(f"{arg} is a directory without a metadata file: "
                             "give a metadata file or a pool directory")
        return path
    if not os.path.exists(arg):
        raise UsageError(f"{arg}: no such file or device")
    return arg


def run(args: argparse.Namespace) -> int:
    """Check the metadata; return the exit code.  Raises
    :class:`UsageError` for a bad argument, :class:`OSError` if the file
    cannot be opened (the dispatcher prints them as one line)."""
    if args.max_lines < 1:
        raise UsageError("--max-lines must be at least 1")
    path = metadata_path(args.metadata)
    quiet = args.quiet

    def emit(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr, flush=True)

    opts = CheckOptions(super_block_only=args.super_block_only,
                        metadata_snap=args.metadata_snap,
                        skip_mappings=args.skip_mappings,
                        ignore_non_fatal_errors=args.ignore_non_fatal_errors,
                        max_lines=args.max_lines,
                        progress=not quiet and sys.stderr.isatty())
    result = check_metadata(path, opts, emit=emit)
    if not quiet and result.transaction_id is not None:
        # As thin_check: printed whenever the superblock could be read.
        print(f"TRANSACTION_ID={result.transaction_id}")
        print(f"METADATA_FREE_BLOCKS={result.metadata_free_blocks}", flush=True)
    if not result.ok:
        if not quiet:
            n = len(result.problems)
            print(f"dmthin check: {path}: bad metadata ({n} problem{'s' * (n != 1)} "
                  "reported)", file=sys.stderr)
        return EXIT_BAD_METADATA
    return 0
