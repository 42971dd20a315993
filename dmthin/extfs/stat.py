"""What :meth:`Filesystem.stat <dmthin.extfs.Filesystem.stat>` returns and
the path rules of the view."""
from __future__ import annotations

import errno
import os
import stat as _stat
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument
from .errors import fs_error

NAME_MAX = 255


@dataclass(frozen=True)
class Stat:
    """An inode's metadata, with ``os.stat_result``-style names.

    Times are nanoseconds since the epoch; ``st_rdev`` is ``os.makedev``'s
    encoding; ``st_blocks`` counts 512-byte units.
    """
    st_ino: int
    st_mode: int
    st_uid: int
    st_gid: int
    st_nlink: int
    st_size: int
    st_blocks: int
    st_atime_ns: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_birthtime_ns: int
    st_rdev: int
    flags: int

    @property
    def is_dir(self) -> bool:
        return _stat.S_ISDIR(self.st_mode)

    @property
    def is_reg(self) -> bool:
        return _stat.S_ISREG(self.st_mode)

    @property
    def is_symlink(self) -> bool:
        return _stat.S_ISLNK(self.st_mode)


def from_c(st: Any) -> Stat:
    """A :class:`Stat` from the binding's ``struct dx_stat``."""
    return Stat(
        st_ino=st.ino, st_mode=st.mode, st_uid=st.uid, st_gid=st.gid, st_nlink=st.nlink,
        st_size=st.size, st_blocks=st.blocks,
        st_atime_ns=st.atime * 1_000_000_000 + st.atime_ns,
        st_mtime_ns=st.mtime * 1_000_000_000 + st.mtime_ns,
        st_ctime_ns=st.ctime * 1_000_000_000 + st.ctime_ns,
        st_birthtime_ns=st.crtime * 1_000_000_000 + st.crtime_ns,
        st_rdev=os.makedev(st.rdev_major, st.rdev_minor), flags=st.flags)


def encode_path(path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> bytes:
    """*path* as bytes (``os.fsencode``); NUL refused."""
    raw = os.fsencode(path)
    if b"\0" in raw:
        raise InvalidArgument(f"path {path!r} contains a NUL byte")
    return raw


def split(path: bytes) -> list[bytes]:
    """The components of *path*, ``.`` and empty ones dropped (``..`` kept)."""
    return [c for c in path.split(b"/") if c and c != b"."]


def check_name(name: bytes, path: object) -> None:
    """Refuse names a new entry cannot have (EINVAL; ENAMETOOLONG as the
    kernel for over 255 bytes)."""
    if name in (b"", b".", b".."):
        raise InvalidArgument(f"cannot create {path!r}: not a name")
    if len(name) > NAME_MAX:
        raise fs_error(errno.ENAMETOOLONG,
                       f"cannot create {path!r}: name longer than {NAME_MAX} bytes")


def decode(name: bytes) -> str:
    """A name as ``os.fsdecode`` gives it (surrogateescape)."""
    return os.fsdecode(name)
