"""``dmthin thin``: thin devices of a pool -- create, snapshot, delete, write,
read, discard, status, list (ls).  Offsets and lengths take units (``64K``,
``1M``, ``8s``); large reads and writes stream in chunks with a progress
bar on stderr when it is a terminal (:mod:`dmthin.cli.thin_io`)."""
from __future__ import annotations

import argparse
import functools
from typing import Any

from ..pool import Pool
from ..units import format_size, parse_size
from . import common
from .activation import register_thin
from .commands import SUMMARIES
from .common import emit_json
from .pool_args import add_pool_args, open_pool
from .thin_io import run_discard, run_read, run_write


def _parsed(handler: common.Handler) -> common.Handler:
    """*handler* after parsing ids, offsets and lengths, so a bad one is a
    one-line error like every other (argparse would print its usage too)."""
    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        for name in ("dev_id", "new_id", "origin_id"):
            if getattr(args, name, None) is not None:
                setattr(args, name, common.parse_dev_id(getattr(args, name)))
        for name, what in (("offset", "offset"), ("length", "length"),
                           ("size", "thin device size")):
            value = getattr(args, name, None)
            if isinstance(value, str):
                setattr(args, name, parse_size(value, what))
        return handler(args)
    return run


def run_create(args: argparse.Namespace) -> int:
    with open_pool(args) as pool:
        pool.create_thin(args.dev_id, args.size)
    return 0


def run_snapshot(args: argparse.Namespace) -> int:
    with open_pool(args) as pool:
        pool.create_snap(args.new_id, args.origin_id)
    return 0


def run_delete(args: argparse.Namespace) -> int:
    with open_pool(args) as pool:
        pool.delete(args.dev_id)
    return 0


def run_resize(args: argparse.Namespace) -> int:
    with open_pool(args) as pool:
        # The size lives in the table (pool.json), not in the kernel's metadata.
        pool.resize_thin(args.dev_id, args.size)
    return 0


def _thin_doc(pool: Pool, dev_id: int) -> dict[str, Any]:
    thin = pool.thin(dev_id)
    st = thin.status()
    return {"dev_id": dev_id, "size": thin.size, "status_line": st.to_line(),
            "mapped_sectors": int(st.mapped_sectors),
            "mapped_bytes": int(st.mapped_sectors) * 512,
            "highest_mapped_sector": None if st.highest_mapped_sector is None
            else int(st.highest_mapped_sector),
            "table_line": thin.table_line()}


def run_status(args: argparse.Namespace) -> int:
    with open_pool(args, readonly=True) as pool:
        doc = _thin_doc(pool, args.dev_id)
    if args.json:
        emit_json(doc)
    else:
        print(f"0 {doc['size'] // 512} thin {doc['status_line']}")
        print(f"Size: {format_size(doc['size'])} ({doc['size']} bytes)")
        print(f"Mapped: {format_size(doc['mapped_bytes'])} ({doc['mapped_bytes']} bytes)")
    return 0


def run_list(args: argparse.Namespace) -> int:
    # The status of each device is read from its (activated) thin device;
    # the facade has no status of an inactive thin.
    with open_pool(args, readonly=True) as pool:
        docs = [_thin_doc(pool, i) if i in pool.config.thins else
                {"dev_id": i, "size": None, "mapped_bytes": None, "status_line": None}
                for i in pool.thin_ids()]
    if args.json:
        emit_json(docs)
        return 0
    print(f"{'DEV':>8} {'SIZE':>10} {'MAPPED':>10}  STATUS")
    for d in docs:
        size = "-" if d["size"] is None else format_size(d["size"])
        mapped = "-" if d["mapped_bytes"] is None else format_size(d["mapped_bytes"])
        print(f"{d['dev_id']:>8} {size:>10} {mapped:>10}  {d['status_line'] or '-'}")
    return 0


_METAVARS = {"dev_id": "ID", "new_id": "NEW_ID", "origin_id": "ORIGIN_ID"}


def register(subs: Any) -> None:
    """Add the ``thin`` command group."""
    thin = common.add_group(subs, "thin", SUMMARIES["thin"],
                            description="Thin devices of a pool directory.")

    def sub(name: str, handler: common.Handler, help_text: str, *args: str,
            aliases: tuple[str, ...] = ()) -> argparse.ArgumentParser:
        s = common.add_command(thin, name, _parsed(handler), help_text, aliases=aliases)
        add_pool_args(s)
        for arg in args:
            s.add_argument(arg, metavar=_METAVARS[arg])
        return s

    sub("create", run_create, "create a thin device (create_thin) with a size", "dev_id") \
        .add_argument("--size", required=True, help="virtual size, e.g. 10G")
    sub("snapshot", run_snapshot, "snapshot ORIGIN_ID as NEW_ID (create_snap)",
        "new_id", "origin_id")
    sub("resize", run_resize, "set a thin device's size (the table length; mappings beyond "
        "a smaller size are kept but unreachable)", "dev_id") \
        .add_argument("--size", required=True, help="new virtual size, e.g. 20G")
    sub("delete", run_delete, "delete a thin device", "dev_id")
    s = sub("write", run_write, "write a file (or stdin) into a thin device, then flush",
            "dev_id")
    s.epilog = ("On a full pool with queue_if_no_space a write waits for space like the kernel "
                "does, up to the no-space timeout (60 s; the simulator reads "
                "DMTHIN_SIM_NO_SPACE_TIMEOUT), then fails with ENOSPC. A timeout of 0 (queue "
                "for ever) still gives up after 60 s: nothing can add space while the "
                "command holds the pool.")
    s.add_argument("--offset", default="0", help="byte offset (default 0)")
    s.add_argument("--input", metavar="FILE|-", help="input file (default: stdin)")
    s = sub("read", run_read, "read from a thin device to a file (or stdout)", "dev_id")
    s.add_argument("--offset", default="0", help="byte offset (default 0)")
    s.add_argument("--length", help="bytes to read (default: to the end)")
    s.add_argument("--output", metavar="FILE|-", help="output file (default: stdout)")
    s = sub("discard", run_discard, "discard a byte range (whole blocks inside it are "
            "unmapped)", "dev_id")
    s.add_argument("--offset", required=True, help="byte offset")
    s.add_argument("--length", required=True, help="bytes")
    sub("status", run_status, "a thin device's kernel status line and usage", "dev_id") \
        .add_argument("--json", action="store_true", help="print JSON")
    sub("list", run_list, "list the pool's thin devices", aliases=("ls",)) \
        .add_argument("--json", action="store_true", help="print JSON")
    register_thin(thin, _parsed)
