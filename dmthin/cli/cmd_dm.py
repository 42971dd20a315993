"""``dmthin dm version|ls``: diagnostics of the real device-mapper backend."""
from __future__ import annotations

import argparse
from typing import Any

from ..dm import task
from .commands import SUMMARIES
from .common import add_command, add_group


def register(subs: Any) -> None:
    """Add the ``dm`` command group."""
    dm = add_group(subs, "dm", SUMMARIES["dm"],
                   description="Show libdevmapper and kernel device-mapper versions, or list "
                               "dm devices, through dmthin's binding.")
    add_command(dm, "version", run_version, "library, driver and thin target versions")
    ls = add_command(dm, "ls", run_ls, "list device-mapper devices (name and major:minor)")
    ls.add_argument("--dmthin", action="store_true", help="only devices made by dmthin")


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
    if not devices:
        print("No devices found")
    for name, major, minor in devices:
        print(f"{name}\t({major}:{minor})")
    return 0
