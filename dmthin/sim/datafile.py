"""The pool's data file: data block N lives at byte ``N * block size``.

Plain positional I/O on one file descriptor, plus the two operations the
kernel performs on the data device besides reads and writes:

* zeroing a newly provisioned block (``ll_zero`` in dm-thin.c) -- done by
  punching a hole, so a sparse file stays sparse; where the filesystem
  cannot punch holes, zeros are written instead;
* discard passdown of a freed block -- punching a hole, so ``du`` of the
  data file shrinks.

Because the layout is the kernel's, the same file works as the data device
of a real pool (through a loop device) and the reverse.

I/O past the end of the file fails with EIO, as the block layer fails a bio
beyond the end of a device: damaged metadata mapping a block the data
device does not have never reads as zeros nor grows the file.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Callable, Iterable, Sequence
from typing import TypeAlias

from ..blockdev import fd_size
from ..errors import IOFailure
from ..pdata import writelog
from ..units import SECTOR_SIZE

FALLOC_FL_KEEP_SIZE = 0x01      # linux/falloc.h
FALLOC_FL_PUNCH_HOLE = 0x02

_ZERO_CHUNK = bytes(1 << 20)

#: a buffer written to or read from the data file
Chunk: TypeAlias = bytes | bytearray | memoryview

_libc: Callable[[int, int, int, int], int] | None = None


def _fallocate() -> Callable[[int, int, int, int], int]:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = lib.fallocate
        fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong)
        fn.restype = ctypes.c_int
        _libc = fn
    return _libc


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate ``[offset, offset+length)`` of *fd* keeping its size.

    Returns False when the filesystem does not support hole punching (the
    caller then writes zeros); raises OSError for other failures.
    """
    if length <= 0:
        return True
    r = _fallocate()(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
    if r == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, f"punching a hole in the data file failed: {os.strerror(err)}")


class DataFile:
    """Block-addressed access to the pool's data file.

    Raises :class:`~dmthin.errors.IOFailure` (EIO) when the file cannot be
    read or written (e.g. the filesystem under it is full), or for I/O past
    its end.
    """

    def __init__(self, path: str | os.PathLike[str], block_bytes: int, writable: bool = True):
        self.path = os.fspath(path)
        self.block_bytes = block_bytes
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
        self.fd = os.open(self.path, flags)
        self.can_punch = True
        self.dirty = False
        self._end = self.size()
        #: the write log attached to this file (tests of crash states), or None
        self._log = writelog.log_for(self.path) if writable else None

    def _check_end(self, pos: int, length: int, what: str) -> None:
        """EIO for I/O past the end of the file (checked against its size
        now if it seems to have grown)."""
        if pos + length > self._end:
            self._end = self.size()
            if pos + length > self._end:
                block = pos // self.block_bytes
                raise IOFailure(f"{what} data block {block}: beyond the end of the data device "
                                f"{self.path} ({self._end // self.block_bytes} blocks): the "
                                "metadata maps a block the pool does not have; run 'dmthin "
                                "check'")

    def close(self) -> None:
        """Close the file (a second call does nothing)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def size(self) -> int:
        """The file's (or block device's) size in bytes."""
        return fd_size(self.fd)

    def nr_blocks(self) -> int:
        """Whole data blocks the file holds."""
        return self.size() // self.block_bytes

    # -- I/O ------------------------------------------------------------------
    def read_into(self, block: int, offset: int, view: memoryview) -> None:
        """Fill *view* from data block *block* at byte *offset* within it
        (runs may span consecutive blocks)."""
        pos = block * self.block_bytes + offset
        want = len(view)
        self._check_end(pos, want, "reading")
        done = 0
        try:
            while done < want:
                n = os.preadv(self.fd, [view[done:]], pos + done)
                if n == 0:          # past EOF of a short file: zeros
                    view[done:] = bytes(want - done)
                    return
                done += n
        except OSError as err:
            raise IOFailure(f"reading data block {block} from {self.path} failed: "
                            f"{err.strerror}") from err

    def pread(self, pos: int, length: int) -> bytes:
        """*length* bytes at byte *pos* of the file (one data block or a run
        of them): one ``pread`` returning the bytes, no intermediate buffer.
        Raises IOFailure as :meth:`read_into`."""
        if pos + length > self._end:
            self._check_end(pos, length, "reading")
        try:
            got = os.pread(self.fd, length, pos)
        except OSError as err:
            raise IOFailure(f"reading data block {pos // self.block_bytes} from {self.path} "
                            f"failed: {err.strerror}") from err
        if len(got) == length:
            return got
        out = bytearray(length)             # short: finish as read_into does
        out[:len(got)] = got
        self.read_into(0, pos + len(got), memoryview(out)[len(got):])
        return bytes(out)

    def pwrite(self, pos: int, data: Chunk) -> None:
        """Write the bytes *data* (bytes, or a byte-format view) at byte *pos*
        of the file: one ``pwrite``.  Raises IOFailure as :meth:`write`."""
        n = len(data)
        if pos + n > self._end:
            self._check_end(pos, n, "writing")
        try:
            done = os.pwrite(self.fd, data, pos)
            while done < n:                 # a short write: finish it
                done += os.pwrite(self.fd, memoryview(data)[done:], pos + done)
        except OSError as err:
            raise IOFailure(f"writing data block {pos // self.block_bytes} to {self.path} "
                            f"failed: {err.strerror}") from err
        if self._log is not None:
            self._log_write(pos, n)
        self.dirty = True

    def write(self, block: int, offset: int, parts: Sequence[Chunk]) -> None:
        """Write the buffers *parts* back to back at data block *block*,
        byte *offset* within it."""
        pos = block * self.block_bytes + offset
        total = sum(len(p) for p in parts)
        self._check_end(pos, total, "writing")
        try:
            done = os.pwritev(self.fd, parts, pos)
            if done != total:       # a short vectored write: finish it plainly
                data = b"".join(bytes(p) for p in parts)
                while done < total:
                    done += os.pwrite(self.fd, data[done:], pos + done)
        except OSError as err:
            raise IOFailure(f"writing data block {block} to {self.path} failed: "
                            f"{err.strerror}") from err
        if self._log is not None:
            self._log_write(pos, total)
        self.dirty = True

    def _log_write(self, pos: int, length: int) -> None:
        """Log a write as the block layer issues it: whole 512-byte sectors,
        with what the file now holds around the bytes written (a device
        never writes part of a sector)."""
        lo = pos - pos % SECTOR_SIZE
        hi = -(-(pos + length) // SECTOR_SIZE) * SECTOR_SIZE
        data = os.pread(self.fd, hi - lo, lo)
        assert self._log is not None
        self._log[0].write(self._log[1], lo, data.ljust(hi - lo, b"\0"))

    def copy_block(self, src: int, dst: int) -> None:
        """Copy data block *src* to *dst* (breaking sharing)."""
        buf = bytearray(self.block_bytes)
        self.read_into(src, 0, memoryview(buf))
        self.write(dst, 0, [buf])

    def zero(self, block: int, offset: int = 0, length: int | None = None) -> None:
        """Make ``length`` bytes at *offset* of data block *block* read back
        as zeros (a punched hole, or written zeros)."""
        if length is None:
            length = self.block_bytes - offset
        pos = block * self.block_bytes + offset
        self._check_end(pos, length, "zeroing")
        if self.can_punch:
            try:
                if punch_hole(self.fd, pos, length):
                    if self._log is not None:
                        self._log[0].zero(self._log[1], pos, length)
                    self.dirty = True
                    return
            except OSError as err:
                raise IOFailure(f"zeroing data block {block} in {self.path} failed: "
                                f"{err.strerror}") from err
            self.can_punch = False
        done = 0
        while done < length:
            n = min(len(_ZERO_CHUNK), length - done)
            self.write(block, offset + done, [memoryview(_ZERO_CHUNK)[:n]])
            done += n

    def release(self, blocks: Iterable[int]) -> int:
        """Punch holes over the data blocks *blocks* (discard passdown).

        Consecutive blocks are punched as one range.  Returns the number of
        blocks released; does nothing where holes cannot be punched (the
        kernel passes a discard down and ignores its failure).
        """
        if not self.can_punch:
            return 0
        count = 0
        run_start: int | None = None
        run_len = 0
        for b in sorted(blocks):
            if run_start is not None and b == run_start + run_len:
                run_len += 1
                continue
            if run_start is not None:
                count += self._punch_run(run_start, run_len)
            run_start, run_len = b, 1
        if run_start is not None:
            count += self._punch_run(run_start, run_len)
        return count

    def _punch_run(self, start: int, n: int) -> int:
        try:
            if punch_hole(self.fd, start * self.block_bytes, n * self.block_bytes):
                if self._log is not None:
                    self._log[0].zero(self._log[1], start * self.block_bytes,
                                      n * self.block_bytes)
                return n
        except OSError:
            return 0
        self.can_punch = False
        return 0

    def sync(self) -> None:
        """fdatasync the file if it was written since the last sync."""
        if self.dirty:
            try:
                os.fdatasync(self.fd)
            except OSError as err:
                raise IOFailure(f"syncing {self.path} failed: {err.strerror}") from err
            if self._log is not None:
                self._log[0].flush(self._log[1])
            self.dirty = False
