"""``dmthin dump``: thin metadata to XML or human-readable text (thin_dump)."""
from __future__ import annotations

import argparse
from typing import Any

from ..errors import BTreeError, UsageError
from ..pdata.block import BlockManager
from ..thin.dump import dump, open_block_manager, total_mapped
from ..thin.dump_shared import write_xml1
from ..thin.human import HumanReadableWriter
from ..thin.xml import XmlWriter
from .commands import SUMMARIES
from .common import (
    add_command,
    add_metadata_arg,
    add_metadata_snap_arg,
    add_version_arg,
    metadata_path,
    metadata_snap_arg,
    parse_dev_id,
    text_output,
)
from .progress import command_report, is_terminal

#: below this many mappings a dump is quick: no bar
PROGRESS_MIN_MAPPINGS = 100_000


def register(subs: Any) -> None:
    """Add the ``dump`` subcommand."""
    p = add_command(
        subs, "dump", run, SUMMARIES["dump"], tool=True,
        description="Write thin-pool metadata as thin_dump 0.9.0 XML (or its human-readable "
                    "form). METADATA is a metadata file or device, or a pool directory.")
    add_version_arg(p)
    add_metadata_arg(p, nargs="?")
    p.add_argument("-f", "--format", choices=("xml", "xml1", "human", "human_readable"),
                   default="xml", help="output format: xml (0.9.0's, the default), xml1 "
                   "(1.x's: shared leaves as <def>/<ref>), human")
    add_metadata_snap_arg(p, "dump")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument("--dev-id", action="append", metavar="ID",
                   help="dump only this device (repeatable)")
    p.add_argument("--skip-mappings", action="store_true", help="omit the mappings")
    p.add_argument("-r", "--repair", action="store_true",
                   help="dump what survives of damaged metadata (as repair reads it; what "
                        "was lost goes to stderr)")


def _dump_repaired(bm: BlockManager, args: argparse.Namespace) -> int:
    # The repair scanner only for --repair: importing it (salvage, the
    # repaired metadata's writer) is a third of a plain dump's start-up.
    from ..thin.repair import emit_plan, plan_repair
    plan = plan_repair(bm)
    if args.dev_id is not None:
        plan = plan._replace(devices={i: d for i, d in plan.devices.items()
                                      if i in args.dev_id})
    if args.skip_mappings:
        for d in plan.devices.values():
            d.leaves = []
    with command_report("dump", "map") as report:
        for line in plan.report:
            report.warning(line)
        with text_output(args.output) as out:
            writer = XmlWriter(out) if args.format == "xml" else HumanReadableWriter(out)
            emit_plan(bm, plan, writer)
    return 0


def run(args: argparse.Namespace) -> int:
    """Dump the metadata; return 0.  Raises :class:`UsageError`,
    :class:`~dmthin.errors.MetadataError` and :class:`OSError`."""
    snap = metadata_snap_arg(args)
    path = metadata_path(args.metadata)
    if args.dev_id is not None:
        args.dev_id = [parse_dev_id(i) for i in args.dev_id]
    if args.repair and snap is not None:
        raise UsageError("--repair dumps the live metadata: drop -m")
    bm = open_block_manager(path)
    try:
        if args.repair:
            return _dump_repaired(bm, args)
        total = total_mapped(bm, snap) if is_terminal() else 0
        if args.format == "xml1":
            with text_output(args.output) as out:
                write_xml1(bm, out, metadata_snap=snap, dev_ids=args.dev_id,
                           skip_mappings=args.skip_mappings)
            return 0
        with command_report("dump", "map", min_step=65536) as report, \
                text_output(args.output) as out:
            writer = XmlWriter(out) if args.format == "xml" else HumanReadableWriter(out)
            dump(bm, writer, metadata_snap=snap, dev_ids=args.dev_id,
                 skip_mappings=args.skip_mappings,
                 progress=(lambda done: report.progress(done, total))
                 if total >= PROGRESS_MIN_MAPPINGS else None)
    except BTreeError as e:
        raise BTreeError(f"{e}; 'dmthin dump --repair' writes what survives", e.block) from e
    finally:
        bm.close()
    return 0
