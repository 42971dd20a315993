"""Filesystems on thin devices: mkfs, UUID, type probe, growth, and the
image mirror that lets the same tools work in the simulator.

A kernel thin device has a block device node (``ThinDevice.path``) and the
e2fsprogs/xfsprogs tools run on it directly.  A simulated thin device has no
node, so :class:`ImageMirror` copies its bytes into a sparse regular file
(only non-zero chunks are written; the rest stay holes), the tools run on
that file, and :meth:`ImageMirror.sync` writes back exactly the chunks the
tools touched: chunks that changed, chunks that were holes and now hold data
(even zeros: a write of zeros provisions a thin block in the kernel too),
and chunks the tools punched out (sent as discards).  Chunks are one pool
data block, so the blocks provisioned or broken out of sharing are the ones
the kernel would provision for the same writes.

e2fsprogs runs on mirrors with ``UNIX_IO_NOZEROOUT=1`` so that zeroing (the
inode tables and journal of ``lazy_itable_init=0,lazy_journal_init=0``) is
done by writing zero blocks, as on a thin block device, not by punching
holes in the file.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .. import ThinDevice
from ..errors import IOFailure, NotSupported
from ..sparse import data_regions, holes_reported

READ_SIZE = 1 << 20
_TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def tool_env(on_image: bool) -> dict[str, str]:
    """Environment for fs tools: sbin on PATH; no hole punching on images."""
    env = dict(os.environ)
    env["PATH"] = _TOOL_PATH + ":" + env.get("PATH", "")
    if on_image:
        env["UNIX_IO_NOZEROOUT"] = "1"
    return env


def run_tool(argv: list[str], on_image: bool = False, input: bytes | None = None) -> str:
    """Run an external tool (argv list, never a shell); return its stdout.

    Raises :class:`~dmthin.errors.IOFailure` with the tool's last stderr line.
    """
    try:
        proc = subprocess.run(argv, input=input, capture_output=True, env=tool_env(on_image),
                              check=False)
    except FileNotFoundError:
        raise NotSupported(f"{argv[0]} not found: install e2fsprogs/xfsprogs") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.decode(errors="replace").splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise IOFailure(f"{' '.join(argv[:2])} failed: {last}")
    return proc.stdout.decode(errors="replace")


class ImageMirror:
    """A thin device's bytes in a sparse file, written back by :meth:`sync`."""

    def __init__(self, thin: ThinDevice, path: Path, chunk: int):
        self.thin = thin
        self.path = Path(path)
        self.chunk = chunk
        self.size = thin.size
        self._hashes: dict[int, bytes] = {}
        self._reliable = holes_reported(self.path.parent)

    @classmethod
    def export(cls, thin: ThinDevice, path: str | os.PathLike[str], chunk: int,
               limit: int | None = None) -> ImageMirror:
        """Copy *thin* (or its first *limit* bytes) into a new sparse file.

        Raises :class:`~dmthin.errors.ThinOSError` from the device.
        """
        mirror = cls(thin, Path(path), chunk)
        status = thin.status()
        end = 0 if status.highest_mapped_sector is None else \
            (int(status.highest_mapped_sector) + 1) * 512
        end = min(end, thin.size if limit is None else min(limit, thin.size))
        zero = bytes(chunk)
        fd = os.open(mirror.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            pos = 0
            while pos < end:
                buf = thin.read(pos, min(READ_SIZE, end - pos))
                for off in range(0, len(buf), chunk):
                    piece = buf[off:off + chunk]
                    if piece != zero[:len(piece)]:
                        os.pwrite(fd, piece, pos + off)
                        mirror._hashes[(pos + off) // chunk] = _digest(piece)
                pos += len(buf)
                if not buf:
                    break
            os.ftruncate(fd, mirror.size)
        finally:
            os.close(fd)
        return mirror

    def sync(self) -> int:
        """Write back every chunk the tools touched; return how many.

        Raises :class:`~dmthin.errors.ThinOSError` (e.g. ENOSPC) from the device.
        """
        chunk, written = self.chunk, 0
        seen: dict[int, bytes] = {}
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for start, end in data_regions(fd, self.size):
                first, last = start // chunk, (end + chunk - 1) // chunk
                for idx in range(first, last):
                    off = idx * chunk
                    piece = os.pread(fd, min(chunk, self.size - off), off)
                    h = _digest(piece)
                    seen[idx] = h
                    old = self._hashes.get(idx)
                    if old == h:
                        continue
                    if old is None and not self._reliable and not any(piece):
                        continue
                    self.thin.write(off, piece)
                    written += 1
        finally:
            os.close(fd)
        for idx in self._hashes.keys() - seen.keys():
            off = idx * chunk
            length = min(chunk, self.size - off)
            if length == chunk:
                self.thin.discard(off, length)
            else:
                self.thin.write(off, bytes(length))
            written += 1
        self._hashes = seen
        return written

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _digest(piece: bytes) -> bytes:
    return hashlib.blake2b(piece, digest_size=16).digest()


@contextlib.contextmanager
def device_access(thin: ThinDevice, workdir: str | os.PathLike[str], chunk: int,
                  write: bool = True) -> Iterator[str]:
    """Yield a path the fs tools can use for *thin*: its device node, or (in
    the simulator) an :class:`ImageMirror` synced back on success."""
    if thin.path is not None:
        yield thin.path
        return
    fd, name = tempfile.mkstemp(prefix=f"dev{thin.dev_id}-", suffix=".img", dir=workdir)
    os.close(fd)
    mirror = ImageMirror.export(thin, name, chunk)
    try:
        yield str(mirror.path)
        if write:
            mirror.sync()
    finally:
        mirror.remove()


# -- filesystem operations (all take a device node or an image path) --------
def mkfs(path: str, fs: str, mkfs_args: list[str], on_image: bool) -> None:
    """Docker's ``createFilesystem``: ``mkfs.ext4 -E nodiscard,lazy_itable_init=0,
    lazy_journal_init=0`` (retried without the last) plus ``tune2fs -c -1 -i 0``,
    or ``mkfs.xfs``.  Raises :class:`~dmthin.errors.IOFailure`."""
    if fs == "xfs":
        run_tool(["mkfs.xfs", *mkfs_args, path], on_image)
        return
    try:
        run_tool(["mkfs.ext4", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
                  *mkfs_args, path], on_image)
    except IOFailure:
        run_tool(["mkfs.ext4", "-E", "nodiscard,lazy_itable_init=0", *mkfs_args, path], on_image)
    run_tool(["tune2fs", "-c", "-1", "-i", "0", path], on_image)


def fs_uuid(path: str) -> str:
    """``blkid -s UUID -o value`` of *path* (no cache)."""
    return run_tool(["blkid", "-c", "/dev/null", "-s", "UUID", "-o", "value", path]).strip()


def probe_fs_type(path: str) -> str:
    """Docker's ``ProbeFsType``: btrfs, ext4 or xfs by magic.

    Raises :class:`~dmthin.errors.NotSupported` for anything else."""
    with open(path, "rb") as f:
        head = f.read(0x10048)
    if head[0x10040:0x10048] == b"_BHRfS_M":
        return "btrfs"
    if head[0x438:0x43a] == b"\x53\xef":
        return "ext4"
    if head[0:4] == b"XFSB":
        return "xfs"
    raise NotSupported(f"Unknown filesystem type on {path}")


def grow_fs_offline(path: str, fs: str) -> None:
    """Grow an unmounted filesystem to its device's size (ext4 only).

    Raises :class:`~dmthin.errors.NotSupported` for xfs, which grows only
    mounted (``xfs_growfs``), and :class:`~dmthin.errors.IOFailure`."""
    if fs != "ext4":
        raise NotSupported(f"growing {fs} needs it mounted (xfs_growfs): use the kernel backend")
    run_tool(["e2fsck", "-f", "-p", path], on_image=True)
    run_tool(["resize2fs", path], on_image=True)


def mount(dev: str, path: str | os.PathLike[str], fstype: str, options: str) -> None:
    """``mount -t fstype [-o options] dev path``; on failure raise
    :class:`~dmthin.errors.IOFailure` with Docker's text and dmesg's tail."""
    argv = ["mount", "-t", fstype, *(["-o", options] if options else []), dev, str(path)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False,
                          env=tool_env(False))
    if proc.returncode != 0:
        dmesg = subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout
        tail = " | ".join(dmesg.strip().splitlines()[-3:])
        raise IOFailure(f"devmapper: Error mounting '{dev}' on '{path}' (fstype='{fstype}' "
                        f"options='{options}'): {proc.stderr.strip()}; dmesg: {tail}")


def umount(path: str | os.PathLike[str]) -> None:
    """Detach-unmount (``umount -l``, MNT_DETACH as Docker does)."""
    run_tool(["umount", "-l", str(path)])
