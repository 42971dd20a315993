"""The ext4 filesystem on a thin device, read and written in place.

:class:`Filesystem` opens the filesystem inside any object with
:class:`dmthin.ThinDevice`'s ``read``/``write``/``flush``/``discard``
(simulator or kernel backend) through e2fsprogs' libext2fs, whose io_manager
sends every block to the device: metadata and file data go through the pool
with its allocation, copy-on-write and zeroing.  Nothing is mounted or
copied, and no root is needed.

Paths are relative to the view's root (a leading ``/`` is allowed);
symlinks inside a path are followed within the view, as in a chroot.
Operations that create or act on an entry do not follow a symlink in the
last component (``lstat``, ``unlink``, ``chown``, ``utime``, ``readlink``,
xattrs, ``link``'s source); reading, writing, truncating and ``chmod``
follow it.  Every change sets ctime, and the parent directory's
mtime/ctime, as the kernel does.  :meth:`Filesystem.sync` (and
:meth:`~Filesystem.close`) write the cached metadata and flush the device
(a pool commit).  One writable view at a time per device, and never while
the kernel has the device mounted.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from typing import Any, Self

from ..errors import InvalidArgument
from .core import PathLike
from .errors import fs_error
from .stat import Stat, decode, encode_path
from .writer import Writer


class Filesystem(Writer):
    """An ext4 filesystem on a device, seen from one directory (the root
    unless made by :meth:`chroot`).  See the module docstring.

    ``Filesystem(device, write=False)``; use as a context manager or call
    :meth:`close`.  Raises :class:`~dmthin.errors.BackendUnavailable` when
    dmthin was built without libext2fs, :class:`~dmthin.errors.InvalidArgument`
    when the device holds no ext2/3/4 filesystem, EUCLEAN
    (:class:`~dmthin.extfs.errors.Corrupted`) for a writable open of a
    filesystem whose journal needs recovery.
    """

    # -- reading ----------------------------------------------------------------
    def listdir(self, path: PathLike = "") -> list[str]:
        """Names in directory *path* (not ``.``/``..``), in directory order."""
        with self._core.lock:
            ino = self._resolve(encode_path(path), True, what="listdir")
            return [decode(name) for name, _, _ in self._entries(ino)]

    def scandir(self, path: PathLike = "") -> list[tuple[str, Stat]]:
        """``(name, Stat)`` of every entry of directory *path*."""
        with self._core.lock:
            ino = self._resolve(encode_path(path), True, what="scandir")
            return [(decode(name), self._stat_ino(child)) for name, child, _ in self._entries(ino)]

    def walk(self, top: PathLike = "") -> Iterator[tuple[str, Stat]]:
        """``(relative path, Stat)`` of every entry below *top* (not *top*
        itself), parents before children."""
        with self._core.lock:
            start = self._resolve(encode_path(top), True, what="walk")
            stack: list[tuple[bytes, int]] = [(b"", start)]
            out: list[tuple[str, Stat]] = []
            while stack:
                rel, ino = stack.pop()
                for name, child, _ in self._entries(ino):
                    p = rel + b"/" + name if rel else name
                    st = self._stat_ino(child)
                    out.append((decode(p), st))
                    if st.is_dir:
                        stack.append((p, child))
        return iter(out)

    def readlink(self, path: PathLike) -> str:
        """The target of symlink *path*.  Raises InvalidArgument if not one."""
        with self._core.lock:
            ino = self._resolve(encode_path(path), False, what="readlink")
            if not self._stat_ino(ino).is_symlink:
                raise InvalidArgument(f"readlink: {path!r} is not a symlink")
            return decode(self._readlink_ino(ino))

    def _pread_ino(self, ino: int, offset: int, size: int) -> bytes:
        buf = bytearray(size)
        got = self._ffi.new("size_t *")
        self._core.check(self._lib.dx_pread(self._fs(), ino, offset,
                                            self._ffi.from_buffer(buf), size, got), "reading")
        del buf[got[0]:]
        return bytes(buf)

    def read(self, path: PathLike, offset: int = 0, size: int = -1) -> bytes:
        """Up to *size* bytes (all with -1) of file *path* from *offset*."""
        with self._core.lock:
            ino = self._resolve(encode_path(path), True, what="read")
            st = self._stat_ino(ino)
            if st.is_dir:
                raise fs_error(errno.EISDIR, f"read: {path!r} is a directory")
            if not st.is_reg:
                raise InvalidArgument(f"read: {path!r} is not a regular file")
            if size < 0 or offset + size > st.st_size:
                size = max(0, st.st_size - offset)
            return self._pread_ino(ino, offset, size) if size else b""

    def open(self, path: PathLike) -> FileReader:
        """A read-only binary file object over file *path*."""
        with self._core.lock:
            ino = self._resolve(encode_path(path), True, what="open")
            st = self._stat_ino(ino)
            if st.is_dir:
                raise fs_error(errno.EISDIR, f"open: {path!r} is a directory")
            if not st.is_reg:
                raise InvalidArgument(f"open: {path!r} is not a regular file")
            return FileReader(self, ino, st.st_size)

    # -- xattrs (read) ----------------------------------------------------------------
    def listxattr(self, path: PathLike) -> list[str]:
        """Names of *path*'s extended attributes (the entry itself)."""
        with self._core.lock:
            ino = self._resolve(encode_path(path), False, what="listxattr")
            return [decode(k) for k in self._xattr_names(ino)]

    def getxattr(self, path: PathLike, name: str) -> bytes:
        """The value of xattr *name* of *path*.  Raises NoAttr (ENODATA)."""
        with self._core.lock:
            ino = self._resolve(encode_path(path), False, what="getxattr")
            buf = self._ffi.new("char **")
            n = self._ffi.new("size_t *")
            self._core.check(self._lib.dx_xattr_get(self._fs(), ino, os.fsencode(name), buf, n),
                             f"getxattr {name}")
            try:
                return bytes(self._ffi.buffer(buf[0], n[0]))
            finally:
                self._lib.dx_free(buf[0])


class FileReader:
    """A binary, read-only, seekable file object over one inode."""

    def __init__(self, fs: Filesystem, ino: int, size: int):
        self._fs, self._ino, self.size, self.pos = fs, ino, size, 0
        self.closed = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self.pos
        n = max(0, min(n, self.size - self.pos))
        if not n:
            return b""
        with self._fs._core.lock:
            data = self._fs._pread_ino(self._ino, self.pos, n)
        self.pos += len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
