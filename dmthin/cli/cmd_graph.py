"""``dmthin graph``: inspect a Docker-style devicemapper graph root."""
from __future__ import annotations

import json


def register(subs) -> None:
    p = subs.add_parser("graph", help="Docker devicemapper graph driver roots",
                        description="Inspect a graph-driver root made by dmthin.graph "
                                    "(ROOT/devicemapper is its pool).")
    gs = p.add_subparsers(dest="graph_command", metavar="SUBCOMMAND")
    gs.required = True
    s = gs.add_parser("status", help="Docker's 'docker info' storage section")
    s.add_argument("root")
    s.add_argument("-o", "--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a dm.* storage option (repeatable)")
    s.add_argument("--backend", choices=("sim", "kernel"), help="default: the pool's own")
    s.set_defaults(func=status)
    ls = gs.add_parser("ls", help="devices: hash, thin id, size, flags")
    ls.add_argument("root")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=list_devices)


def status(args) -> int:
    """Open the root as the driver would (loop files keep their sizes unless
    dm.loopdatasize/dm.loopmetadatasize say otherwise) and print Status()."""
    from pathlib import Path

    from ..errors import UsageError
    from ..graph import DeviceSet, format_status
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


def list_devices(args) -> int:
    from ..graph.store import MetadataStore
    from pathlib import Path
    meta = Path(args.root) / "metadata"
    if not meta.is_dir():
        from ..errors import UsageError
        raise UsageError(f"{args.root} is not a graph root (no metadata/ directory)")
    devices = MetadataStore(meta).load_devices()
    rows = [{"hash": h or "base", "device_id": i.device_id, "size": i.size,
             "transaction_id": i.transaction_id, "initialized": i.initialized,
             "deleted": i.deleted} for h, i in sorted(devices.items())]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            flags = ",".join(f for f in ("initialized", "deleted") if r[f]) or "-"
            print(f"{r['hash']:<40} {r['device_id']:>8} {r['size']:>14} "
                  f"{r['transaction_id']:>6} {flags}")
    return 0
