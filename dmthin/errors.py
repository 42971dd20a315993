"""Exceptions raised by dmthin.

Every error that the kernel would report with an errno is an :class:`OSError`
subclass carrying that errno (``EEXIST``, ``ENODATA``, ``EINVAL``, ``EBUSY``,
``ENOSPC``, ``EOPNOTSUPP``, ``EROFS``), so callers can match either on the class or on
``exc.errno``.  Corrupt or unreadable metadata raises :class:`MetadataError`.
"""
from __future__ import annotations

import errno as _errno
import os


class DmThinError(Exception):
    """Base class of every dmthin error."""


class ThinOSError(DmThinError, OSError):
    """An error with the kernel's errno meaning.

    Built as ``ThinOSError(message)``; the class fixes the errno.  Use
    :func:`error_for` to build the right subclass from an errno.
    """

    errno_value = _errno.EIO

    def __init__(self, message: str = "", *, errno: int | None = None):
        code = self.errno_value if errno is None else errno
        OSError.__init__(self, code, message or os.strerror(code))

    def __str__(self) -> str:
        return self.strerror or os.strerror(self.errno or _errno.EIO)

    def __reduce__(self) -> tuple[type[ThinOSError], tuple[str | None], dict[str, int | None]]:
        return (self.__class__, (self.strerror,), {"errno": self.errno})


class DeviceExists(ThinOSError):
    """A thin device id is already in use (EEXIST)."""
    errno_value = _errno.EEXIST


class DeviceNotFound(ThinOSError):
    """No thin device has this id (ENODATA)."""
    errno_value = _errno.ENODATA


class InvalidArgument(ThinOSError, ValueError):
    """An argument the kernel would refuse with EINVAL."""
    errno_value = _errno.EINVAL


class Busy(ThinOSError):
    """The device or resource is busy (EBUSY)."""
    errno_value = _errno.EBUSY


class NoSpace(ThinOSError):
    """Out of data or metadata space (ENOSPC)."""
    errno_value = _errno.ENOSPC


class NotSupported(ThinOSError):
    """The pool refuses the operation in its current mode (EOPNOTSUPP)."""
    errno_value = _errno.EOPNOTSUPP


class NoSuchDevice(ThinOSError):
    """No such device-mapper device or address (ENXIO)."""
    errno_value = _errno.ENXIO


class IOFailure(ThinOSError):
    """An I/O error (EIO)."""
    errno_value = _errno.EIO


class TimedOut(ThinOSError):
    """A bounded wait ran out (ETIMEDOUT)."""
    errno_value = _errno.ETIMEDOUT


class ReadOnly(ThinOSError):
    """A change was asked of a pool opened read-only (EROFS)."""
    errno_value = _errno.EROFS


_BY_ERRNO = {cls.errno_value: cls for cls in (
    DeviceExists, DeviceNotFound, InvalidArgument, Busy, NoSpace,
    NotSupported, NoSuchDevice, IOFailure, TimedOut, ReadOnly)}


def error_for(code: int, message: str = "") -> ThinOSError:
    """Return the :class:`ThinOSError` subclass instance for errno *code*."""
    cls = _BY_ERRNO.get(code, ThinOSError)
    return cls(message, errno=code)


class UsageError(DmThinError, ValueError):
    """Bad user input (a size, a name, an option): a one-line message."""


class MetadataError(DmThinError):
    """The metadata is corrupt, unreadable or of an unsupported format."""

    def __init__(self, message: str, block: int | None = None):
        super().__init__(message)
        self.block = block


class ChecksumError(MetadataError):
    """A block's checksum does not match its contents."""


class BlockNrMismatch(MetadataError):
    """A block's ``blocknr`` field does not equal its location."""


class BadSuperblock(MetadataError):
    """Wrong magic, unsupported version or incompatible feature flags."""


class BTreeError(MetadataError):
    """A btree node is malformed (shape, key order, fill, cycle)."""


class BackendUnavailable(DmThinError):
    """The requested backend cannot run here (no root, no device-mapper,
    dmthin built without libdevmapper)."""


class PoolLocked(DmThinError):
    """Another process holds the pool's writer lock."""
