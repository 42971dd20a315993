"""Who is using a block device: mounts (mountinfo, psutil) and holders (sysfs).

Used before removing a dm device so the refusal names the mount point or
the holder instead of a bare EBUSY.
"""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from ..blockdev import file_holders, holders_of
from ..errors import Busy

if TYPE_CHECKING:     # task imports this module: the type is only for annotations
    from .task import DeviceInfo


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo``."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_of(major: int, minor: int) -> list[str]:
    """Mount points of the block device ``major:minor``.

    Reads ``/proc/self/mountinfo``, whose third field is the mounted
    device's number, so mounts naming ``/dev/mapper/x``, ``/dev/dm-N`` or
    a node that is gone all match.  Falls back to psutil's
    ``disk_partitions`` (comparing ``st_rdev``) when mountinfo is not
    readable.
    """
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError:
        return _mounts_by_psutil(major, minor)
    found: list[str] = []
    want = f"{major}:{minor}"
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[2] == want:
            mp = _unescape(fields[4])
            if mp not in found:
                found.append(mp)
    return found


def _mounts_by_psutil(major: int, minor: int) -> list[str]:
    import psutil
    want = os.makedev(major, minor)
    found: list[str] = []
    try:
        parts = psutil.disk_partitions(all=True)
    except OSError:
        return found
    for p in parts:
        if not p.device.startswith("/"):
            continue
        try:
            if os.stat(p.device).st_rdev == want and p.mountpoint not in found:
                found.append(p.mountpoint)
        except OSError:
            continue
    return found


def check_not_busy(info: DeviceInfo) -> None:
    """Raise :class:`~dmthin.errors.Busy` if the device in *info* (a
    :class:`~dmthin.dm.task.DeviceInfo`) is mounted or held by another
    device, naming the mount point or holder and the fix."""
    if not info.exists:
        return
    mounts = mounts_of(info.major, info.minor)
    if mounts:
        raise Busy(f"dm device {info.name} is mounted on {mounts[0]}; "
                   f"unmount it first (umount {mounts[0]})")
    holders = holders_of(info.major, info.minor)
    if holders:
        raise Busy(f"dm device {info.name} is held by {', '.join(holders)}; "
                   "remove or deactivate those first")


def in_use(info: DeviceInfo, own_opens: int = 0) -> bool:
    """True if something besides our own *own_opens* file descriptors uses
    the device: the kernel's open count is higher.  Every mount and every
    holder (a dm device stacked on it, a loop device over it) keeps the
    device open, so the count covers them: mountinfo and sysfs are not
    read (:func:`check_not_busy` names them once the kernel says EBUSY)."""
    return info.exists and info.open_count > own_opens


__all__ = ["check_not_busy", "file_holders", "holders_of", "in_use", "mounts_of"]
