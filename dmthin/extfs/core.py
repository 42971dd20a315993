"""The open libext2fs filesystem (:class:`Core`) and what every view
method builds on (:class:`FsBase`): path resolution with a directory-entry
cache, inode lookups, directory listing, symlink targets."""
from __future__ import annotations

import errno
import os
import stat as _stat
import threading
import time
from typing import Any, Self

from ..errors import InvalidArgument
from ._binding import BlockDevice, DeviceIO, check, require
from .errors import NoEntry, ReadOnlyFs, fs_error
from .stat import Stat, decode, encode_path, split
from .stat import from_c as stat_from_c

ROOT_INO = 2
MAX_SYMLINKS = 40        # the kernel's limit on links followed in one lookup
_DCACHE_LIMIT = 500_000

PathLike = str | bytes | os.PathLike[str] | os.PathLike[bytes]


class Core:
    """The open libext2fs filesystem shared by every view of it."""

    def __init__(self, device: BlockDevice, write: bool):
        self.ffi, self.lib = require()
        self.io = DeviceIO(device)
        self.write = write
        self.lock = threading.RLock()
        self.fs: Any = None
        out = self.ffi.new("ext2_filsys *")
        try:
            self.check(self.lib.dx_open(self.io.name, int(write), out),
                       "opening the ext4 filesystem on the device")
        except BaseException:
            self.io.unregister()
            raise
        self.fs = out[0]
        #: directory inode -> {name: (inode, EXT2_FT_* type)}; (0, 0) for a name known to
        #: be absent (every change goes through this object, so the cache stays true)
        self.dcache: dict[int, dict[bytes, tuple[int, int]]] = {}
        self.ncached = 0
        info = self.info()
        if write and info["incompat"] & self.lib.EXT3_FEATURE_INCOMPAT_RECOVER:
            self.close(discard=True)
            raise fs_error(errno.EUCLEAN, "the ext4 journal needs recovery (the filesystem was "
                                          "not unmounted cleanly): run e2fsck -fy on it, or "
                                          "mount it once with the kernel backend")

    def check(self, code: int, what: str) -> None:
        check(code, self.io, what)

    def info(self) -> dict[str, Any]:
        i = self.ffi.new("struct dx_fsinfo *")
        self.lib.dx_fsinfo(self.fs, i)
        return {name: getattr(i, name) for name in (
            "block_size", "inode_size", "first_ino", "state", "blocks_count", "free_blocks",
            "r_blocks", "inodes_count", "free_inodes", "compat", "incompat", "ro_compat")} | {
            "uuid": bytes(self.ffi.buffer(i.uuid, 16)),
            "label": self.ffi.string(i.label).decode("utf-8", "replace")}

    def remember(self, dir_ino: int, name: bytes, ino: int, ftype: int) -> None:
        if self.ncached > _DCACHE_LIMIT:
            self.dcache.clear()
            self.ncached = 0
        self.dcache.setdefault(dir_ino, {})[name] = (ino, ftype)
        self.ncached += 1

    def forget(self, dir_ino: int, name: bytes) -> None:
        """*name* is gone from *dir_ino* (or changed: looked up again)."""
        d = self.dcache.get(dir_ino)
        if d is not None and d.pop(name, None) is not None:
            self.ncached -= 1

    def close(self, discard: bool = False) -> None:
        if self.fs is None:
            return
        fs, self.fs = self.fs, None
        try:
            self.check(self.lib.dx_close(fs, int(discard)), "writing the ext4 filesystem")
        finally:
            self.io.unregister()


def now(ffi: Any, ns: int | None = None) -> Any:
    t = ffi.new("struct dx_time *")
    t.sec, t.nsec = divmod(time.time_ns() if ns is None else ns, 1_000_000_000)
    return t


_FT_DIR, _FT_LNK = 2, 7       # EXT2_FT_DIR, EXT2_FT_SYMLINK


class FsBase:
    """A view of an open :class:`Core`: lifecycle and internals shared by
    the reading and writing methods of :class:`~dmthin.extfs.Filesystem`."""

    def __init__(self, device: BlockDevice, write: bool = False, *, _core: Core | None = None,
                 _root: int = ROOT_INO):
        self._core = _core if _core is not None else Core(device, write)
        self._root = _root
        self._ffi, self._lib = self._core.ffi, self._core.lib

    # -- lifecycle ------------------------------------------------------------
    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Write everything cached and flush the device; idempotent.

        Raises the device's error (e.g. :class:`~dmthin.errors.NoSpace`)."""
        with self._core.lock:
            self._core.close()

    def sync(self) -> None:
        """Write the cached metadata and flush the device (a pool commit)."""
        with self._core.lock:
            self._fs()
            if self._core.write:
                self._core.check(self._lib.dx_flush(self._core.fs, 1), "syncing")

    @property
    def writable(self) -> bool:
        return self._core.write

    def chroot(self, path: PathLike) -> Self:
        """A view of the same open filesystem rooted at directory *path*
        (absolute symlinks resolve inside it).  Closing any view closes all."""
        with self._core.lock:
            ino = self._resolve(encode_path(path), True)
            if not self._stat_ino(ino).is_dir:
                raise fs_error(errno.ENOTDIR, f"{path!r} is not a directory")
            return type(self)(self._core.io.device, _core=self._core, _root=ino)

    def info(self) -> dict[str, Any]:
        """Block size, block and inode counts (total/free), feature words,
        ``uuid`` (16 bytes) and ``label`` of the filesystem."""
        with self._core.lock:
            self._fs()
            return self._core.info()

    def io_stats(self) -> dict[str, int]:
        """Device callbacks and cache counters of the io_manager."""
        with self._core.lock:
            s = self._ffi.new("struct dx_iostats *")
            self._lib.dx_io_stats(self._fs(), s)
            return {k: getattr(s, k) for k in ("reads", "writes", "read_bytes", "write_bytes",
                                                "hits", "misses", "skipped_writes", "flushes")}

    # -- internals ----------------------------------------------------------------
    def _fs(self) -> Any:
        if self._core.fs is None:
            raise InvalidArgument("the filesystem view is closed")
        return self._core.fs

    def _need_write(self, what: str) -> None:
        if not self._core.write:
            raise ReadOnlyFs(f"{what}: the filesystem view is read-only (open it with write=True)")

    def _lookup(self, dir_ino: int, name: bytes) -> tuple[int, int] | None:
        d = self._core.dcache.get(dir_ino)
        if d is not None:
            hit = d.get(name)
            if hit is not None:
                return hit if hit[0] else None           # (0, 0): known to be absent
        ino = self._ffi.new("ext2_ino_t *")
        ftype = self._ffi.new("int *")
        rc = self._lib.dx_lookup(self._fs(), dir_ino, name, len(name), ino, ftype)
        if rc == self._lib.EXT2_ET_FILE_NOT_FOUND:
            self._core.check(0, "")
            self._core.remember(dir_ino, name, 0, 0)
            return None
        self._core.check(rc, f"looking up {decode(name)!r}")
        kind = ftype[0]
        if kind == self._lib.EXT2_FT_UNKNOWN:      # no file types in entries
            mode = self._stat_ino(ino[0]).st_mode
            kind = _FT_DIR if _stat.S_ISDIR(mode) else _FT_LNK if _stat.S_ISLNK(mode) else 1
        self._core.remember(dir_ino, name, ino[0], kind)
        return ino[0], kind

    def _readlink_ino(self, ino: int) -> bytes:
        size = self._core.info()["block_size"] + 1
        buf = self._ffi.new("char[]", size)
        n = self._ffi.new("size_t *")
        self._core.check(self._lib.dx_readlink(self._fs(), ino, buf, size, n), "reading a symlink")
        return bytes(self._ffi.buffer(buf, n[0]))

    def _resolve(self, path: bytes, follow_last: bool, *, what: str = "") -> int:
        """The inode of *path* (NoEntry if missing)."""
        stack = [self._root]
        pending = list(reversed(split(path)))
        links = 0
        while pending:
            comp = pending.pop()
            if comp == b"..":
                if len(stack) > 1:
                    stack.pop()
                continue
            hit = self._lookup(stack[-1], comp)
            if hit is None:
                raise NoEntry(f"{what or 'lookup'}: {decode(path)!r}: no such file or directory")
            ino, kind = hit
            if kind == _FT_LNK and (pending or follow_last):
                links += 1
                if links > MAX_SYMLINKS:
                    raise fs_error(errno.ELOOP, f"{decode(path)!r}: too many levels of symlinks")
                target = self._readlink_ino(ino)
                if target.startswith(b"/"):
                    stack = [self._root]
                pending.extend(reversed(split(target)))
                continue
            if pending and kind != _FT_DIR:
                raise fs_error(errno.ENOTDIR, f"{decode(path)!r}: a component is not a directory")
            stack.append(ino)
        return stack[-1]

    def _parent(self, path: bytes, what: str) -> tuple[int, bytes]:
        """(directory inode, last name) for creating or removing *path*."""
        comps = split(path)
        if not comps or comps[-1] == b"..":
            raise InvalidArgument(f"{what}: {decode(path)!r} names no entry")
        parent = b"/".join(comps[:-1])
        dir_ino = self._resolve(parent, True, what=what) if comps[:-1] else self._root
        return dir_ino, comps[-1]

    def _xattr_names(self, ino: int) -> list[bytes]:
        buf = self._ffi.new("char **")
        n = self._ffi.new("size_t *")
        self._core.check(self._lib.dx_xattr_list(self._fs(), ino, buf, n), "listxattr")
        try:
            raw = bytes(self._ffi.buffer(buf[0], n[0])) if n[0] else b""
        finally:
            self._lib.dx_free(buf[0])
        return [k for k in raw.split(b"\0") if k]

    def _stat_ino(self, ino: int) -> Stat:
        st = self._ffi.new("struct dx_stat *")
        self._core.check(self._lib.dx_stat(self._fs(), ino, st), "reading an inode")
        return stat_from_c(st)

    # -- lookups --------------------------------------------------------------------
    def stat(self, path: PathLike, follow_symlinks: bool = True) -> Stat:
        """The :class:`Stat` of *path*.  Raises NoEntry, NotADir."""
        with self._core.lock:
            return self._stat_ino(self._resolve(encode_path(path), follow_symlinks, what="stat"))

    def lstat(self, path: PathLike) -> Stat:
        """:meth:`stat` without following a final symlink."""
        return self.stat(path, follow_symlinks=False)

    def exists(self, path: PathLike) -> bool:
        """True if *path* names an entry (a dangling symlink counts)."""
        try:
            self.lstat(path)
        except (NoEntry, NotADirectoryError):
            return False
        return True

    def _entries(self, dir_ino: int) -> list[tuple[bytes, int, int]]:
        buf = self._ffi.new("char **")
        n = self._ffi.new("size_t *")
        self._core.check(self._lib.dx_readdir(self._fs(), dir_ino, buf, n), "reading a directory")
        try:
            raw = bytes(self._ffi.buffer(buf[0], n[0])) if n[0] else b""
        finally:
            self._lib.dx_free(buf[0])
        out, pos = [], 0
        while pos < len(raw):
            ino = int.from_bytes(raw[pos:pos + 4], "little")
            ftype = raw[pos + 4]
            nlen = int.from_bytes(raw[pos + 6:pos + 8], "little")
            out.append((raw[pos + 8:pos + 8 + nlen], ino, ftype))
            pos += 8 + nlen
        return out
