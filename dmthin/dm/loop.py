"""Loop devices through ``fcntl.ioctl`` (no losetup).

Constants and layouts from ``<linux/loop.h>``.  :func:`attach` uses
``LOOP_CONFIGURE`` (Linux >= 5.8) with autoclear and, when the backing file
system allows it, direct I/O; on older kernels it falls back to
``LOOP_SET_FD`` + ``LOOP_SET_STATUS64``.  :func:`find` locates the loop
device already attached to a file by its ``st_dev``/``st_ino``.

With autoclear the kernel detaches the loop device when its last opener
closes it: keep the :class:`LoopDevice` open until something else (a dm
table) holds the device.

Example::

    with loop.attach("/tmp/data") as dev:
        print(dev.path, dev.dev)    # /dev/loop3 7:3
"""
from __future__ import annotations

import errno
import fcntl
import os
import random
import stat
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import overload

from ..errors import Busy, InvalidArgument, ThinOSError, error_for

LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_GET_STATUS64 = 0x4C05
LOOP_SET_CAPACITY = 0x4C07
LOOP_SET_DIRECT_IO = 0x4C08
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82

LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16
LO_NAME_SIZE = 64

BLKGETSIZE64 = 0x80081272
LOOP_MAJOR = 7

#: struct loop_info64 (232 bytes): lo_device, lo_inode, lo_rdevice, lo_offset,
#: lo_sizelimit, lo_number, lo_encrypt_type, lo_encrypt_key_size, lo_flags,
#: lo_file_name[64], lo_crypt_name[64], lo_encrypt_key[32], lo_init[2]
LOOP_INFO64 = struct.Struct("=5Q4I64s64s32s2Q")
#: struct loop_config (304 bytes): fd, block_size, info, __reserved[8]
LOOP_CONFIG_HEAD = struct.Struct("=II")

CONTROL = "/dev/loop-control"
ATTACH_TRIES = 100


@dataclass
class LoopInfo:
    """The fields of ``struct loop_info64`` dmthin uses."""
    backing_dev: int
    backing_inode: int
    number: int
    flags: int
    file_name: str
    offset: int = 0
    sizelimit: int = 0

    @property
    def autoclear(self) -> bool:
        return bool(self.flags & LO_FLAGS_AUTOCLEAR)

    @property
    def direct_io(self) -> bool:
        return bool(self.flags & LO_FLAGS_DIRECT_IO)


@dataclass
class LoopDevice:
    """An attached loop device.  Holds an open descriptor (``fd``) while
    open; :meth:`close` drops it (detaching an autoclear device if it was
    the last opener), :meth:`detach` detaches explicitly."""
    number: int
    backing_file: str
    fd: int | None = None
    created: bool = False            # attached by us (vs found)
    _closed: bool = field(default=False, repr=False)

    @property
    def path(self) -> str:
        return f"/dev/loop{self.number}"

    @property
    def major(self) -> int:
        return LOOP_MAJOR

    @property
    def minor(self) -> int:
        return self.number

    @property
    def dev(self) -> str:
        """``major:minor`` as dm tables name devices."""
        return f"{LOOP_MAJOR}:{self.number}"

    def __enter__(self) -> LoopDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> int:
        """Open the device (if not already) and return the descriptor."""
        if self.fd is None:
            self.fd = _open_rw(self.path)
        return self.fd

    def close(self) -> None:
        """Close our descriptor (an autoclear device detaches on last close)."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def size(self) -> int:
        """The device size in bytes (``BLKGETSIZE64``)."""
        return block_size64(self.path)

    def info(self) -> LoopInfo:
        """``LOOP_GET_STATUS64``.  Raises ENXIO if it is no longer attached."""
        return get_status(self.path)

    def set_capacity(self) -> int:
        """Re-read the backing file's size after it grew; return the new size."""
        return set_capacity(self.path)

    def detach(self, timeout: float = 5.0) -> None:
        """Close our descriptor and detach the device from its file."""
        self.close()
        detach(self.path, timeout=timeout)

    def attached(self) -> bool:
        """True while the device is still bound to its backing file."""
        return os.path.exists(f"/sys/block/loop{self.number}/loop/backing_file")


def _open_rw(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CLOEXEC)


@overload
def _ioctl(fd: int, req: int, arg: int = 0) -> int: ...
@overload
def _ioctl(fd: int, req: int, arg: bytes) -> bytes: ...
def _ioctl(fd: int, req: int, arg: int | bytes = 0) -> int | bytes:
    if isinstance(arg, int):
        return fcntl.ioctl(fd, req, arg)
    return fcntl.ioctl(fd, req, arg)


def _ensure_node(number: int) -> str:
    path = f"/dev/loop{number}"
    if not os.path.exists(path):
        # No devtmpfs (some containers): make the node ourselves.
        try:
            os.mknod(path, stat.S_IFBLK | 0o660, os.makedev(LOOP_MAJOR, number))
        except FileExistsError:
            pass
    return path


def _pack_info(path: str, flags: int) -> bytes:
    name = os.fsencode(path)[:LO_NAME_SIZE - 1]
    return LOOP_INFO64.pack(0, 0, 0, 0, 0, 0, 0, 0, flags, name, b"", b"", 0, 0)


def _unpack_info(raw: bytes) -> LoopInfo:
    f = LOOP_INFO64.unpack(raw)
    return LoopInfo(backing_dev=f[0], backing_inode=f[1], offset=f[3], sizelimit=f[4],
                    number=f[5], flags=f[8],
                    file_name=f[9].split(b"\0", 1)[0].decode("utf-8", "surrogateescape"))


def _configure(lfd: int, backing_fd: int, path: str, flags: int) -> None:
    """LOOP_CONFIGURE, or SET_FD + SET_STATUS64 on kernels without it."""
    cfg = LOOP_CONFIG_HEAD.pack(backing_fd, 0) + _pack_info(path, flags) + bytes(64)
    try:
        _ioctl(lfd, LOOP_CONFIGURE, cfg)
        return
    except OSError as err:
        if err.errno == errno.EINVAL and flags & LO_FLAGS_DIRECT_IO:
            # The backing file system may refuse direct I/O: go without.
            return _configure(lfd, backing_fd, path, flags & ~LO_FLAGS_DIRECT_IO)
        if err.errno not in (errno.ENOTTY, errno.EINVAL):
            raise
    _ioctl(lfd, LOOP_SET_FD, backing_fd)
    try:
        _ioctl(lfd, LOOP_SET_STATUS64, _pack_info(path, flags & ~LO_FLAGS_DIRECT_IO))
    except OSError:
        _ioctl(lfd, LOOP_CLR_FD, 0)
        raise
    if flags & LO_FLAGS_DIRECT_IO:
        try:
            _ioctl(lfd, LOOP_SET_DIRECT_IO, 1)
        except OSError:
            pass  # best effort: buffered I/O still works


def attach(path: str | os.PathLike[str], *, read_only: bool = False, autoclear: bool = True,
           direct_io: bool = True, nofollow: bool = False) -> LoopDevice:
    """Attach a free loop device to the file *path* and return it, open.

    Retries when another process takes the same free device (EBUSY).
    With *nofollow* a symlink at *path* is refused (ELOOP).
    Raises :class:`~dmthin.errors.InvalidArgument` if *path* is not a
    regular file, :class:`~dmthin.errors.Busy` when no loop device could be
    had, and OSError (EACCES/EPERM) when not root.
    """
    path = os.path.abspath(os.fspath(path))
    bfd = os.open(path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
                  | (os.O_NOFOLLOW if nofollow else 0))
    try:
        if not stat.S_ISREG(os.fstat(bfd).st_mode):
            raise InvalidArgument(f"{path} is not a regular file; give a data or metadata file")
        flags = (LO_FLAGS_AUTOCLEAR if autoclear else 0) | \
                (LO_FLAGS_DIRECT_IO if direct_io else 0) | (LO_FLAGS_READ_ONLY if read_only else 0)
        try:
            ctl = os.open(CONTROL, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise error_for(errno.ENODEV, f"no {CONTROL}: load the loop module "
                            "(modprobe loop)") from None
        try:
            for attempt in range(ATTACH_TRIES):
                number = _ioctl(ctl, LOOP_CTL_GET_FREE)
                lfd = _open_rw(_ensure_node(number))
                try:
                    _configure(lfd, bfd, path, flags)
                except OSError as err:
                    os.close(lfd)
                    if err.errno == errno.EBUSY:
                        time.sleep(random.uniform(0.001, 0.01 * (1 + attempt % 10)))
                        continue
                    code = err.errno or errno.EIO
                    raise error_for(code, f"attach {path} to /dev/loop{number}: "
                                    f"{os.strerror(code)}") from None
                return LoopDevice(number, path, lfd, created=True)
        finally:
            os.close(ctl)
    finally:
        os.close(bfd)
    raise Busy(f"attach {path}: every free loop device was taken by others "
               f"({ATTACH_TRIES} tries); retry, or free loop devices (losetup -D)")


def get_status(loop_path: str) -> LoopInfo:
    """``LOOP_GET_STATUS64`` of a loop device.  Raises ENXIO if unbound."""
    fd = os.open(loop_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        raw = _ioctl(fd, LOOP_GET_STATUS64, bytes(LOOP_INFO64.size))
    finally:
        os.close(fd)
    return _unpack_info(raw)


def list_attached() -> list[tuple[int, str]]:
    """``(number, backing file)`` of every bound loop device (from sysfs)."""
    out: list[tuple[int, str]] = []
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return out
    for name in names:
        if not name.startswith("loop") or not name[4:].isdigit():
            continue
        try:
            with open(f"/sys/block/{name}/loop/backing_file", encoding="utf-8",
                      errors="surrogateescape") as f:
                out.append((int(name[4:]), f.read().rstrip("\n")))
        except OSError:
            continue
    return sorted(out)


def find(path: str | os.PathLike[str], *, writable: bool = False) -> LoopDevice | None:
    """The loop device attached to the file *path* (matched by
    ``st_dev``/``st_ino``, whole file), not opened; None if there is none.
    With *writable*, read-only attachments are passed over.  Raises
    FileNotFoundError if *path* does not exist."""
    st = os.stat(path)
    path = os.path.abspath(os.fspath(path))
    for number, _backing in list_attached():
        try:
            info = get_status(f"/dev/loop{number}")
        except OSError:
            continue  # detached meanwhile, or no node
        if info.backing_inode == st.st_ino and info.backing_dev == st.st_dev \
                and info.offset == 0 and info.sizelimit == 0 \
                and not (writable and info.flags & LO_FLAGS_READ_ONLY):
            return LoopDevice(number, path)
    return None


def backing_file(number: int) -> str:
    """The backing file of ``/dev/loop<number>`` (sysfs), or '' if unbound."""
    try:
        with open(f"/sys/block/loop{number}/loop/backing_file", encoding="utf-8",
                  errors="surrogateescape") as f:
            return f.read().rstrip("\n")
    except OSError:
        return ""


def is_autoclear(number: int) -> bool:
    """True if ``/dev/loop<number>`` is bound with autoclear (sysfs)."""
    try:
        with open(f"/sys/block/loop{number}/loop/autoclear", encoding="ascii") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def block_size64(dev_path: str) -> int:
    """Size of a block device in bytes (``BLKGETSIZE64``)."""
    fd = os.open(dev_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        raw = _ioctl(fd, BLKGETSIZE64, bytes(8))
    finally:
        os.close(fd)
    size: int = struct.unpack("=Q", raw)[0]
    return size


def set_capacity(loop_path: str) -> int:
    """``LOOP_SET_CAPACITY``: pick up a grown backing file; return the new
    size in bytes.  Raises ENXIO if the device is not attached."""
    fd = os.open(loop_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _ioctl(fd, LOOP_SET_CAPACITY, 0)
    finally:
        os.close(fd)
    return block_size64(loop_path)


def holders(number: int) -> list[str]:
    """Block devices stacked on ``/dev/loop<number>`` (sysfs ``holders/``)."""
    try:
        return sorted(os.listdir(f"/sys/block/loop{number}/holders"))
    except OSError:
        return []


def detach(loop_path: str, timeout: float = 5.0, wait: bool = True) -> None:
    """Detach a loop device from its file and wait until it is free.

    A device still held open (e.g. by a dm table) gets autoclear instead and
    detaches at its last close; if that does not happen within *timeout*
    seconds, raise :class:`~dmthin.errors.Busy` naming the holders (with
    ``wait=False``, return at once instead).  A device that is not attached
    is fine.
    """
    number = int(os.path.basename(loop_path)[4:])
    sysdir = f"/sys/block/loop{number}/loop"
    if not os.path.exists(sysdir):
        return
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            fd = os.open(loop_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            _ioctl(fd, LOOP_CLR_FD, 0)
        except OSError as err:
            if err.errno != errno.ENXIO and err.errno != errno.EBUSY:
                code = err.errno or errno.EIO
                raise error_for(code, f"detach {loop_path}: {os.strerror(code)}") from None
        finally:
            os.close(fd)
        if not os.path.exists(sysdir) or not wait:
            return
        if time.monotonic() >= deadline:
            users = holders(number)
            held = f" (held by {', '.join(users)})" if users else ""
            raise Busy(f"detach {loop_path}: still in use{held}; remove what holds it first")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def wait_detached(numbers: Iterable[int], timeout: float = 5.0) -> list[int]:
    """Wait until the loop devices *numbers* are unbound (autoclear runs at
    the last close); return those still bound after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    pending = list(numbers)
    while True:
        pending = [n for n in pending if os.path.exists(f"/sys/block/loop{n}/loop")]
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(0.01)


__all__ = [
    "LoopDevice",
    "LoopInfo",
    "ThinOSError",
    "attach",
    "backing_file",
    "block_size64",
    "detach",
    "find",
    "get_status",
    "holders",
    "is_autoclear",
    "list_attached",
    "set_capacity",
    "wait_detached",
]
