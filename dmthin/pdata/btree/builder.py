"""Bottom-up btree building, streamed to the output (for restore).

:class:`BlockWriter` is a linear block allocator that writes each block to
the output at its own block number once it is finished: only a small window
of recent blocks is held in memory, and each is stamped with blocknr and
checksum (its validator) just before it is written.  :func:`build_btree`
packs sorted keys and fixed-size values into full leaves, balancing the last
two so that every non-root node holds at least a third of ``max_entries``
(the tools reject emptier nodes), then builds the internal levels the same
way.  :class:`U64TreeStream` does the same for a tree whose entry count is
known in advance but whose entries arrive one by one (a device's mappings
from a second pass over the input), writing each leaf as soon as it is full.
:func:`btree_blocks` says how many blocks either will use, so a caller can
check that everything fits before writing anything.  Keys must be strictly
increasing.
"""
from __future__ import annotations

import os
import struct
import sys
from array import array
from collections.abc import Sequence

from ..checksum import BLOCK_SIZE, BTREE_NODE, Validator
from .node import (
    HEADER_FIELDS,
    HEADER_FIELDS_OFFSET,
    HEADER_SIZE,
    INTERNAL_NODE,
    LEAF_NODE,
    calc_max_entries,
)

_LITTLE = sys.byteorder == "little"
_ZERO = bytes(BLOCK_SIZE)


class BlockWriter:
    """Blocks ``first``, ``first + 1``, ... of a metadata image, allocated in
    order and written to file descriptor *fd* at ``blocknr * 4096`` in
    batches of *window* blocks (``fd=None``: count only, write nothing).

    The bytes of a block may be filled in (``buf[offset(b):...]``) only until
    the next :meth:`alloc`, which may flush it.  ``OSError`` on I/O failure."""

    def __init__(self, fd: int | None, first: int = 1, window: int = 512):
        self.fd = fd
        self.next = first
        self.window = window
        self._base = first
        self.buf = bytearray(window * BLOCK_SIZE)
        self._validators: list[Validator | None] = []

    def alloc(self, validator: Validator | None) -> int:
        """Append a zeroed block; return its number."""
        n = len(self._validators)
        if n >= self.window:
            self.flush()
            n = 0
        off = n * BLOCK_SIZE
        self.buf[off:off + BLOCK_SIZE] = _ZERO
        self._validators.append(validator)
        b = self.next
        self.next = b + 1
        return b

    def offset(self, b: int) -> int:
        """Offset of block *b* (the last one allocated, or not yet flushed) in :attr:`buf`."""
        return (b - self._base) * BLOCK_SIZE

    def flush(self) -> None:
        """Seal and write the pending blocks."""
        n = len(self._validators)
        if n and self.fd is not None:
            mv = memoryview(self.buf)[:n * BLOCK_SIZE]
            try:
                for i, v in enumerate(self._validators):
                    if v is not None:
                        v.prepare_for_write(mv[i * BLOCK_SIZE:(i + 1) * BLOCK_SIZE],
                                            self._base + i)
                pos = self._base * BLOCK_SIZE
                done = 0
                while done < len(mv):
                    done += os.pwrite(self.fd, mv[done:], pos + done)
            finally:
                mv.release()
        self._base = self.next
        self._validators = []


def _u64_bytes(seq: Sequence[int]) -> bytes:
    a = seq if isinstance(seq, array) and seq.typecode == "Q" else array("Q", seq)
    if not _LITTLE:
        a = array("Q", a)
        a.byteswap()
    return a.tobytes()


def partition(n: int, max_entries: int) -> list[int]:
    """Node sizes for *n* entries: full nodes, the last two balanced so none
    has fewer than ``max_entries // 3`` (unless there is only one node)."""
    if n <= max_entries:
        return [n]
    full, rest = divmod(n, max_entries)
    sizes = [max_entries] * full
    if rest:
        sizes.append(rest)
        if rest < max_entries // 3:
            total = max_entries + rest
            sizes[-2:] = [total - total // 2, total // 2]
    return sizes


def _nr_nodes(n: int, max_entries: int) -> int:
    """``len(partition(n, max_entries))`` without building the list."""
    return 1 if n <= max_entries else -(-n // max_entries)


def btree_blocks(n: int, value_size: int) -> int:
    """Blocks :func:`build_btree` (or :class:`U64TreeStream`) uses for *n*
    entries of *value_size* bytes."""
    level = _nr_nodes(n, calc_max_entries(value_size))
    total = level
    imx = calc_max_entries(8)
    while level > 1:
        level = _nr_nodes(level, imx)
        total += level
    return total


def _write_node(w: BlockWriter, flags: int, keys_b: bytes, values_b: bytes, nr: int,
                mx: int, vs: int) -> int:
    b = w.alloc(BTREE_NODE)
    off = w.offset(b)
    buf = w.buf
    HEADER_FIELDS.pack_into(buf, off + HEADER_FIELDS_OFFSET, flags, b, nr, mx, vs)
    buf[off + HEADER_SIZE:off + HEADER_SIZE + len(keys_b)] = keys_b
    voff = off + HEADER_SIZE + 8 * mx
    buf[voff:voff + len(values_b)] = values_b
    return b


def _internal_levels(w: BlockWriter, level: list[tuple[int, int]]) -> int:
    """Build the internal levels above *level* ((first key, block) per node); return the root."""
    imx = calc_max_entries(8)
    while len(level) > 1:
        parents: list[tuple[int, int]] = []
        i = 0
        for size in partition(len(level), imx):
            chunk = level[i:i + size]
            kbytes = struct.pack(f"<{size}Q", *(k for k, _ in chunk))
            vbytes = struct.pack(f"<{size}Q", *(c for _, c in chunk))
            parents.append((chunk[0][0], _write_node(w, INTERNAL_NODE, kbytes, vbytes,
                                                     size, imx, 8)))
            i += size
        level = parents
    return level[0][1]


def build_btree(w: BlockWriter, keys: Sequence[int], values: bytes, value_size: int) -> int:
    """Build a btree holding *keys* (strictly increasing u64s: an
    ``array('Q')`` or a sequence) with *values* (``len(keys) * value_size``
    packed bytes).  Return the root block.  An empty tree is one empty leaf.
    Raises ``ValueError`` if the value bytes do not match the keys."""
    n = len(keys)
    if len(values) != n * value_size:
        raise ValueError(f"{len(values)} value bytes for {n} keys of size {value_size}")
    kb = _u64_bytes(keys)
    mx = calc_max_entries(value_size)
    level: list[tuple[int, int]] = []           # (first key, block)
    i = 0
    for size in partition(n, mx):
        b = _write_node(w, LEAF_NODE, kb[8 * i:8 * (i + size)],
                        values[value_size * i:value_size * (i + size)], size, mx, value_size)
        level.append((keys[i] if size else 0, b))
        i += size
    return _internal_levels(w, level)


def build_u64_btree(w: BlockWriter, keys: Sequence[int], values: Sequence[int]) -> int:
    """:func:`build_btree` for 8-byte values given as u64 integers."""
    return build_btree(w, keys, _u64_bytes(values), 8)


class U64TreeStream:
    """A btree of exactly *n* u64 values whose entries arrive in key order:
    append to :attr:`keys` / :attr:`values`, call :meth:`leaf_full` when
    ``len(keys) == want`` (the caller's hot loop checks this), then
    :meth:`finish` for the root.  Same layout as :func:`build_btree`."""

    __slots__ = ("w", "n", "keys", "values", "want", "_sizes", "_level", "_mx")

    def __init__(self, w: BlockWriter, n: int):
        self.w = w
        self.n = n
        self._mx = calc_max_entries(8)
        self._sizes = iter(partition(n, self._mx))
        self.want = next(self._sizes) or -1        # -1: never full (empty tree)
        self.keys = array("Q")
        self.values = array("Q")
        self._level: list[tuple[int, int]] = []

    def leaf_full(self) -> None:
        """Write the current leaf and start the next one."""
        keys = self.keys
        b = _write_node(self.w, LEAF_NODE, _u64_bytes(keys), _u64_bytes(self.values),
                        len(keys), self._mx, 8)
        self._level.append((keys[0], b))
        self.keys = array("Q")
        self.values = array("Q")
        self.want = next(self._sizes, -1)

    def finish(self) -> int:
        """Write the internal levels; return the root.  Raises ``ValueError``
        if the entries did not number exactly *n*."""
        if self.keys or self.want != -1:
            raise ValueError(f"expected {self.n} entries, got a different number")
        if not self._level:
            self._level.append((0, _write_node(self.w, LEAF_NODE, b"", b"", 0, self._mx, 8)))
        return _internal_levels(self.w, self._level)
