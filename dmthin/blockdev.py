"""Block devices seen through sysfs (no root, no device-mapper binding):
what is stacked on a device or on the loop devices of a file.

Used by the facade to refuse writing metadata a live kernel pool holds, by
:mod:`dmthin.dm.busy` to name the holders of a device it cannot remove,
and by :mod:`dmthin.dm.udev` (the same reading when libudev is missing).

Holders are read here from sysfs directly, not through pyudev: libudev has
no accessor for ``holders/`` (pyudev would list the same directory), and
loading it costs an ``ldconfig`` run per process on every pool open,
simulator included.
"""
from __future__ import annotations

import os
import stat


def sys_path(major: int, minor: int) -> str:
    """The sysfs directory of block device ``major:minor``."""
    return f"/sys/dev/block/{major}:{minor}"


def read_attr(path: str, attr: str) -> str | None:
    """The sysfs attribute *attr* of the device directory *path* without
    its trailing newline (as libudev returns it), or None if unreadable."""
    try:
        with open(os.path.join(path, attr), encoding="utf-8", errors="surrogateescape") as f:
            return f.read().rstrip("\n")
    except OSError:
        return None


def display_name(kernel_name: str) -> str:
    """How dmthin names block device *kernel_name*: a dm device by its dm
    name, any other by its kernel name (``loop3``)."""
    if kernel_name.startswith("dm-"):
        return read_attr(f"/sys/block/{kernel_name}", "dm/name") or kernel_name
    return kernel_name


def stacked(path: str, which: str = "holders") -> list[str]:
    """Names (:func:`display_name`) of the devices in the ``holders/`` (on
    top of) or ``slaves/`` (underneath) directory of the device at sysfs
    *path*, sorted by kernel name; empty if there is none."""
    try:
        entries = sorted(os.listdir(os.path.join(path, which)))
    except OSError:
        return []
    return [display_name(e) for e in entries]


def holders_of(major: int, minor: int) -> list[str]:
    """Names of the devices stacked on ``major:minor`` (sysfs ``holders/``);
    dm holders are reported by their dm name."""
    return stacked(sys_path(major, minor))


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
        loop_dir = f"/sys/block/{name}"
        backing = read_attr(loop_dir, "loop/backing_file")
        if not backing:
            continue
        try:
            bst = os.stat(backing)
        except OSError:
            continue
        if (bst.st_dev, bst.st_ino) == (st.st_dev, st.st_ino):
            found += [h for h in stacked(loop_dir) if h not in found]
    return found


def backing_file_of(node: str) -> str | None:
    """The backing file of the loop device *node* (``/dev/loopN``), from
    sysfs; None for any other device or an unbound loop device."""
    name = os.path.basename(node)
    if not (name.startswith("loop") and name[4:].isdigit()):
        return None
    return read_attr(f"/sys/block/{name}", "loop/backing_file") or None
