"""Block devices seen without root or the device-mapper binding: the size
of a file or block device, and (through sysfs) what is stacked on a device
or on the loop devices of a file.

Sizes: ``st_size`` is 0 for a block device (LVM's ``_tdata``/``_tmeta``
components, ``/dev/loopN``), so every size of a pool's data or metadata is
taken with :func:`fd_size`/:func:`path_size`, which ask the device.

The holders are used by the facade to refuse writing metadata a live kernel
pool holds, by :mod:`dmthin.dm.busy` to name the holders of a device it
cannot remove, and by :mod:`dmthin.dm.udev` (the same reading when libudev
is missing).

Holders are read here from sysfs directly, not through pyudev: libudev has
no accessor for ``holders/`` (pyudev would list the same directory), and
loading it costs an ``ldconfig`` run per process on every pool open,
simulator included.
"""
from __future__ import annotations

import fcntl
import os
import stat
import struct

BLKGETSIZE64 = 0x80081272       # _IOR(0x12, 114, size_t)


def fd_size(fd: int) -> int:
    """Size in bytes of the open regular file or block device *fd*: the
    device's size (``BLKGETSIZE64``, else its end) for a block device,
    ``st_size`` otherwise.  The file offset is left where it was.

    :raises OSError: from ``fstat`` on a bad descriptor.
    """
    st = os.fstat(fd)
    if not stat.S_ISBLK(st.st_mode):
        return st.st_size
    try:
        size: int = struct.unpack("=Q", fcntl.ioctl(fd, BLKGETSIZE64, bytes(8)))[0]
        return size
    except OSError:
        pos = os.lseek(fd, 0, os.SEEK_CUR)
        end = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, pos, os.SEEK_SET)
        return end


def is_block_device(path: str | os.PathLike[str]) -> bool:
    """True when *path* (followed) is a block device; False for anything
    else, missing paths included."""
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def path_size(path: str | os.PathLike[str]) -> int:
    """Size in bytes of the regular file or block device *path* (a block
    device is opened read-only to ask it; nothing is written).

    :raises OSError: for a missing or unreadable path (ENOENT, EACCES).
    """
    st = os.stat(path)
    if not stat.S_ISBLK(st.st_mode):
        return st.st_size
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fd_size(fd)
    finally:
        os.close(fd)


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
