"""Who is using a block device: mounts (psutil) and holders (sysfs).

Used before removing a dm device so the refusal names the mount point or
the holder instead of a bare EBUSY.
"""
from __future__ import annotations

import os
import re

from ..errors import Busy


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo``."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_of(major: int, minor: int) -> list[str]:
    """Mount points of the block device ``major:minor``.

    Mounts may name ``/dev/mapper/x`` or ``/dev/dm-N``, so devices are
    compared by ``st_rdev``.  Falls back to /proc/self/mountinfo's
    ``major:minor`` field when psutil is missing.
    """
    want = os.makedev(major, minor)
    found: list[str] = []
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        psutil = None
    if psutil is not None:
        try:
            parts = psutil.disk_partitions(all=True)
        except OSError:
            parts = []
        for p in parts:
            if not p.device.startswith("/"):
                continue
            try:
                st = os.stat(p.device)
            except OSError:
                continue
            if st.st_rdev == want and p.mountpoint not in found:
                found.append(p.mountpoint)
    # mountinfo names the device number directly (also for lazily gone nodes)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[2] == f"{major}:{minor}":
                    mp = _unescape(fields[4])
                    if mp not in found:
                        found.append(mp)
    except OSError:
        pass
    return found


def holders_of(major: int, minor: int) -> list[str]:
    """Names of the devices stacked on ``major:minor`` (sysfs ``holders/``);
    dm holders are reported by their dm name."""
    base = f"/sys/dev/block/{major}:{minor}/holders"
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return []
    out = []
    for e in entries:
        try:
            with open(f"/sys/block/{e}/dm/name", encoding="utf-8") as f:
                out.append(f.read().strip() or e)
        except OSError:
            out.append(e)
    return out


def check_not_busy(info) -> None:
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


def in_use(info, own_opens: int = 0) -> bool:
    """True if something besides our own *own_opens* file descriptors uses
    the device: a higher open count, a mount, or a holder."""
    if not info.exists:
        return False
    return (info.open_count > own_opens or bool(mounts_of(info.major, info.minor))
            or bool(holders_of(info.major, info.minor)))
