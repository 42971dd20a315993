"""``dmthin repair -i IN -o OUT``: rebuild damaged thin metadata (thin_repair).

Takes thin_repair's options; stray arguments are ignored as thin_repair
ignores them (``lvconvert --repair`` runs ``THIN_REPAIR '' -i META -o SPARE``).
What was lost or guessed goes to stderr, one line each.
"""
from __future__ import annotations

import argparse
from typing import Any

from ..errors import UsageError
from ..thin.repair import Overrides, repair
from .commands import SUMMARIES
from .common import add_command, add_version_arg, parse_overrides
from .progress import command_report


def register(subs: Any) -> None:
    """Add the ``repair`` subcommand."""
    p = add_command(
        subs, "repair", run, SUMMARIES["repair"], tool=True,
        description="Read thin-pool metadata that may be damaged and write valid metadata "
                    "with every device and mapping that survives to OUTPUT (an existing file "
                    "or block device, as for restore). The input is only read.")
    p.add_argument("ignored", nargs="*", metavar="ARG", help=argparse.SUPPRESS)
    p.add_argument("-i", "--input", metavar="INPUT", help="damaged metadata (file or device)")
    p.add_argument("-o", "--output", metavar="OUTPUT",
                   help="where to write the repaired metadata (must exist)")
    p.add_argument("--transaction-id", metavar="N", help="transaction id of the output")
    p.add_argument("--data-block-size", metavar="SECTORS",
                   help="data block size in sectors (needed when the superblock is lost)")
    p.add_argument("--nr-data-blocks", metavar="N", help="number of data blocks of the pool")
    p.add_argument("-q", "--quiet", action="store_true", help="do not list what was lost")
    add_version_arg(p)


def run(args: argparse.Namespace) -> int:
    """Repair; raises :class:`UsageError`, ``MetadataError`` or
    ``OSError`` (one line from the dispatcher)."""
    if not args.input:
        raise UsageError("no input file provided: give -i METADATA")
    if not args.output:
        raise UsageError("no output file provided: give -o OUTPUT (an existing file or "
                         "device)")
    overrides = Overrides(**parse_overrides(args))
    plan = repair(args.input, args.output, overrides)
    with command_report("repair", "blk", quiet=args.quiet) as report:
        for line in plan.report:
            report.warning(line)
    return 0
