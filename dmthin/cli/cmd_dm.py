"""``dmthin dm version|ls``: diagnostics of the real device-mapper backend."""
from __future__ import annotations

import argparse


def register(subs) -> None:
    p = subs.add_parser("dm", help="device-mapper diagnostics (kernel backend)",
                        description="Show libdevmapper and kernel device-mapper versions, "
                                    "or list dm devices, through dmthin's binding.")
    sub = p.add_subparsers(dest="dm_command", metavar="SUBCOMMAND")
    sub.required = True
    v = sub.add_parser("version", help="library, driver and thin target versions")
    v.set_defaults(func=_version)
    ls = sub.add_parser("ls", help="list device-mapper devices (name and major:minor)")
    ls.add_argument("--dmthin", action="store_true", help="only devices made by dmthin")
    ls.set_defaults(func=_ls)


def _version(args: argparse.Namespace) -> int:
    from ..dm import task
    print(f"Library version:   {task.library_version()}")
    print(f"Driver version:    {task.driver_version()}")
    targets = task.target_versions()
    for name in ("thin-pool", "thin"):
        if name in targets:
            print(f"Target {name + ':':<11}{'.'.join(map(str, targets[name]))}")
    print(f"Udev sync:         {'yes' if task.udev_sync() else 'no'}")
    return 0


def _ls(args: argparse.Namespace) -> int:
    from ..dm import task
    devices = task.list_devices()
    if args.dmthin:
        devices = [d for d in devices if d[0].startswith("dmthin-")]
    if not devices:
        print("No devices found")
    for name, major, minor in devices:
        print(f"{name}\t({major}:{minor})")
    return 0
