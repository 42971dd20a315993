"""``dmthin graph``: inspect a Docker-style devicemapper graph root."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..graph import DeviceSet, format_status
from ..graph.store import MetadataStore
from .commands import SUMMARIES
from .common import add_backend_arg, add_command, add_group, emit_json


def register(subs: Any) -> None:
    """Add the ``graph`` command group."""
    graph = add_group(subs, "graph", SUMMARIES["graph"],
                      description="Inspect a graph-driver root made by dmthin.graph "
                                  "(ROOT/devicemapper is its pool).")
    s = add_command(graph, "status", run_status, "Docker's 'docker info' storage section")
    s.add_argument("root")
    s.add_argument("-o", "--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a dm.* storage option (repeatable)")
    add_backend_arg(s)
    ls = add_command(graph, "ls", run_ls, "devices: hash, thin id, size, flags")
    ls.add_argument("root")
    ls.add_argument("--json", action="store_true")


def run_status(args: argparse.Namespace) -> int:
    """Open the root as the driver would (loop files keep their sizes unless
    dm.loopdatasize/dm.loopmetadatasize say otherwise) and print Status().
    Raises :class:`UsageError` if ROOT is not a graph root."""
    root = Path(args.root)
    if not (root / "metadata" / "base").is_file():
        raise UsageError(f"{root} is not a graph root (no metadata/base); "
                         "create one with dmthin.graph.Driver or 'dmthin replay'")
    opts = list(args.opt)
    keys = {o.partition("=")[0].strip().lower() for o in opts}
    for key, name in (("dm.loopdatasize", "data"), ("dm.loopmetadatasize", "metadata")):
        f = root / "devicemapper" / name
        if key not in keys and f.exists():
            opts.append(f"{key}={f.stat().st_size}")
    ds = DeviceSet(root, opts, backend=args.backend, cleanup_interval=None)
    try:
        print("Storage Driver: devicemapper")
        print(format_status(ds.status()), end="")
    finally:
        ds.shutdown()
    return 0


def run_ls(args: argparse.Namespace) -> int:
    """List the root's devices.  Raises :class:`UsageError` if ROOT is not a
    graph root."""
    meta = Path(args.root) / "metadata"
    if not meta.is_dir():
        raise UsageError(f"{args.root} is not a graph root (no metadata/ directory)")
    devices = MetadataStore(meta).load_devices()
    rows = [{"hash": h or "base", "device_id": i.device_id, "size": i.size,
             "transaction_id": i.transaction_id, "initialized": i.initialized,
             "deleted": i.deleted} for h, i in sorted(devices.items())]
    if args.json:
        emit_json(rows)
    else:
        for r in rows:
            flags = ",".join(f for f in ("initialized", "deleted") if r[f]) or "-"
            print(f"{r['hash']:<40} {r['device_id']:>8} {r['size']:>14} "
                  f"{r['transaction_id']:>6} {flags}")
    return 0
