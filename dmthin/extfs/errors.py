"""Errors of the filesystem view: :class:`~dmthin.errors.ThinOSError`
subclasses carrying the errno the kernel's ext4 would give, and also the
matching Python built-in (``FileNotFoundError`` for ENOENT, ...), so code
written for ``os`` works unchanged.
"""
from __future__ import annotations

import errno as _errno

from ..errors import (
    BackendUnavailable,
    InvalidArgument,
    NoSpace,
    NotSupported,
    ThinOSError,
)


class FsError(ThinOSError):
    """A filesystem operation failed (EIO unless a subclass says otherwise)."""
    errno_value = _errno.EIO


class NoEntry(FsError, FileNotFoundError):
    """No such file or directory (ENOENT)."""
    errno_value = _errno.ENOENT


class EntryExists(FsError, FileExistsError):
    """The name already exists (EEXIST)."""
    errno_value = _errno.EEXIST


class NotADir(FsError, NotADirectoryError):
    """A path component is not a directory (ENOTDIR)."""
    errno_value = _errno.ENOTDIR


class IsADir(FsError, IsADirectoryError):
    """The operation needs a non-directory (EISDIR)."""
    errno_value = _errno.EISDIR


class NotEmpty(FsError):
    """The directory is not empty (ENOTEMPTY)."""
    errno_value = _errno.ENOTEMPTY


class NoAttr(FsError):
    """No such extended attribute (ENODATA)."""
    errno_value = _errno.ENODATA


class ReadOnlyFs(FsError):
    """The view was opened read-only (EROFS)."""
    errno_value = _errno.EROFS


class Corrupted(FsError):
    """The filesystem's metadata is inconsistent (EUCLEAN, the kernel's
    EFSCORRUPTED): run e2fsck on it."""
    errno_value = _errno.EUCLEAN


class FsNoSpace(FsError, NoSpace):
    """No free blocks or inodes in the filesystem (ENOSPC)."""
    errno_value = _errno.ENOSPC


_CLASSES: dict[int, type[FsError]] = {cls.errno_value: cls for cls in (
    NoEntry, EntryExists, NotADir, IsADir, NotEmpty, NoAttr, ReadOnlyFs, Corrupted, FsNoSpace)}


def fs_error(code: int, message: str) -> ThinOSError:
    """The exception for errno *code* with *message*."""
    if code == _errno.EINVAL:
        return InvalidArgument(message)
    if code == _errno.EOPNOTSUPP:
        return NotSupported(message)
    return _CLASSES.get(code, FsError)(message, errno=code)


__all__ = [
    "BackendUnavailable",
    "Corrupted",
    "EntryExists",
    "FsError",
    "FsNoSpace",
    "IsADir",
    "NoAttr",
    "NoEntry",
    "NotADir",
    "NotEmpty",
    "ReadOnlyFs",
    "fs_error",
]
