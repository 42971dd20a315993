"""The changing half of :class:`~dmthin.extfs.Filesystem`: creating,
writing, truncating and removing entries, links, attributes and xattrs.

Every method needs a view opened with ``write=True`` (else
:class:`~dmthin.extfs.errors.ReadOnlyFs`, EROFS) and raises the errno the
kernel would: :class:`~dmthin.extfs.errors.EntryExists`,
:class:`~dmthin.extfs.errors.NoEntry`, :class:`~dmthin.extfs.errors.NotADir`,
:class:`~dmthin.extfs.errors.IsADir`, :class:`~dmthin.extfs.errors.NotEmpty`,
:class:`~dmthin.extfs.errors.FsNoSpace`, and the device's own errors (a
full pool's :class:`~dmthin.errors.NoSpace`).
"""
from __future__ import annotations

import errno
import os
import stat as _stat
from collections.abc import Iterator
from typing import IO

from ..errors import InvalidArgument
from .core import MAX_SYMLINKS, FsBase, PathLike, now
from .errors import fs_error
from .stat import check_name, decode, encode_path, split

CHUNK = 8 << 20          # bytes per write call when streaming a file

Source = bytes | bytearray | memoryview | IO[bytes]
#: the xattr namespaces ext4 accepts (others: EOPNOTSUPP)
_XATTR_PREFIXES = (b"user.", b"trusted.", b"security.", b"system.posix_acl_access",
                   b"system.posix_acl_default")
#: EXT2_FT_* directory-entry type of each S_IFMT
_FTYPE = {_stat.S_IFREG: 1, _stat.S_IFDIR: 2, _stat.S_IFCHR: 3, _stat.S_IFBLK: 4,
          _stat.S_IFIFO: 5, _stat.S_IFSOCK: 6, _stat.S_IFLNK: 7}


def source_chunks(src: Source) -> Iterator[memoryview]:
    """*src* (bytes-like or a binary file object) in pieces of at most CHUNK."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        view = memoryview(src).cast("B")
        for pos in range(0, len(view), CHUNK):
            yield view[pos:pos + CHUNK]
        return
    while True:
        data = src.read(CHUNK)
        if not data:
            return
        yield memoryview(data)


class Writer(FsBase):
    """Changes to the filesystem (see the module docstring)."""

    def _new_entry(self, path: PathLike, what: str) -> tuple[int, bytes]:
        """(parent inode, name) for a new entry at *path*; EEXIST if taken."""
        self._need_write(what)
        raw = encode_path(path)
        dir_ino, name = self._parent(raw, what)
        check_name(name, path)
        if self._lookup(dir_ino, name) is not None:
            raise fs_error(errno.EEXIST, f"{what}: {decode(raw)!r} exists")
        return dir_ino, name

    def _created(self, dir_ino: int, name: bytes, ino: int, kind: int) -> None:
        self._core.remember(dir_ino, name, ino, kind)

    def _set_times(self, ino: int, atime_ns: int | None, mtime_ns: int | None) -> None:
        if atime_ns is None and mtime_ns is None:
            return
        mask = (self._lib.DX_SET_ATIME if atime_ns is not None else 0) | \
               (self._lib.DX_SET_MTIME if mtime_ns is not None else 0)
        f = self._ffi
        self._core.check(self._lib.dx_setattr(
            self._fs(), ino, mask, 0, 0, 0, now(f, atime_ns or 0), now(f, mtime_ns or 0),
            now(f)), "setting times")

    # -- creating --------------------------------------------------------------
    def mkdir(self, path: PathLike, mode: int = 0o755, uid: int = 0, gid: int = 0) -> int:
        """Create directory *path*; return its inode number."""
        with self._core.lock:
            dir_ino, name = self._new_entry(path, "mkdir")
            out = self._ffi.new("ext2_ino_t *")
            self._core.check(self._lib.dx_mkdir(self._fs(), dir_ino, name, mode & 0o7777, uid,
                                                gid, now(self._ffi), out), f"mkdir {path!r}")
            self._created(dir_ino, name, out[0], self._lib.EXT2_FT_DIR)
            return int(out[0])

    def makedirs(self, path: PathLike, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        """Create *path* and missing parents; existing directories are kept."""
        with self._core.lock:
            raw = encode_path(path)
            parts = [c for c in raw.split(b"/") if c and c != b"."]
            for i in range(1, len(parts) + 1):
                sub = b"/".join(parts[:i])
                try:
                    st = self.stat(sub)
                except FileNotFoundError:
                    self.mkdir(sub, mode, uid, gid)
                    continue
                if not st.is_dir:
                    raise fs_error(errno.ENOTDIR, f"makedirs: {decode(sub)!r} is not a directory")

    def mknod(self, path: PathLike, mode: int, rdev: int = 0, uid: int = 0, gid: int = 0) -> int:
        """Create a regular file, fifo, socket or device node (*mode*
        holds the type, as for ``os.mknod``); return its inode number."""
        with self._core.lock:
            if _stat.S_IFMT(mode) == 0:
                mode |= _stat.S_IFREG
            if _stat.S_ISDIR(mode) or _stat.S_ISLNK(mode):
                raise InvalidArgument(f"mknod {path!r}: use mkdir/symlink for this type")
            dir_ino, name = self._new_entry(path, "mknod")
            out = self._ffi.new("ext2_ino_t *")
            major, minor = (os.major(rdev), os.minor(rdev)) if rdev else (0, 0)
            self._core.check(self._lib.dx_mknod(self._fs(), dir_ino, name, mode & 0o177777, uid,
                                                gid, major, minor, now(self._ffi), out),
                             f"mknod {path!r}")
            self._created(dir_ino, name, out[0], _FTYPE.get(_stat.S_IFMT(mode), 0))
            return int(out[0])

    def mkfifo(self, path: PathLike, mode: int = 0o644, uid: int = 0, gid: int = 0) -> int:
        """Create a fifo; return its inode number."""
        return self.mknod(path, _stat.S_IFIFO | (mode & 0o7777), 0, uid, gid)

    def symlink(self, target: PathLike, path: PathLike, uid: int = 0, gid: int = 0) -> int:
        """Create symlink *path* pointing to *target*; return its inode."""
        with self._core.lock:
            raw_target = encode_path(target)
            if not raw_target:
                raise fs_error(errno.ENOENT, f"symlink {path!r}: empty target")
            if len(raw_target) >= self._core.info()["block_size"]:
                raise fs_error(errno.ENAMETOOLONG, f"symlink {path!r}: target longer than a "
                                                   "block")
            dir_ino, name = self._new_entry(path, "symlink")
            out = self._ffi.new("ext2_ino_t *")
            self._core.check(self._lib.dx_symlink(self._fs(), dir_ino, name, raw_target, uid,
                                                  gid, now(self._ffi), out),
                             f"symlink {path!r}")
            self._created(dir_ino, name, out[0], self._lib.EXT2_FT_SYMLINK)
            return int(out[0])

    def link(self, existing: PathLike, path: PathLike) -> None:
        """Hard link *path* to the inode of *existing* (not followed if a
        symlink).  Raises EPERM for a directory."""
        with self._core.lock:
            self._need_write("link")
            ino = self._resolve(encode_path(existing), False, what="link")
            dir_ino, name = self._new_entry(path, "link")
            if self._stat_ino(ino).is_dir:
                raise fs_error(errno.EPERM, f"link: {existing!r} is a directory")
            self._core.check(self._lib.dx_link(self._fs(), dir_ino, name, ino, now(self._ffi)),
                             f"link {path!r}")
            self._core.forget(dir_ino, name)

    # -- file contents ----------------------------------------------------------------
    def _file_ino(self, path: PathLike, what: str) -> int:
        self._need_write(what)
        ino = self._resolve(encode_path(path), True, what=what)
        st = self._stat_ino(ino)
        if st.is_dir:
            raise fs_error(errno.EISDIR, f"{what}: {path!r} is a directory")
        if not st.is_reg:
            raise InvalidArgument(f"{what}: {path!r} is not a regular file")
        return ino

    def _pwrite_ino(self, ino: int, offset: int, data: memoryview) -> None:
        if len(data):
            self._core.check(self._lib.dx_pwrite(self._fs(), ino, offset,
                                                 self._ffi.from_buffer(data), len(data),
                                                 now(self._ffi)), "writing")

    def pwrite(self, path: PathLike, data: bytes | bytearray | memoryview, offset: int) -> int:
        """Write *data* at *offset* of existing file *path*; return its length."""
        with self._core.lock:
            ino = self._file_ino(path, "pwrite")
            if offset < 0:
                raise InvalidArgument("pwrite: negative offset")
            view = memoryview(data).cast("B")
            for pos in range(0, len(view), CHUNK):
                self._pwrite_ino(ino, offset + pos, view[pos:pos + CHUNK])
            return len(view)

    def truncate(self, path: PathLike, size: int) -> None:
        """Set file *path*'s size: blocks past it are freed, a partial last
        block is zeroed past it, growing leaves a hole."""
        with self._core.lock:
            ino = self._file_ino(path, "truncate")
            if size < 0:
                raise InvalidArgument("truncate: negative size")
            self._core.check(self._lib.dx_truncate(self._fs(), ino, size, now(self._ffi)),
                             f"truncate {path!r}")

    def write_file(self, path: PathLike, src: Source, mode: int = 0o644, uid: int = 0,
                   gid: int = 0, mtime_ns: int | None = None,
                   atime_ns: int | None = None) -> int:
        """Make *path* a regular file holding *src* (bytes or a binary file
        object, streamed): an existing file is truncated and rewritten in
        place (its hard links see the new bytes), as ``open(path, "wb")``;
        a new one gets *mode*/*uid*/*gid*.  *mtime_ns*/*atime_ns* are set
        last (atime defaults to mtime).  Returns the bytes written."""
        with self._core.lock:
            self._need_write("write_file")
            ino = self._open_creat(encode_path(path), mode, uid, gid)
            total = 0
            for piece in source_chunks(src):
                self._pwrite_ino(ino, total, piece)
                total += len(piece)
            if mtime_ns is not None:
                self._set_times(ino, mtime_ns if atime_ns is None else atime_ns, mtime_ns)
            return total

    def _open_creat(self, raw: bytes, mode: int, uid: int, gid: int) -> int:
        """open(O_WRONLY|O_CREAT|O_TRUNC): the existing file truncated, or a
        new one (also where a dangling symlink points)."""
        for _ in range(MAX_SYMLINKS):
            try:
                ino = self._file_ino(raw, "write_file")
            except FileNotFoundError:
                try:
                    st = self.lstat(raw)
                except FileNotFoundError:
                    return self.mknod(raw, _stat.S_IFREG | (mode & 0o7777), 0, uid, gid)
                if not st.is_symlink:
                    raise
                target = self._readlink_ino(self._resolve(raw, False, what="write_file"))
                parent = b"/".join(split(raw)[:-1])
                raw = target if target.startswith(b"/") else parent + b"/" + target
                continue
            self._core.check(self._lib.dx_truncate(self._fs(), ino, 0, now(self._ffi)),
                             f"truncate {decode(raw)!r}")
            return ino
        raise fs_error(errno.ELOOP, f"write_file: {decode(raw)!r}: too many levels of symlinks")

    # -- removing -------------------------------------------------------------------------
    def _remove(self, path: PathLike, want_dir: bool, what: str) -> None:
        self._need_write(what)
        raw = encode_path(path)
        dir_ino, name = self._parent(raw, what)
        hit = self._lookup(dir_ino, name)
        if hit is None:
            raise fs_error(errno.ENOENT, f"{what}: {decode(raw)!r}: no such file or directory")
        self._core.check(self._lib.dx_remove(self._fs(), dir_ino, name, int(want_dir),
                                             now(self._ffi)), f"{what} {decode(raw)!r}")
        self._core.remember(dir_ino, name, 0, 0)
        if want_dir:
            self._core.dcache.pop(hit[0], None)

    def unlink(self, path: PathLike) -> None:
        """Remove non-directory *path* (the inode goes with its last link)."""
        with self._core.lock:
            self._remove(path, False, "unlink")

    def rmdir(self, path: PathLike) -> None:
        """Remove empty directory *path*."""
        with self._core.lock:
            self._remove(path, True, "rmdir")

    def rmtree(self, path: PathLike) -> None:
        """Remove directory *path* and everything below it."""
        with self._core.lock:
            raw = encode_path(path)
            ino = self._resolve(raw, False, what="rmtree")
            for name, _child, kind in self._entries(ino):
                sub = raw + b"/" + name
                if kind == self._lib.EXT2_FT_DIR:
                    self.rmtree(sub)
                else:
                    self.unlink(sub)
            self.rmdir(raw)

    def remove(self, path: PathLike, missing_ok: bool = False) -> None:
        """Remove *path* whatever it is (directories recursively)."""
        with self._core.lock:
            try:
                st = self.lstat(path)
            except FileNotFoundError:
                if missing_ok:
                    return
                raise
            if st.is_dir:
                self.rmtree(path)
            else:
                self.unlink(path)

    # -- attributes -------------------------------------------------------------------------
    def _setattr(self, path: PathLike, what: str, mask: int, mode: int = 0, uid: int = 0,
                 gid: int = 0, atime_ns: int = 0, mtime_ns: int = 0,
                 follow: bool = False) -> None:
        self._need_write(what)
        ino = self._resolve(encode_path(path), follow, what=what)
        f = self._ffi
        self._core.check(self._lib.dx_setattr(self._fs(), ino, mask, mode, uid, gid,
                                              now(f, atime_ns), now(f, mtime_ns), now(f)),
                         f"{what} {path!r}")

    def set_attrs(self, path: PathLike, mode: int | None = None, uid: int | None = None,
                  gid: int | None = None, atime_ns: int | None = None,
                  mtime_ns: int | None = None) -> None:
        """Set any of mode bits, owner, group and times of *path* itself in
        one inode write: the result of ``lchown``, ``chmod``, ``lutimes`` in
        that order (chown's clearing of setuid is overridden by *mode*)."""
        with self._core.lock:
            lib = self._lib
            mask = (lib.DX_SET_UID if uid is not None else 0) | \
                (lib.DX_SET_GID if gid is not None else 0) | \
                (lib.DX_SET_ATIME if atime_ns is not None else 0) | \
                (lib.DX_SET_MTIME if mtime_ns is not None else 0)
            if mode is None and (uid is not None or gid is not None):
                cur = self.lstat(path).st_mode
                kill = _stat.S_ISUID | (_stat.S_ISGID if cur & _stat.S_IXGRP else 0)
                if not _stat.S_ISDIR(cur) and cur & kill:
                    mode = cur & ~kill
            if mode is not None:
                mask |= lib.DX_SET_MODE
            self._setattr(path, "set_attrs", mask, mode=(mode or 0) & 0o7777, uid=uid or 0,
                          gid=gid or 0, atime_ns=atime_ns or 0, mtime_ns=mtime_ns or 0)

    def chmod(self, path: PathLike, mode: int) -> None:
        """Set the permission bits (07777) of *path* (a final symlink is
        followed, as chmod(2) does)."""
        with self._core.lock:
            self._setattr(path, "chmod", self._lib.DX_SET_MODE, mode=mode, follow=True)

    def chown(self, path: PathLike, uid: int = -1, gid: int = -1) -> None:
        """Set owner and/or group (-1 keeps) of *path* itself (``lchown``);
        as in the kernel, this clears setuid (and setgid with group exec) of
        a non-directory."""
        with self._core.lock:
            mask = (self._lib.DX_SET_UID if uid != -1 else 0) | \
                   (self._lib.DX_SET_GID if gid != -1 else 0)
            mode = self.lstat(path).st_mode
            if not _stat.S_ISDIR(mode):
                # chown_common: ATTR_KILL_SUID|ATTR_KILL_SGID; setgid goes only with group
                # exec (without it, it marks mandatory locking)
                kill = _stat.S_ISUID | (_stat.S_ISGID if mode & _stat.S_IXGRP else 0)
                if mode & kill:
                    mask |= self._lib.DX_SET_MODE
                    mode &= ~kill
            self._setattr(path, "chown", mask, mode=mode & 0o7777, uid=max(uid, 0),
                          gid=max(gid, 0))

    def utime(self, path: PathLike, ns: tuple[int, int]) -> None:
        """Set (atime, mtime) in nanoseconds of *path* itself (``lutimes``)."""
        with self._core.lock:
            self._setattr(path, "utime", self._lib.DX_SET_ATIME | self._lib.DX_SET_MTIME,
                          atime_ns=ns[0], mtime_ns=ns[1])

    def _xattr_key(self, ino: int, name: str, what: str) -> bytes:
        """*name* as bytes, with the kernel's xattr_permission refusals for
        changes: unknown namespace EOPNOTSUPP, user.* on anything but files
        and directories EPERM."""
        key = os.fsencode(name)
        if not key.startswith(_XATTR_PREFIXES):
            raise fs_error(errno.EOPNOTSUPP, f"{what} {name}: unknown namespace")
        if key.startswith(b"user."):
            mode = self._stat_ino(ino).st_mode
            if not (_stat.S_ISREG(mode) or _stat.S_ISDIR(mode)):
                raise fs_error(errno.EPERM, f"{what} {name}: user attributes are for files "
                                            "and directories only")
        return key

    # -- xattrs ------------------------------------------------------------------------------
    def setxattr(self, path: PathLike, name: str, value: bytes, flags: int = 0) -> None:
        """Set xattr *name* of *path* itself; ``os.XATTR_CREATE`` refuses an
        existing one (EEXIST), ``os.XATTR_REPLACE`` a missing one (ENODATA)."""
        with self._core.lock:
            self._need_write("setxattr")
            ino = self._resolve(encode_path(path), False, what="setxattr")
            key = self._xattr_key(ino, name, "setxattr")
            if flags:
                have = key in self._xattr_names(ino)
                if flags & os.XATTR_CREATE and have:
                    raise fs_error(errno.EEXIST, f"setxattr {name}: exists")
                if flags & os.XATTR_REPLACE and not have:
                    raise fs_error(errno.ENODATA, f"setxattr {name}: no such attribute")
            self._core.check(self._lib.dx_xattr_set(self._fs(), ino, key, bytes(value),
                                                    len(value), now(self._ffi)),
                             f"setxattr {name}")

    def removexattr(self, path: PathLike, name: str) -> None:
        """Remove xattr *name* of *path* itself.  Raises NoAttr (ENODATA)."""
        with self._core.lock:
            self._need_write("removexattr")
            ino = self._resolve(encode_path(path), False, what="removexattr")
            key = self._xattr_key(ino, name, "removexattr")
            self._core.check(self._lib.dx_xattr_remove(self._fs(), ino, key,
                                                       now(self._ffi)), f"removexattr {name}")
