"""The libext2fs binding (``dmthin._ext2fs_ffi``, built from csrc/ by cffi
in API mode) and the Python half of its io_manager.

The extension is optional: without e2fsprogs' headers (Debian
``libext2fs-dev``) dmthin installs without it and :func:`require` says how
to get it.  Each open filesystem registers its device here under an integer
handle; the C io_manager passes the handle back to the callbacks below,
which call the device's public ``read``/``write``/``flush``/``discard``.
An exception in a callback is kept on the :class:`DeviceIO` and re-raised
by :func:`check` when the libext2fs call returns, so a pool's ENOSPC
reaches the caller as :class:`~dmthin.errors.NoSpace`.
"""
from __future__ import annotations

import errno as _errno
import itertools
import os
import threading
from typing import Any, Protocol

from ..errors import BackendUnavailable
from .errors import fs_error

try:  # optional: setup.py builds it only when ext2fs/ext2fs.h exists
    from .._ext2fs_ffi import ffi, lib
    _IMPORT_ERROR: ImportError | None = None
except ImportError as err:  # pragma: no cover - depends on the build
    ffi = lib = None
    _IMPORT_ERROR = err

INSTALL_HINT = ("apt-get install libext2fs-dev (e2fsprogs' library), then pip install "
                "--force-reinstall --no-cache-dir dmthin (or, in a source tree, "
                "python3 csrc/build_ext2fs.py)")

#: largest single callback transfer the C side asks for (64 MiB)
MAX_IO = 64 << 20


class BlockDevice(Protocol):
    """What the view needs from a device: :class:`dmthin.ThinDevice`'s
    public I/O methods.  ``write`` gets a buffer valid only during the call."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: Any) -> int: ...

    def flush(self) -> None: ...

    def discard(self, offset: int, length: int) -> None: ...


def have_binding() -> bool:
    """True if the compiled binding can be imported."""
    return ffi is not None


def require() -> tuple[Any, Any]:
    """Return ``(ffi, lib)``.

    Raises :class:`~dmthin.errors.BackendUnavailable` naming the missing
    package when dmthin was built without libext2fs.
    """
    if ffi is None:
        raise BackendUnavailable(f"the ext4 view needs dmthin built with libext2fs "
                                 f"({_IMPORT_ERROR}): {INSTALL_HINT}")
    return ffi, lib


class DeviceIO:
    """One registered device: the handle the C side knows it by, and the
    first exception a callback raised since the last :func:`check`."""

    def __init__(self, device: BlockDevice):
        self.device = device
        self.error: BaseException | None = None
        self.handle = next(_counter)
        with _lock:
            _devices[self.handle] = self

    @property
    def name(self) -> bytes:
        return f"dmthin-extfs:{self.handle}".encode()

    def unregister(self) -> None:
        with _lock:
            _devices.pop(self.handle, None)

    def fail(self, err: BaseException) -> int:
        if self.error is None:
            self.error = err
        code = getattr(err, "errno", None)
        return code if isinstance(code, int) and code > 0 else _errno.EIO


_devices: dict[int, DeviceIO] = {}
_counter = itertools.count(1)
_lock = threading.Lock()
_ZEROS = bytes(1 << 20)


def _device(handle: int) -> DeviceIO | None:
    return _devices.get(handle)


def _py_read(handle: int, offset: int, length: int, buf: Any) -> int:
    dev = _device(handle)
    if dev is None:
        return _errno.EBADF
    try:
        data = dev.device.read(offset, length)
        out = ffi.buffer(buf, length)
        out[:len(data)] = data
        if len(data) < length:          # past the end of the device: zeros
            out[len(data):] = bytes(length - len(data))
        return 0
    except BaseException as err:  # noqa: BLE001 - kept and re-raised by check()
        return dev.fail(err)


def _py_write(handle: int, offset: int, length: int, buf: Any) -> int:
    dev = _device(handle)
    if dev is None:
        return _errno.EBADF
    try:
        dev.device.write(offset, memoryview(ffi.buffer(buf, length)))
        return 0
    except BaseException as err:  # noqa: BLE001 - kept and re-raised by check()
        return dev.fail(err)


def _py_flush(handle: int) -> int:
    dev = _device(handle)
    if dev is None:
        return _errno.EBADF
    try:
        dev.device.flush()
        return 0
    except BaseException as err:  # noqa: BLE001 - kept and re-raised by check()
        return dev.fail(err)


def _py_discard(handle: int, offset: int, length: int) -> int:
    dev = _device(handle)
    if dev is None:
        return _errno.EBADF
    try:
        dev.device.discard(offset, length)
        return 0
    except BaseException as err:  # noqa: BLE001 - kept and re-raised by check()
        return dev.fail(err)


def _py_zeroout(handle: int, offset: int, length: int) -> int:
    dev = _device(handle)
    if dev is None:
        return _errno.EBADF
    try:
        end = offset + length
        while offset < end:
            n = min(len(_ZEROS), end - offset)
            dev.device.write(offset, memoryview(_ZEROS)[:n])
            offset += n
        return 0
    except BaseException as err:  # noqa: BLE001 - kept and re-raised by check()
        return dev.fail(err)



if ffi is not None:
    for _name, _fn in (("read", _py_read), ("write", _py_write), ("flush", _py_flush),
                       ("discard", _py_discard), ("zeroout", _py_zeroout)):
        ffi.def_extern(name=f"dmthin_extfs_{_name}")(_fn)


if lib is not None:
    lib.initialize_ext2_error_table()          # com_err texts of libext2fs' codes


def _errno_table() -> dict[int, int]:
    if lib is None:
        return {}
    e = _errno
    table = {
        "BLOCK_ALLOC_FAIL": e.ENOSPC, "INODE_ALLOC_FAIL": e.ENOSPC, "DIR_NO_SPACE": e.ENOSPC,
        "EA_NO_SPACE": e.ENOSPC, "INLINE_DATA_NO_SPACE": e.ENOSPC,
        "FILE_NOT_FOUND": e.ENOENT, "DIR_EXISTS": e.EEXIST, "FILE_EXISTS": e.EEXIST,
        "NO_DIRECTORY": e.ENOTDIR, "RO_FILSYS": e.EROFS, "EA_KEY_NOT_FOUND": e.ENODATA,
        "MISSING_EA_FEATURE": e.EOPNOTSUPP, "UNSUPP_FEATURE": e.EOPNOTSUPP,
        "RO_UNSUPP_FEATURE": e.EROFS, "OP_NOT_SUPPORTED": e.EOPNOTSUPP,
        "UNIMPLEMENTED": e.EOPNOTSUPP, "INVALID_ARGUMENT": e.EINVAL, "BAD_MAGIC": e.EINVAL,
        "NO_MEMORY": e.ENOMEM, "SYMLINK_LOOP": e.ELOOP, "FILE_TOO_BIG": e.EFBIG,
        "EA_BAD_NAME_LEN": e.ERANGE, "TOO_MANY_REFS": e.EMLINK, "SHORT_READ": e.EIO,
        "DIR_CORRUPTED": e.EUCLEAN, "INODE_CSUM_INVALID": e.EUCLEAN,
        "INODE_BITMAP_CSUM_INVALID": e.EUCLEAN, "EXTENT_CSUM_INVALID": e.EUCLEAN,
        "DIR_CSUM_INVALID": e.EUCLEAN, "EXT_ATTR_CSUM_INVALID": e.EUCLEAN,
        "SB_CSUM_INVALID": e.EUCLEAN, "BLOCK_BITMAP_CSUM_INVALID": e.EUCLEAN,
        "BAD_EA_HEADER": e.EUCLEAN, "EA_INODE_CORRUPTED": e.EUCLEAN,
    }
    return {getattr(lib, "EXT2_ET_" + name): code for name, code in table.items()}


_ERRNO = _errno_table()


def message(code: int) -> str:
    """libext2fs' (com_err's) text for an error code."""
    if lib is None:
        return f"error {code}"
    if 0 < code < 4096:
        return os.strerror(code)
    text: bytes = ffi.string(lib.error_message(code))
    return text.decode("utf-8", "replace")


def check(code: int, dev: DeviceIO | None, what: str) -> None:
    """Raise for a non-zero libext2fs return *code*: the exception a device
    callback raised (if any), else the errno's :mod:`dmthin.extfs.errors`
    class with "*what*: reason"."""
    err = dev.error if dev is not None else None
    if dev is not None:
        dev.error = None
    if err is not None:
        raise err
    if code == 0:
        return
    errno = code if 0 < code < 4096 else _ERRNO.get(code, _errno.EIO)
    raise fs_error(errno, f"{what}: {message(code)}")
