"""The simulator's file tree for the differ: a layer's ext4 read and
written in place through :class:`dmthin.extfs.Filesystem` (libext2fs on
the thin device's own blocks), with the same protocol and the same
:class:`~dmthin.graph.tree.Entry` values as :class:`~dmthin.graph.tree.DirTree`
gives for the kernel's mount of the same filesystem.

*base* is the directory the tree starts at (Docker keeps a layer's files
under ``rootfs/``); a missing *base* reads as an empty tree, and
:meth:`ExtTree.ensure_base` creates it, and the ``id`` file beside it, as
Docker's ``Get`` does.  Every call takes effect at once; nothing is copied.
"""
from __future__ import annotations

import contextlib
import stat
from collections.abc import Iterator
from typing import IO

from ..extfs import Filesystem, Stat
from .tree import CAPABILITY, Entry


def entry(view: Filesystem, path: str, st: Stat) -> Entry:
    """The differ's :class:`Entry` for *st* (DirTree's rules: size only
    for regular files, target for symlinks, rdev for device nodes,
    security.capability)."""
    link = view.readlink(path) if st.is_symlink else ""
    try:
        cap = view.getxattr(path, CAPABILITY)
    except OSError:
        cap = b""
    return Entry(path, st.st_mode, st.st_uid, st.st_gid, st.st_size if st.is_reg else 0,
                 st.st_mtime_ns, link, st.st_rdev, cap, st.st_ino, st.st_nlink)


class ExtTree:
    """A file tree inside the ext4 filesystem *fs*, starting at *base*."""

    def __init__(self, fs: Filesystem, base: str = ""):
        self.fs = fs
        self.base = base.strip("/")
        self._root: Filesystem | None = None if self.base else fs

    def _view(self) -> Filesystem | None:
        if self._root is None and self.fs.exists(self.base):
            self._root = self.fs.chroot(self.base)
        return self._root

    def _need(self) -> Filesystem:
        view = self._view()
        if view is None:
            raise FileNotFoundError(f"the layer has no {self.base}/ directory yet")
        return view

    def ensure_base(self, id_text: str) -> None:
        """Create *base* (0755, root) and ``id`` holding *id_text* (0600),
        each only if missing."""
        if not self.base:
            return
        if not self.fs.exists(self.base):
            self.fs.mkdir(self.base, 0o755, 0, 0)
        if not self.fs.exists("id"):
            self.fs.write_file("id", id_text.encode(), 0o600, 0, 0)

    # -- reading ----------------------------------------------------------------
    def walk(self) -> dict[str, Entry]:
        """Every entry below the root (the root itself excluded)."""
        view = self._view()
        if view is None:
            return {}
        return {p: entry(view, p, st) for p, st in view.walk()}

    def lstat(self, path: str) -> Entry | None:
        """*path*'s entry (a final symlink not followed), or None."""
        view = self._view()
        if view is None:
            return None
        try:
            st = view.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return entry(view, path, st)

    def lookup(self, path: str) -> Entry | None:
        return self.lstat(path)

    @contextlib.contextmanager
    def open_read(self, path: str) -> Iterator[IO[bytes]]:
        """Open regular file *path* (never following a final symlink)."""
        view = self._need()
        if not view.lstat(path).is_reg:
            raise OSError(f"{path!r} is not a regular file")
        with view.open(path) as f:
            yield f  # type: ignore[misc]

    def listdir(self, path: str) -> list[str]:
        """Names in directory *path*."""
        return self._need().listdir(path)

    def setxattr(self, path: str, name: str, value: bytes) -> None:
        """Set xattr *name* of *path* itself."""
        self._need().setxattr(path, name, value)

    # -- writing -----------------------------------------------------------------------
    def begin(self) -> None:
        self._need()

    def commit(self) -> None:
        """Nothing to do: every call took effect (the driver closes the
        filesystem, which writes and commits)."""

    def close(self) -> None:
        pass

    def hardlink(self, path: str, target: str) -> None:
        self._need().link(target, path)

    def remove(self, path: str) -> None:
        self._need().remove(path, missing_ok=True)

    def _attrs(self, e: Entry) -> None:
        """lchown, chmod, utime (DirTree's order) in one inode write."""
        self._need().set_attrs(e.path, stat.S_IMODE(e.mode), e.uid, e.gid, e.mtime_ns,
                               e.mtime_ns)

    def mkdir(self, e: Entry) -> None:
        view = self._need()
        old = self.lstat(e.path)
        if old is None or not old.is_dir:
            view.mkdir(e.path, stat.S_IMODE(e.mode), e.uid, e.gid)
        self._attrs(e)

    def write_file(self, e: Entry, src: IO[bytes]) -> None:
        self._need().write_file(e.path, src, stat.S_IMODE(e.mode), e.uid, e.gid)
        self._attrs(e)

    def symlink(self, e: Entry) -> None:
        view = self._need()
        view.symlink(e.link, e.path, e.uid, e.gid)
        view.utime(e.path, (e.mtime_ns, e.mtime_ns))

    def mknod(self, e: Entry) -> None:
        self._need().mknod(e.path, e.mode, e.rdev, e.uid, e.gid)
        self._attrs(e)

    def set_times(self, e: Entry) -> None:
        self._need().utime(e.path, (e.mtime_ns, e.mtime_ns))
