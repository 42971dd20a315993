"""``dmthin delta``: what differs between two thin devices (thin_delta)."""
from __future__ import annotations

import argparse
from typing import Any

from ..errors import UsageError
from ..thin.delta import delta
from ..thin.reader import open_block_manager
from .commands import SUMMARIES
from .common import (
    add_command,
    add_metadata_arg,
    add_metadata_snap_arg,
    add_version_arg,
    metadata_path,
    metadata_snap_arg,
    parse_natural,
    text_output,
)


def register(subs: Any) -> None:
    """Add the ``delta`` subcommand."""
    p = add_command(
        subs, "delta", run, SUMMARIES["delta"], tool=True,
        description="Compare the mappings of two thin devices (a snapshot and its origin, "
                    "or two snapshots) and write thin_delta 0.9.0's XML: ranges of virtual "
                    "blocks that are the same, different, or mapped on one side only.")
    add_metadata_arg(p, nargs="?")
    p.add_argument("--snap1", "--thin1", dest="snap1", metavar="ID", help="the left device")
    p.add_argument("--snap2", "--thin2", dest="snap2", metavar="ID", help="the right device")
    add_metadata_snap_arg(p, "compare devices in")
    p.add_argument("--verbose", action="store_true",
                   help="list every range with its data blocks")
    add_version_arg(p)


def run(args: argparse.Namespace) -> int:
    """Write the delta; return 0.  Raises :class:`UsageError`,
    :class:`~dmthin.errors.MetadataError` and :class:`OSError`."""
    snap = metadata_snap_arg(args)
    for name in ("snap1", "snap2"):
        if getattr(args, name) is None:
            raise UsageError(f"--{name} not specified")
    path = metadata_path(args.metadata)
    dev1, dev2 = parse_natural(args.snap1), parse_natural(args.snap2)
    bm = open_block_manager(path)
    try:
        with text_output(None) as out:
            delta(bm, dev1, dev2, out, verbose=args.verbose, metadata_snap=snap)
    finally:
        bm.close()
    return 0
