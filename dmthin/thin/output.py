"""Writing whole metadata to an output (restore, repair, metadata-unpack) so
that a crash at any moment leaves the old metadata, the new metadata, or a
clear error -- never a mix that opens.

* A regular file (or a new one): the metadata is built in a new file made
  with ``mkstemp`` in the same directory (the old file's size, mode and
  owner), fsync'ed, renamed over the output (over the file a symlink names)
  and the directory fsync'ed.
* In place -- a block device, a file with several hard links, or when asked
  (a pool directory's metadata, which a loop device may hold open): block 0
  is first overwritten with the "incomplete restore" mark
  (:func:`~dmthin.thin.format.incomplete_restore_block`) and synced, then the
  other blocks are written, then the new superblock last.  The mark is not
  all zeroes (no kernel formats over it) and has no superblock magic
  (nothing opens it); dmthin's readers name it.
"""
from __future__ import annotations

import errno
import os
import stat
from types import TracebackType

from ..pdata.checksum import BLOCK_SIZE, SUPERBLOCK
from .format import Superblock, incomplete_restore_block


def pwrite_all(fd: int, buf: bytes | bytearray | memoryview, pos: int, path: str) -> None:
    """Write all of *buf* at *pos*.  Raises ``OSError``."""
    view = memoryview(buf)
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], pos + done)
        if n <= 0:
            raise OSError(f"short write to {path}")
        done += n


def fsync_dir(path: str) -> None:
    """fsync the directory holding *path* (a rename in it is then durable)."""
    dfd = os.open(os.path.dirname(os.path.abspath(path)),
                  os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class MetadataOutput:
    """The output of a whole-metadata write; use as a context manager:
    :meth:`begin`, write blocks 1.. to :attr:`fd`, fsync, write the
    superblock (block 0) last, then :meth:`commit`.  Leaving the context
    without a commit drops a new file (an in-place output keeps its mark).

    *in_place*: None decides by the output's type (see the module
    docstring).  *new_size*: the size in bytes of a new file, made when
    *path* does not exist (else the output must exist).  *nofollow*: the
    output is a pool directory's file, never reached through a symlink.
    Raises ``OSError`` (``FileNotFoundError`` for a missing output,
    ``ELOOP`` for a symlink with *nofollow*)."""

    def __init__(self, path: str | os.PathLike[str], *, in_place: bool | None = None,
                 new_size: int | None = None, nofollow: bool = False):
        self.path = os.fspath(path)
        self._tmp: str | None = None
        self.committed = False
        try:
            st: os.stat_result | None = os.lstat(self.path) if nofollow else os.stat(self.path)
        except FileNotFoundError:
            if new_size is None:
                raise
            st = None
        if st is not None and in_place is None:
            in_place = not stat.S_ISREG(st.st_mode) or st.st_nlink != 1
        self.in_place = bool(in_place)
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise OSError(errno.ELOOP, f"{self.path} is a symbolic link: a pool's files are "
                          "never written through one")
        if self.in_place:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC
                              | (os.O_NOFOLLOW if nofollow else 0))
            return
        # a symlink stays: the file it names is replaced
        self.path = os.path.realpath(self.path)
        import tempfile  # (here: a tool that never replaces a file does not load it)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{os.path.basename(self.path)}.",
                                         suffix=".new", dir=os.path.dirname(self.path))
        self.fd = fd
        try:
            os.ftruncate(fd, st.st_size if new_size is None and st is not None
                         else new_size or 0)
            if st is not None:
                if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
                    os.fchown(fd, st.st_uid, st.st_gid)
                os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o777)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> MetadataOutput:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def begin(self) -> None:
        """Before the first block is written: mark an in-place output."""
        if self.in_place:
            pwrite_all(self.fd, incomplete_restore_block(), 0, self.path)
            os.fsync(self.fd)

    def write_superblock(self, buf: bytes | bytearray) -> None:
        """Sync what was written, then write the sealed superblock *buf* at
        block 0 and sync it."""
        os.fsync(self.fd)
        pwrite_all(self.fd, buf[:BLOCK_SIZE], 0, self.path)
        os.fsync(self.fd)

    def finish(self, sb: Superblock) -> None:
        """Seal *sb*, write it last (:meth:`write_superblock`) and
        :meth:`commit`: the end of every whole-metadata writer."""
        buf = bytearray(BLOCK_SIZE)
        sb.pack_into(buf)
        SUPERBLOCK.prepare_for_write(buf, 0)
        self.write_superblock(buf)
        self.commit()

    def commit(self) -> None:
        """The new metadata is complete and synced: publish it."""
        if self._tmp is not None:
            os.replace(self._tmp, self.path)
            self._tmp = None
            fsync_dir(self.path)
        self.committed = True

    def close(self) -> None:
        """Close; drop a new file that was not committed."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._tmp = None
