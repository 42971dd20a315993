"""Handlers of ``dmthin pool adopt|activate|deactivate|resize`` and
``dmthin thin activate|deactivate``: kernel state that outlives the command,
like dmsetup's and LVM's.  Registered by :mod:`dmthin.cli.cmd_pool` and
:mod:`dmthin.cli.cmd_thin`.

With the simulator there are no kernel devices: a pool or thin device is
active only while a process holds it open, so activation is refused there.
"""
from __future__ import annotations

import argparse
from typing import Any

from ..errors import UsageError
from ..pool import Pool
from ..target.table import POOL_FEATURES
from .common import Handler, add_command, parse_dev_id, parse_natural
from .pool_args import add_backend_arg, add_pool_args

KERNEL = "kernel"
SIM_NOTE = ("with the simulator a pool is active only while a process holds it open; "
            "use --backend kernel (root, device-mapper)")


def _kernel(args: argparse.Namespace) -> None:
    if args.backend != KERNEL:
        raise UsageError(SIM_NOTE)


def _open(args: argparse.Namespace, readonly: bool = False, name: str | None = None) -> Pool:
    return Pool.open(args.pooldir, backend=args.backend, readonly=readonly, name=name,
                     allow_other_owner=args.allow_other_owner)


def run_adopt(args: argparse.Namespace) -> int:
    """Record a pool made elsewhere in POOLDIR/pool.json; print its table."""
    lwm = None if args.low_water_mark is None else parse_natural(args.low_water_mark)
    with Pool.adopt(args.pooldir, data=args.data, metadata=args.metadata,
                    backend=args.backend, name=args.name, low_water_mark=lwm,
                    features=tuple(args.feature), allow_other_owner=args.allow_other_owner,
                    record=True) as pool:
        print(pool.table_line())
    return 0


def run_pool_activate(args: argparse.Namespace) -> int:
    """Make the pool active and leave it so; print its device."""
    _kernel(args)
    with _open(args, readonly=args.readonly, name=args.name) as pool:
        print(f"/dev/mapper/{pool.info().device_name}")
        pool.close(keep_active=True)
    return 0


def run_pool_deactivate(args: argparse.Namespace) -> int:
    """Remove the pool's thin devices, the pool and its loop devices."""
    _kernel(args)
    _open(args, readonly=True, name=args.name).deactivate()
    return 0


def run_resize(args: argparse.Namespace) -> int:
    """Grow the data and/or metadata device, live."""
    if args.data_size is None and args.metadata_size is None:
        raise UsageError("pool resize: give --data-size and/or --metadata-size")
    with _open(args) as pool:
        if args.metadata_size is not None:
            pool.resize_metadata(args.metadata_size)
        if args.data_size is not None:
            pool.resize_data(args.data_size)
        print(pool.table_line())
    return 0


def run_thin_activate(args: argparse.Namespace) -> int:
    """Activate a thin device (and its pool) and leave them active; print
    the device node."""
    _kernel(args)
    dev_id = parse_dev_id(args.dev_id)
    with _open(args, readonly=args.readonly) as pool:
        thin = pool.thin(dev_id, size=args.size, name=args.name)
        print(thin.path)
        pool.close(keep_active=True)
    return 0


def run_thin_deactivate(args: argparse.Namespace) -> int:
    """Deactivate a thin device, whoever activated it (EBUSY if in use)."""
    _kernel(args)
    dev_id = parse_dev_id(args.dev_id)
    with _open(args, readonly=True) as pool:
        pool.deactivate_thin(dev_id)
    return 0


def _state_args(p: argparse.ArgumentParser, thin: bool = False) -> None:
    add_pool_args(p, backend=KERNEL)
    if thin:
        p.add_argument("dev_id", metavar="ID")
    else:
        p.add_argument("--name", help="the pool's device-mapper name (default: the recorded "
                                      "one, or dmthin-MAJ:MIN-INO-pool of POOLDIR)")


def register_pool(pool: Any) -> None:
    """Add ``pool adopt|activate|deactivate|resize`` to the ``pool`` group."""
    a = add_command(pool, "adopt", run_adopt, "adopt a pool made elsewhere (Docker, LVM)",
                    description="Serve an existing data + metadata pair (files or block "
                                "devices) from POOLDIR: block size and sizes come from the "
                                "superblock; POOLDIR/pool.json records the paths. Data and "
                                "metadata default to POOLDIR/data and POOLDIR/metadata.")
    a.add_argument("pooldir", metavar="POOLDIR")
    a.add_argument("--data", metavar="FILE|DEV", help="the data file or device")
    a.add_argument("--metadata", metavar="FILE|DEV", help="the metadata file or device")
    add_backend_arg(a, "sim")
    a.add_argument("--name", help="the pool's device-mapper name (kernel backend)")
    a.add_argument("--low-water-mark", metavar="BLOCKS",
                   help="free data blocks that raise an event (default min(32768, blocks/10))")
    a.add_argument("--feature", action="append", default=[], metavar="F",
                   help="pool feature: " + ", ".join(POOL_FEATURES) + " (repeatable)")
    a.add_argument("--allow-other-owner", action="store_true",
                   help="use a pool directory owned by another user (refused by default)")
    s = add_command(pool, "activate", run_pool_activate, "make the pool active in the kernel "
                    "and leave it so (for dm.thinpooldev)")
    _state_args(s)
    s.add_argument("--readonly", action="store_true", help="load it read_only")
    _state_args(add_command(pool, "deactivate", run_pool_deactivate,
                            "remove the pool, its thin devices and loop devices"))
    r = add_command(pool, "resize", run_resize, "grow the data and/or metadata, live")
    add_pool_args(r)
    r.add_argument("--data-size", help="new data size, e.g. 200G")
    r.add_argument("--metadata-size", help="new metadata size, e.g. 4G")


def register_thin(thin: Any, parsed: Any) -> None:
    """Add ``thin activate|deactivate`` to the ``thin`` group; *parsed*
    wraps a handler so ids and sizes are parsed first."""
    handler: Handler = parsed(run_thin_activate)
    s = add_command(thin, "activate", handler, "activate a thin device and leave it active")
    _state_args(s, thin=True)
    s.add_argument("--size", help="its size, e.g. 10G (default: the recorded size)")
    s.add_argument("--name", help="its device-mapper name (default: the recorded one, or "
                                  "dmthin-MAJ:MIN-INO-ID of POOLDIR)")
    s.add_argument("--readonly", action="store_true", help="a read-only device")
    _state_args(add_command(thin, "deactivate", parsed(run_thin_deactivate),
                            "deactivate a thin device (EBUSY if in use)"), thin=True)
