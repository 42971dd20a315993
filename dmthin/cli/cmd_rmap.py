"""``dmthin rmap``: which thin blocks map data blocks (thin_rmap)."""
from __future__ import annotations

import argparse
from typing import Any

from ..errors import UsageError
from ..thin.reader import open_block_manager
from ..thin.rmap import parse_region, rmap
from .commands import SUMMARIES
from .common import add_command, add_metadata_arg, add_version_arg, metadata_path, text_output


def register(subs: Any) -> None:
    """Add the ``rmap`` subcommand."""
    p = add_command(
        subs, "rmap", run, SUMMARIES["rmap"], tool=True,
        description="For data blocks in the given regions, list which thin device blocks map "
                    "them, as thin_rmap 0.9.0: 'data B..E -> thin(DEV) T..U' (ends "
                    "exclusive).")
    add_metadata_arg(p)
    p.add_argument("--region", action="append", metavar="BEGIN..END",
                   help="data blocks BEGIN to END-1 (repeatable; at least one)")
    add_version_arg(p)


def run(args: argparse.Namespace) -> int:
    """Print the reverse map; return 0.  Raises :class:`UsageError`,
    :class:`~dmthin.errors.MetadataError` and :class:`OSError`."""
    if not args.region:
        raise UsageError("No regions provided: give --region BEGIN..END")
    regions = [parse_region(r) for r in args.region]
    path = metadata_path(args.metadata)
    bm = open_block_manager(path)
    try:
        with text_output(None) as out:
            rmap(bm, regions, out)
    finally:
        bm.close()
    return 0
