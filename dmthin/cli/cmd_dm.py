"""``dmthin dm version|ls``: diagnostics of the real device-mapper backend."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ..dm import task, udev
from ..dm.udev import BlockDevice
from .commands import SUMMARIES
from .common import add_command, add_group, emit_json


def register(subs: Any) -> None:
    """Add the ``dm`` command group."""
    dm = add_group(subs, "dm", SUMMARIES["dm"],
                   description="Show libdevmapper and kernel device-mapper versions, or list "
                               "dm devices, through dmthin's binding.")
    add_command(dm, "version", run_version, "library, driver and thin target versions")
    ls = add_command(dm, "ls", run_ls, "list device-mapper devices (name and major:minor)",
                     description="List device-mapper devices as 'dmsetup ls' does; with --long "
                                 "or --json also their state, uuid, holders, the devices under "
                                 "them and the loop devices bound to files, as sysfs and udev "
                                 "describe them (udev's properties when udevd has seen them).")
    ls.add_argument("--dmthin", action="store_true", help="only devices made by dmthin")
    out = ls.add_mutually_exclusive_group()
    out.add_argument("-l", "--long", action="store_true",
                     help="one line per device: kernel name, state, uuid, holders, devices "
                          "under it; then the loop devices and their backing files")
    out.add_argument("--json", action="store_true",
                     help="the same as JSON, with the properties udev keeps for each device")


def run_version(args: argparse.Namespace) -> int:
    print(f"Library version:   {task.library_version()}")
    print(f"Driver version:    {task.driver_version()}")
    targets = task.target_versions()
    for name in ("thin-pool", "thin"):
        if name in targets:
            print(f"Target {name + ':':<11}{'.'.join(map(str, targets[name]))}")
    print(f"Udev sync:         {'yes' if task.udev_sync() else 'no'}")
    return 0


def run_ls(args: argparse.Namespace) -> int:
    devices = task.list_devices()
    if args.dmthin:
        devices = [d for d in devices if d[0].startswith("dmthin-")]
    if not (args.long or args.json):
        if not devices:
            print("No devices found")
        for name, major, minor in devices:
            print(f"{name}\t({major}:{minor})")
        return 0
    dms = [d for d in (udev.describe(major, minor) for _, major, minor in devices) if d]
    loops = udev.loop_devices()
    if args.dmthin:      # the loop devices under dmthin's devices
        under = {s for d in dms for s in d.slaves}
        loops = [lo for lo in loops if lo.kernel_name in under]
    if args.json:
        emit_json({"devices": [d.to_json() for d in dms], "loops": [lo.to_json() for lo in loops]})
    else:
        _print_long(dms, loops)
    return 0


def _print_long(dms: list[BlockDevice], loops: list[BlockDevice]) -> None:
    backing = {lo.kernel_name: lo.backing_file for lo in loops}

    def under(d: BlockDevice) -> str:
        return ",".join(f"{s}={backing[s]}" if s in backing else s for s in d.slaves) or "-"

    rows = [("NAME", "DEV", "KNAME", "STATE", "UUID", "HOLDERS", "DEVICES")]
    for d in dms:
        state = ("suspended" if d.suspended else "active") + (",ro" if d.read_only else "")
        rows.append((d.dm_name or d.kernel_name, d.dev, d.kernel_name, state, d.dm_uuid or "-",
                     ",".join(d.holders) or "-", under(d)))
    if len(rows) == 1:
        print("No devices found")
    else:
        _table(rows)
    if loops:
        print()
        _table([("LOOP", "DEV", "FLAGS", "HOLDERS", "BACKING-FILE")] + [
            (lo.kernel_name, lo.dev,
             ",".join(f for f, on in (("autoclear", lo.autoclear), ("ro", lo.read_only)) if on)
             or "-", ",".join(lo.holders) or "-", lo.backing_file or "-") for lo in loops])


def _table(rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns, two spaces apart; the last one as it is."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join([c.ljust(w) for c, w in zip(r, widths, strict=False)] + [r[-1]]))
