"""Formatting a device that has no node, and reading what identifies a
filesystem, without copying the device.

:func:`mkfs` runs e2fsprogs' own ``mke2fs`` (Docker's options) and
``tune2fs -c -1 -i 0`` on a sparse scratch file of the device's size, then
writes to the device exactly the ranges the tools wrote (``SEEK_DATA``), so
the pool provisions the blocks a kernel block device would get: with
``lazy_itable_init=0,lazy_journal_init=0`` that is every inode table and the
whole journal, written as zeros (``UNIX_IO_NOZEROOUT=1`` makes the tools
write zero blocks instead of punching holes).  The scratch file holds only
those blocks and is removed at once.

:func:`read_uuid` and :func:`probe_fs_type` read the superblock from the
device itself.
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
import uuid as _uuid
from collections.abc import Sequence

from ..blockdev import fd_size
from ..errors import InvalidArgument, IOFailure, NotSupported
from ..sparse import data_regions, holes_reported
from ._binding import BlockDevice

log = logging.getLogger("dmthin.extfs")

IMPORT_CHUNK = 8 << 20
_TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Docker's createFilesystem options for ext4 (the second without lazy_journal_init)
DOCKER_EXT4_OPTIONS = ("nodiscard,lazy_itable_init=0,lazy_journal_init=0",
                       "nodiscard,lazy_itable_init=0")
XFS_REFUSAL = ("the simulator formats and reads ext4 only (through libext2fs); xfs needs a "
               "kernel block device: set dm.fs=ext4, or use the kernel backend for xfs")


def _run(argv: list[str]) -> None:
    env = dict(os.environ)
    env["PATH"] = _TOOL_PATH + ":" + env.get("PATH", "")
    env["UNIX_IO_NOZEROOUT"] = "1"
    try:
        proc = subprocess.run(argv, capture_output=True, env=env, check=False,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise NotSupported(f"{argv[0]} not found: apt-get install e2fsprogs") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise IOFailure(f"{' '.join(argv[:2])} failed: {last}")


def import_image(device: BlockDevice, path: str | os.PathLike[str]) -> int:
    """Write the data ranges of sparse file *path* to the same offsets of
    *device*, then flush it; return the bytes written."""
    written = 0
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = fd_size(fd)
        for start, end in data_regions(fd, min(size, device.size)):
            pos = start
            while pos < end:
                chunk = os.pread(fd, min(IMPORT_CHUNK, end - pos), pos)
                if not chunk:
                    break
                device.write(pos, chunk)
                pos += len(chunk)
                written += len(chunk)
    finally:
        os.close(fd)
    device.flush()
    return written


def mkfs(device: BlockDevice, fs: str = "ext4", mkfs_args: Sequence[str] = (),
         workdir: str | os.PathLike[str] | None = None) -> int:
    """Docker's ``createFilesystem`` on *device*: ``mkfs.ext4 -E nodiscard,
    lazy_itable_init=0,lazy_journal_init=0 ARGS`` (retried without the last
    option, as Docker does) and ``tune2fs -c -1 -i 0``.  Returns the bytes
    written to the device.

    Raises :class:`~dmthin.errors.NotSupported` for xfs (naming
    ``dm.fs=ext4``) or without e2fsprogs, :class:`~dmthin.errors.IOFailure`
    when a tool fails, :class:`~dmthin.errors.InvalidArgument` when
    *workdir*'s filesystem cannot report holes, and the device's errors.
    """
    if fs != "ext4":
        raise NotSupported(XFS_REFUSAL if fs == "xfs" else
                           f"unsupported filesystem {fs!r}: set dm.fs=ext4")
    directory = os.fspath(workdir) if workdir is not None else tempfile.gettempdir()
    if not holes_reported(directory):
        raise InvalidArgument(f"{directory} cannot keep sparse files (no SEEK_DATA): give a "
                              "work directory on ext4, xfs, btrfs or tmpfs")
    fd, scratch = tempfile.mkstemp(prefix=".mkfs-", suffix=".img", dir=directory)
    try:
        os.ftruncate(fd, device.size)
        os.close(fd)
        fd = -1
        try:
            _run(["mkfs.ext4", "-q", "-E", DOCKER_EXT4_OPTIONS[0], *mkfs_args, scratch])
        except IOFailure:
            _run(["mkfs.ext4", "-q", "-E", DOCKER_EXT4_OPTIONS[1], *mkfs_args, scratch])
        _run(["tune2fs", "-c", "-1", "-i", "0", scratch])
        return import_image(device, scratch)
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(scratch)


def probe_fs_type(device: BlockDevice) -> str:
    """Docker's ``ProbeFsType`` on the device's bytes: btrfs, ext4 or xfs.

    Raises :class:`~dmthin.errors.NotSupported` for anything else."""
    head = device.read(0, 0x10048)
    if head[0x10040:0x10048] == b"_BHRfS_M":
        return "btrfs"
    if head[0x438:0x43a] == b"\x53\xef":
        return "ext4"
    if head[0:4] == b"XFSB":
        return "xfs"
    raise NotSupported("Unknown filesystem type on the device")


def read_uuid(device: BlockDevice) -> str:
    """The filesystem UUID as blkid prints it (ext2/3/4 and xfs).

    Raises :class:`~dmthin.errors.NotSupported` for other contents."""
    kind = probe_fs_type(device)
    if kind == "ext4":
        raw = device.read(1024 + 0x68, 16)
    elif kind == "xfs":
        raw = device.read(32, 16)
    else:
        raise NotSupported(f"reading the UUID of {kind} is not supported")
    return str(_uuid.UUID(bytes=bytes(raw)))
