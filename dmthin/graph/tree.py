"""File trees the differ reads and writes, and the :class:`Entry` they give.

:class:`DirTree` is the kernel-mode tree (the rootfs Docker's ``Get``
returns, a mounted directory); the simulator's counterpart,
:class:`~dmthin.graph.exttree.ExtTree`, reads and writes the same ext4
filesystem in place through libext2fs.  :func:`resolve` resolves a path in
either as a process chrooted into it would.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ..errors import InvalidArgument

if TYPE_CHECKING:
    from .exttree import ExtTree


@dataclass(frozen=True)
class Entry:
    """One file's metadata, with a path relative to the tree's root."""
    path: str
    mode: int              # full st_mode (type and permission bits)
    uid: int
    gid: int
    size: int
    mtime_ns: int
    link: str = ""         # symlink target
    rdev: int = 0
    capability: bytes = b""   # security.capability (moby's ChangesDirs compares it)
    ino: int = field(default=0, compare=False)     # hard links: same ino, nlink > 1
    nlink: int = field(default=1, compare=False)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)


CAPABILITY = "security.capability"


def _capability(path: str | os.PathLike[str]) -> bytes:
    try:
        return os.getxattr(path, CAPABILITY, follow_symlinks=False)
    except OSError:
        return b""


class DirTree:
    """A directory tree (a mounted rootfs)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def _abs(self, path: str) -> Path:
        """*path* (relative to the tree; a leading ``/`` is the tree's root,
        never the host's) below :attr:`root`."""
        return self.root / path.lstrip("/")

    def walk(self) -> dict[str, Entry]:
        """Every entry below the root (the root itself excluded)."""
        out: dict[str, Entry] = {}
        stack = [""]
        while stack:
            rel = stack.pop()
            with os.scandir(self._abs(rel) if rel else self.root) as it:
                for de in it:
                    p = f"{rel}/{de.name}" if rel else de.name
                    st = de.stat(follow_symlinks=False)
                    link = os.readlink(de.path) if stat.S_ISLNK(st.st_mode) else ""
                    size = st.st_size if stat.S_ISREG(st.st_mode) else 0
                    out[p] = Entry(p, st.st_mode, st.st_uid, st.st_gid, size,
                                   st.st_mtime_ns, link, st.st_rdev, _capability(de.path),
                                   st.st_ino, st.st_nlink)
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(p)
        return out

    @contextlib.contextmanager
    def open_read(self, path: str) -> Iterator[IO[bytes]]:
        """Open regular file *path* (never following a final symlink)."""
        fd = os.open(self._abs(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            yield f

    def lookup(self, path: str) -> Entry | None:
        try:
            st = os.lstat(self._abs(path))
        except FileNotFoundError:
            return None
        return Entry(path, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns)

    def lstat(self, path: str) -> Entry | None:
        """*path*'s entry (symlinks not followed, target in ``link``), or
        None.  *path* must hold no symlink before its last component (see
        :func:`resolve`)."""
        try:
            st = os.lstat(self._abs(path))
        except (FileNotFoundError, NotADirectoryError):
            return None
        link = os.readlink(self._abs(path)) if stat.S_ISLNK(st.st_mode) else ""
        size = st.st_size if stat.S_ISREG(st.st_mode) else 0
        return Entry(path, st.st_mode, st.st_uid, st.st_gid, size, st.st_mtime_ns, link,
                     st.st_rdev, _capability(self._abs(path)), st.st_ino, st.st_nlink)

    def listdir(self, path: str) -> list[str]:
        """Names in directory *path*."""
        return os.listdir(self._abs(path) if path else self.root)

    def setxattr(self, path: str, name: str, value: bytes) -> None:
        """Set xattr *name* of *path* itself."""
        os.setxattr(self._abs(path), name, value, follow_symlinks=False)

    # -- writing: each call takes effect at once ---------------------------
    def begin(self) -> None:
        pass

    def hardlink(self, path: str, target: str) -> None:
        os.link(self._abs(target), self._abs(path))

    def remove(self, path: str) -> None:
        p = self._abs(path)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def mkdir(self, e: Entry) -> None:
        p = self._abs(e.path)
        if not p.is_dir():
            p.mkdir()
        self._attrs(p, e)

    def write_file(self, e: Entry, src: IO[bytes]) -> None:
        p = self._abs(e.path)
        with open(p, "wb") as f:
            shutil.copyfileobj(src, f, 1 << 20)
        self._attrs(p, e)

    def symlink(self, e: Entry) -> None:
        p = self._abs(e.path)
        os.symlink(e.link, p)
        os.lchown(p, e.uid, e.gid)
        os.utime(p, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)

    def mknod(self, e: Entry) -> None:
        p = self._abs(e.path)
        if stat.S_ISFIFO(e.mode):
            os.mkfifo(p)
        else:
            os.mknod(p, e.mode, e.rdev)
        self._attrs(p, e)

    def set_times(self, e: Entry) -> None:
        os.utime(self._abs(e.path), ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)

    def commit(self) -> None:
        pass

    @staticmethod
    def _attrs(p: Path, e: Entry) -> None:
        os.lchown(p, e.uid, e.gid)
        os.chmod(p, stat.S_IMODE(e.mode))
        os.utime(p, ns=(e.mtime_ns, e.mtime_ns))


MAX_SYMLINKS = 40          # the kernel's limit on symlinks followed in one lookup


def resolve(tree: DirTree | ExtTree, path: str) -> Entry:
    """Resolve *path* as a process chrooted into *tree* would: ``..`` stops at
    the root, symlinks (absolute ones relative to the root) are followed,
    at most 40 of them.  Returns the final entry (never a symlink).

    Raises :class:`FileNotFoundError`, ``NotADirectoryError`` or
    :class:`~dmthin.errors.InvalidArgument` (a symlink loop), naming *path*.
    """
    todo = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    last: Entry | None = None
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            last = None
            continue
        rel = "/".join([*done, part])
        e = tree.lstat(rel)
        if e is None:
            raise FileNotFoundError(errno.ENOENT, f"no such file in the layer: /{rel}", path)
        if stat.S_ISLNK(e.mode):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise InvalidArgument(f"too many levels of symbolic links resolving {path}")
            if e.link.startswith("/"):
                done = []
            todo = [p for p in e.link.split("/") if p not in ("", ".")] + todo
            last = None
            continue
        if todo and not e.is_dir:
            raise NotADirectoryError(errno.ENOTDIR, f"not a directory in the layer: /{rel}",
                                     path)
        done.append(part)
        last = e
    if not done:
        return Entry("", stat.S_IFDIR | 0o755, 0, 0, 0, 0)
    if last is None:
        last = tree.lstat("/".join(done))
        if last is None:
            raise FileNotFoundError(errno.ENOENT, f"no such file in the layer: {path}", path)
    return last
