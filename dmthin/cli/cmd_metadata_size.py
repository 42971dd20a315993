"""``dmthin metadata-size``: thin_metadata_size's estimate, or ``--exact``
the worst case the engine's btrees can reach.

Takes thin_metadata_size 0.9.0's argv exactly (getopt rules: ``-nshort``,
abbreviated long options), so its arguments are not parsed by argparse.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from .. import __version__
from ..thin.metadata_size import Failure, run_thin_metadata_size
from .commands import SUMMARIES
from .common import add_command


def register(subs: Any) -> None:
    """Add the ``metadata-size`` subcommand (its own option parser)."""
    p = add_command(subs, "metadata-size", run, SUMMARIES["metadata-size"], tool=True,
                    add_help=False, prefix_chars="\0",
                    description="thin_metadata_size: -b BLOCKSIZE -s POOLSIZE -m MAXTHINS "
                                "[-u UNIT] [-n[short|long]] [--exact]; -h for details.")
    p.add_argument("argv", nargs=argparse.REMAINDER)


def run(args: argparse.Namespace) -> int:
    """Print the size; return 0, or 1 with thin_metadata_size's message."""
    try:
        sys.stdout.write(run_thin_metadata_size(list(args.argv), __version__))
    except Failure as e:
        sys.stderr.write(str(e))
        return 1
    sys.stdout.flush()
    return 0
