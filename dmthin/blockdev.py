"""Block devices seen through sysfs (no root, no device-mapper binding):
what is stacked on a device or on the loop devices of a file.

Used by the facade to refuse writing metadata a live kernel pool holds, and
by :mod:`dmthin.dm.busy` to name the holders of a device it cannot remove.
"""
from __future__ import annotations

import os
import stat


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


def file_holders(path: str | os.PathLike[str]) -> list[str]:
    """Devices stacked on the file or block device *path*: for a regular
    file, the holders of every loop device backed by it (matched by device
    and inode); for a block device, its own holders.  Reads sysfs only (no
    root needed); dm holders are named by their dm name."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    if stat.S_ISBLK(st.st_mode):
        return holders_of(os.major(st.st_rdev), os.minor(st.st_rdev))
    if not stat.S_ISREG(st.st_mode):
        return []
    found: list[str] = []
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return found
    for name in names:
        if not name.startswith("loop"):
            continue
        try:
            with open(f"/sys/block/{name}/loop/backing_file", encoding="utf-8",
                      errors="surrogateescape") as f:
                backing = f.read().rstrip("\n")
            with open(f"/sys/block/{name}/dev", encoding="ascii") as f:
                major, minor = (int(x) for x in f.read().split(":"))
            bst = os.stat(backing)
        except (OSError, ValueError):
            continue
        if (bst.st_dev, bst.st_ino) == (st.st_dev, st.st_ino):
            found += [h for h in holders_of(major, minor) if h not in found]
    return found


def backing_file_of(node: str) -> str | None:
    """The backing file of the loop device *node* (``/dev/loopN``), from
    sysfs; None for any other device or an unbound loop device."""
    name = os.path.basename(node)
    if not (name.startswith("loop") and name[4:].isdigit()):
        return None
    try:
        with open(f"/sys/block/{name}/loop/backing_file", encoding="utf-8",
                  errors="surrogateescape") as f:
            return f.read().rstrip("\n") or None
    except OSError:
        return None
