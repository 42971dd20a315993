"""``dmthin trim``: discard unmapped data blocks of an inactive pool (thin_trim)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import UsageError
from ..thin.trim import trim
from .commands import SUMMARIES
from .common import add_command, add_version_arg, metadata_path


def register(subs: Any) -> None:
    """Add the ``trim`` subcommand."""
    p = add_command(
        subs, "trim", run, SUMMARIES["trim"], tool=True,
        description="Discard every data block no thin device (nor a held metadata snapshot) "
                    "maps: BLKDISCARD on a block device, a punched hole in a file. The pool "
                    "must be inactive.")
    p.add_argument("--metadata-dev", metavar="METADATA",
                   help="metadata file or device, or a pool directory")
    p.add_argument("--data-dev", metavar="DATA", help="data file or device")
    p.add_argument("--pool-inactive", action="store_true", help=argparse.SUPPRESS)
    add_version_arg(p)


def run(args: argparse.Namespace) -> int:
    """Trim; return 0.  Raises :class:`UsageError`, ``Busy``,
    ``MetadataError`` and ``OSError``."""
    if not args.metadata_dev or not args.data_dev:
        raise UsageError("give both --metadata-dev and --data-dev")
    if args.pool_inactive:
        print("--pool-inactive no longer required since we ensure the metadata device is "
              "opened exclusively.", file=sys.stderr)
    trim(metadata_path(args.metadata_dev), args.data_dev,
         emit=lambda line: print(line, file=sys.stderr))
    return 0
