"""Block I/O over a metadata file: 4 KiB blocks, validators, a bounded cache.

The :class:`BlockManager` knows nothing of transactions: the transaction
manager decides which blocks may be written.  Dirty blocks live in the same
bounded LRU cache as clean ones; when one is evicted it is sealed (blocknr and
checksum stamped by its validator) and written to the file, so metadata larger
than memory works.  :meth:`flush` writes every dirty block and syncs.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..blockdev import fd_size
from ..errors import MetadataError
from . import writelog
from .accel import ffi as _ffi
from .accel import lib as _lib
from .checksum import BLOCK_SIZE, Validator

DEFAULT_CACHE_BLOCKS = 8192          # 32 MiB


class CachedNode(Protocol):
    """A decoded btree node the cache holds for a block."""

    def encode_into(self, buf: bytearray) -> None: ...


class _Entry:
    __slots__ = ("buf", "dirty", "validator", "node")

    def __init__(self, buf: bytes | bytearray, dirty: bool, validator: Validator | None,
                 node: CachedNode | None = None):
        self.buf = buf
        self.dirty = dirty
        self.validator = validator
        # A decoded btree node; when set it is authoritative and ``buf`` is
        # refreshed from it before the block is written.
        self.node = node


class BlockManager:
    """Validated, cached access to the 4 KiB blocks of one file.

    Raises :class:`~dmthin.errors.MetadataError` (or its checksum and blocknr
    subclasses) for blocks that fail validation or lie past the end.
    """

    def __init__(self, path: str | os.PathLike[str], writable: bool = False,
                 cache_blocks: int = DEFAULT_CACHE_BLOCKS, nr_blocks: int | None = None):
        self.path = os.fspath(path)
        self.writable = writable
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
        self.fd = os.open(self.path, flags)
        self.file_blocks = fd_size(self.fd) // BLOCK_SIZE   # a block device's st_size is 0
        self.nr_blocks = self.file_blocks if nr_blocks is None else nr_blocks
        self.cache_blocks = max(16, cache_blocks)
        self._cache: OrderedDict[int, _Entry] = OrderedDict()
        #: the write log attached to this file (tests of crash states), or None
        self._log = writelog.log_for(self.path) if writable else None
        self.reads = 0
        self.writes = 0

    def __repr__(self) -> str:
        return f"<BlockManager {self.path!r} {self.nr_blocks} blocks>"

    def refresh_size(self) -> None:
        """Take up a file (or device) that has grown since it was opened."""
        self.file_blocks = fd_size(self.fd) // BLOCK_SIZE

    def close(self) -> None:
        """Close the file without writing dirty blocks (abort semantics)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._cache.clear()

    # -- internals ---------------------------------------------------------
    def _check_range(self, b: int) -> None:
        if not 0 <= b < self.file_blocks:
            raise MetadataError(f"metadata block {b} is past the end of {self.path} "
                                f"({self.file_blocks} blocks)", b)

    def _read_raw(self, b: int) -> bytes:
        self._check_range(b)
        data = os.pread(self.fd, BLOCK_SIZE, b * BLOCK_SIZE)
        self.reads += 1
        if len(data) != BLOCK_SIZE:
            raise MetadataError(f"short read of metadata block {b} from {self.path}", b)
        return data

    def _insert(self, b: int, entry: _Entry) -> None:
        cache = self._cache
        cache[b] = entry
        cache.move_to_end(b)
        while len(cache) > self.cache_blocks:
            old_b, old = cache.popitem(last=False)
            if old.dirty:
                self._write_out(old_b, old)

    def _write_out(self, b: int, entry: _Entry) -> None:
        buf = entry.buf
        if not isinstance(buf, bytearray):  # (only a clean block's buffer is bytes)
            buf = entry.buf = bytearray(buf)
        if entry.node is not None:
            entry.node.encode_into(buf)
        if entry.validator is not None:
            entry.validator.prepare_for_write(buf, b)
        os.pwrite(self.fd, buf, b * BLOCK_SIZE)
        if self._log is not None:
            self._log[0].write(self._log[1], b * BLOCK_SIZE, buf)
        self.writes += 1
        entry.dirty = False

    # -- reading -------------------------------------------------------------
    def prefetch(self, blocks: Sequence[int], validator: Validator) -> None:
        """Read the blocks of *blocks* that are not cached in one accelerator
        call (consecutive ones in one read) and cache those *validator*
        accepts, so that :meth:`read` of them costs a lookup: the children of
        a btree node before a walk visits them.  Blocks that fail (past the
        end, a bad checksum) are left out: :meth:`read` names the problem.
        At most half the cache is filled; without the accelerator this does
        nothing."""
        if _lib is None:
            return
        cache = self._cache
        end = self.file_blocks
        want = [b for b in blocks if b not in cache and 0 <= b < end]
        want = want[:self.cache_blocks // 2]
        n = len(want)
        if n < 2:
            return
        out = bytearray(n * BLOCK_SIZE)
        status = bytearray(n)
        _lib.dm_read_blocks(self.fd, _ffi.new("uint64_t[]", want), n, _ffi.from_buffer(out),
                            _ffi.from_buffer(status), validator.salt)
        self.reads += n
        mv = memoryview(out)
        for i, b in enumerate(want):
            if not status[i]:
                cache[b] = _Entry(bytes(mv[i * BLOCK_SIZE:(i + 1) * BLOCK_SIZE]), False,
                                  validator)
        while len(cache) > self.cache_blocks:
            old_b, old = cache.popitem(last=False)
            if old.dirty:
                self._write_out(old_b, old)

    def read(self, b: int, validator: Validator | None) -> bytearray | bytes:
        """Return block *b*, checked by *validator* (None: unchecked).

        The result must not be modified; use :meth:`write_lock` for that.
        """
        entry = self._cache.get(b)
        if entry is not None:
            self._cache.move_to_end(b)
            if entry.node is not None and entry.dirty:
                # Raw view of a dirty decoded node: refresh the buffer.
                if not isinstance(entry.buf, bytearray):
                    entry.buf = bytearray(entry.buf)
                entry.node.encode_into(entry.buf)
                if entry.validator is not None:
                    entry.validator.prepare_for_write(entry.buf, b)
            elif entry.validator is not validator and validator is not None and not entry.dirty:
                validator.check(entry.buf, b)
                entry.validator = validator
            return entry.buf
        data = self._read_raw(b)
        if validator is not None:
            validator.check(data, b)
        self._insert(b, _Entry(data, False, validator))
        return data

    def read_node(self, b: int, validator: Validator,
                  decode: Callable[[bytes | bytearray, int], Any]) -> Any:
        """Return the decoded btree node at *b* (cached).  The result must not
        be modified; use :meth:`write_node`."""
        entry = self._cache.get(b)
        if entry is not None and entry.node is not None:
            self._cache.move_to_end(b)
            return entry.node
        buf = self.read(b, validator)
        node = decode(buf, b)
        self._cache[b].node = node
        return node

    def write_node(self, b: int, validator: Validator, node: CachedNode) -> None:
        """Make *node* the authoritative, dirty contents of block *b*."""
        entry = self._cache.get(b)
        if entry is None:
            entry = _Entry(bytearray(BLOCK_SIZE), True, validator, node)
            self._insert(b, entry)
        else:
            self._cache.move_to_end(b)
            entry.node = node
            entry.dirty = True
            entry.validator = validator

    def holds_dirty_node(self, b: int, node: object) -> bool:
        """True if *node* is the cached, dirty, authoritative content of
        block *b* (not written out or replaced since :meth:`write_node`)."""
        entry = self._cache.get(b)
        return entry is not None and entry.node is node and entry.dirty

    def read_uncached(self, b: int) -> bytes:
        """Read block *b* from the file, bypassing the cache (for checkers)."""
        return self._read_raw(b)

    # -- writing -----------------------------------------------------------------
    def write_lock(self, b: int, validator: Validator) -> bytearray:
        """Return block *b* as a mutable buffer; it will be written back.

        Only the transaction manager calls this, for blocks that are new or
        shadowed in the current transaction.
        """
        entry = self._cache.get(b)
        if entry is None:
            data = self._read_raw(b)
            validator.check(data, b)
            new = bytearray(data)
            self._insert(b, _Entry(new, True, validator))
            return new
        else:
            self._cache.move_to_end(b)
            buf = entry.buf
            if not isinstance(buf, bytearray):
                buf = entry.buf = bytearray(buf)
            if entry.node is not None:
                entry.node.encode_into(buf)
                entry.node = None
            entry.dirty = True
            entry.validator = validator
            return buf

    def write_lock_zero(self, b: int, validator: Validator) -> bytearray:
        """Return a zeroed mutable buffer for block *b* (a new block)."""
        if not 0 <= b < self.nr_blocks:
            raise MetadataError(f"metadata block {b} is beyond the metadata device "
                                f"({self.nr_blocks} blocks)", b)
        if b >= self.file_blocks:
            self._check_range(b)
        buf = bytearray(BLOCK_SIZE)
        self._insert(b, _Entry(buf, True, validator))
        return buf

    def write_block_now(self, b: int, buf: bytearray, validator: Validator) -> None:
        """Seal and write *buf* at block *b* immediately (the superblock)."""
        self._check_range(b)
        entry = _Entry(buf, True, validator)
        self._write_out(b, entry)
        self._insert(b, entry)

    def flush(self) -> None:
        """Write every dirty block, then fsync."""
        for b in sorted(b for b, e in self._cache.items() if e.dirty):
            self._write_out(b, self._cache[b])
        self.sync()

    def sync(self) -> None:
        if self.writable:
            os.fsync(self.fd)
            if self._log is not None:
                self._log[0].flush(self._log[1])

    def forget(self, b: int) -> None:
        """Drop block *b* from the cache without writing it."""
        self._cache.pop(b, None)

    def discard_dirty(self) -> None:
        """Drop every dirty block (abort)."""
        for b in [b for b, e in self._cache.items() if e.dirty]:
            del self._cache[b]

    def dirty_count(self) -> int:
        return sum(1 for e in self._cache.values() if e.dirty)
