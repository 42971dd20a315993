"""Byte-level I/O on a block device with ``O_DIRECT``.

Reads and writes bypass the page cache through a page-aligned buffer
(an anonymous ``mmap``).  Requests not aligned to the device's logical
block size are widened to whole blocks (a write becomes
read-modify-write of its edge blocks), so everything stays ``O_DIRECT``
and coherent.  Discard is ``BLKDISCARD``; flush is ``fsync`` (a
``REQ_PREFLUSH``, on which a thin pool commits its metadata).
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct

from ..errors import ThinOSError, error_for

BLKSSZGET = 0x1268
BLKDISCARD = 0x1277
CHUNK = 4 << 20          # largest single I/O


class BlockIO:
    """One open block device.  Opened lazily; :meth:`close` to release.

    Errors are :class:`~dmthin.errors.ThinOSError` subclasses with the
    errno of the failed system call (ENOSPC from a full pool, EOPNOTSUPP
    for a discard the pool ignores, EIO...).
    """

    def __init__(self, path: str, readonly: bool = False):
        self.path = path
        self.readonly = readonly
        self._fd: int | None = None
        self._direct = True
        self.align = 512

    def _open(self) -> int:
        if self._fd is None:
            mode = (os.O_RDONLY if self.readonly else os.O_RDWR) | os.O_CLOEXEC
            try:
                fd = os.open(self.path, mode | os.O_DIRECT)
            except OSError as err:
                if err.errno != errno.EINVAL:
                    raise self._err(err, "open") from None
                fd = os.open(self.path, mode)
                self._direct = False
            try:
                self.align = max(512, struct.unpack(
                    "=i", fcntl.ioctl(fd, BLKSSZGET, bytes(4)))[0])
            except OSError:
                self.align = 4096
            self._fd = fd
        return self._fd

    @property
    def open_count(self) -> int:
        """How many descriptors of ours hold the device (0 or 1)."""
        return 0 if self._fd is None else 1

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _err(self, err: OSError, op: str) -> ThinOSError:
        return error_for(err.errno or errno.EIO,
                         f"{op} on {self.path}: {os.strerror(err.errno or errno.EIO)}")

    def _span(self, offset: int, length: int) -> tuple[int, int]:
        a = self.align
        start = offset - offset % a
        end = -(-(offset + length) // a) * a
        return start, end

    def _pread(self, fd: int, start: int, end: int) -> bytes:
        out = bytearray()
        while start < end:
            n = min(CHUNK, end - start)
            buf = mmap.mmap(-1, n)
            try:
                got = os.preadv(fd, [buf], start)
                out += buf[:got]
            finally:
                buf.close()
            if got < n:
                break
            start += n
        return bytes(out)

    def _pwrite(self, fd: int, start: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            n = min(CHUNK, len(data) - pos)
            buf = mmap.mmap(-1, n)
            try:
                buf[:n] = data[pos:pos + n]
                done = os.pwritev(fd, [buf], start + pos)
            finally:
                buf.close()
            if done <= 0:
                raise OSError(errno.EIO, "short write")
            pos += done

    def read(self, offset: int, length: int) -> bytes:
        """*length* bytes at *offset* (short only at the end of the device)."""
        fd = self._open()
        try:
            if not self._direct:
                return os.pread(fd, length, offset)
            start, end = self._span(offset, length)
            data = self._pread(fd, start, end)
        except OSError as err:
            raise self._err(err, f"read of {length} bytes at {offset}") from None
        return data[offset - start:offset - start + length]

    def write(self, offset: int, data: bytes) -> int:
        """Write *data* at *offset*; return ``len(data)``."""
        fd = self._open()
        try:
            if not self._direct:
                view = memoryview(data)
                while view:
                    n = os.pwrite(fd, view, offset)
                    view, offset = view[n:], offset + n
                return len(data)
            start, end = self._span(offset, len(data))
            if start == offset and end == offset + len(data):
                self._pwrite(fd, start, data)
            else:
                a = self.align
                head = self._pread(fd, start, start + a)
                tail = self._pread(fd, end - a, end) if end - a > start else b""
                whole = bytearray(end - start)
                whole[:len(head)] = head
                if tail:
                    whole[end - a - start:] = tail
                whole[offset - start:offset - start + len(data)] = data
                self._pwrite(fd, start, bytes(whole))
        except OSError as err:
            raise self._err(err, f"write of {len(data)} bytes at {offset}") from None
        return len(data)

    def discard(self, offset: int, length: int) -> None:
        """``BLKDISCARD`` the whole logical blocks inside the byte range."""
        fd = self._open()
        a = self.align
        start = -(-offset // a) * a
        end = (offset + length) // a * a
        if end <= start:
            return
        try:
            fcntl.ioctl(fd, BLKDISCARD, struct.pack("=QQ", start, end - start))
        except OSError as err:
            raise self._err(err, f"discard of {end - start} bytes at {start}") from None

    def flush(self) -> None:
        """``fsync``: the device's caches are flushed (a thin pool commits)."""
        fd = self._open()
        try:
            os.fsync(fd)
        except OSError as err:
            raise self._err(err, "flush") from None
