"""``dmthin dump``: thin metadata to XML or human-readable text (thin_dump)."""
from __future__ import annotations

import argparse
import os
from typing import Any

from ..errors import UsageError
from ..thin.dump import dump, open_block_manager, total_mapped
from ..thin.human import HumanReadableWriter
from ..thin.xml import XmlWriter
from .commands import SUMMARIES
from .common import add_command, add_metadata_arg, metadata_path, text_output
from .progress import command_report, is_terminal

#: below this many mappings a dump is quick: no bar
PROGRESS_MIN_MAPPINGS = 100_000


def register(subs: Any) -> None:
    """Add the ``dump`` subcommand."""
    p = add_command(
        subs, "dump", run, SUMMARIES["dump"], tool=True,
        description="Write thin-pool metadata as thin_dump 0.9.0 XML (or its human-readable "
                    "form). METADATA is a metadata file or device, or a pool directory.")
    add_metadata_arg(p, nargs="?")
    p.add_argument("-f", "--format", choices=("xml", "human", "human_readable"), default="xml",
                   help="output format (default xml)")
    p.add_argument("-m", "--metadata-snap", nargs="?", const="", default=None, metavar="BLOCK",
                   help="dump the held metadata snapshot (or the one at BLOCK)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument("--dev-id", type=int, action="append", metavar="ID",
                   help="dump only this device (repeatable)")
    p.add_argument("--skip-mappings", action="store_true", help="omit the mappings")


def fix_optional_snap(args: argparse.Namespace) -> None:
    """``-m [BLOCK]`` before METADATA: argparse gives the path to -m; undo that.
    Raises :class:`UsageError` when METADATA is missing."""
    snap = args.metadata_snap
    if args.metadata is None and snap not in (None, "") \
            and (not snap.isdigit() or os.path.exists(snap)):
        args.metadata, args.metadata_snap = snap, ""
    if args.metadata is None:
        raise UsageError("missing METADATA argument (a metadata file, device or pool "
                         "directory)")


def _snap_arg(value: str) -> bool | int:
    if value == "":
        return True
    if not value.isdigit():
        raise UsageError(f"-m/--metadata-snap takes a block number, not {value!r}")
    return int(value)


def run(args: argparse.Namespace) -> int:
    """Dump the metadata; return 0.  Raises :class:`UsageError`,
    :class:`~dmthin.errors.MetadataError` and :class:`OSError`."""
    fix_optional_snap(args)
    path = metadata_path(args.metadata)
    snap = None if args.metadata_snap is None else _snap_arg(args.metadata_snap)
    bm = open_block_manager(path)
    try:
        total = total_mapped(bm, snap) if is_terminal() else 0
        with command_report("dump", "map", min_step=65536) as report, \
                text_output(args.output) as out:
            writer = XmlWriter(out) if args.format == "xml" else HumanReadableWriter(out)
            dump(bm, writer, metadata_snap=snap, dev_ids=args.dev_id,
                 skip_mappings=args.skip_mappings,
                 progress=(lambda done: report.progress(done, total))
                 if total >= PROGRESS_MIN_MAPPINGS else None)
    finally:
        bm.close()
    return 0
