"""``dmthin ls``: per-device block usage of thin metadata (thin_ls)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ..thin.dump import open_block_manager
from ..thin.ls import DEFAULT_FIELDS, FIELDS, parse_fields, thin_ls
from .commands import SUMMARIES
from .common import add_command, add_metadata_arg, add_version_arg, metadata_path


def register(subs: Any) -> None:
    """Add the ``ls`` subcommand."""
    p = add_command(
        subs, "ls", run, SUMMARIES["ls"], tool=True,
        description="List the thin devices in thin-pool metadata with mapped, exclusive and "
                    "shared blocks, as thin_ls 0.9.0. METADATA is a metadata file or device, "
                    "or a pool directory. Fields: " + ", ".join(FIELDS) + ".")
    add_version_arg(p)
    add_metadata_arg(p)
    p.add_argument("-o", "--format", metavar="FIELDS",
                   help="comma-separated fields (default " + ",".join(DEFAULT_FIELDS) + ")")
    p.add_argument("--no-headers", action="store_true", help="omit the header line")
    p.add_argument("-m", "--metadata-snap", action="store_true",
                   help="read the held metadata snapshot")


def run(args: argparse.Namespace) -> int:
    """Print the table; return 0.  Raises :class:`~dmthin.errors.UsageError`,
    :class:`~dmthin.errors.MetadataError` and :class:`OSError`."""
    fields = DEFAULT_FIELDS if args.format is None else parse_fields(args.format)
    path = metadata_path(args.metadata)
    bm = open_block_manager(path, cache_blocks=4096)
    try:
        text = thin_ls(bm, fields, headers=not args.no_headers,
                       metadata_snap=True if args.metadata_snap else None)
    finally:
        bm.close()
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0
