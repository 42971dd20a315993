"""Bottom-up btree building into an in-memory metadata image (for restore).

:class:`BlockImage` is a linear block allocator over a contiguous
``bytearray``: block *b* lives at ``b * 4096``; each block remembers its
validator and :meth:`BlockImage.seal` stamps blocknr and checksum on all of
them.  :func:`build_btree` packs sorted keys and fixed-size values into full
leaves, balancing the last two so that every non-root node holds at least a
third of ``max_entries`` (the tools reject emptier nodes), then builds the
internal levels the same way.  Keys must be strictly increasing.
"""
from __future__ import annotations

import struct
import sys
from array import array

from ..checksum import BLOCK_SIZE, BTREE_NODE, Validator
from .node import HEADER_SIZE, INTERNAL_NODE, LEAF_NODE, calc_max_entries

_HDR = struct.Struct("<IQIII")          # flags, blocknr, nr_entries, max_entries, value_size
_LITTLE = sys.byteorder == "little"


class BlockImage:
    """Blocks 0..n-1 of a metadata image being built in memory.  Block 0 is
    reserved (the superblock)."""

    def __init__(self, first_validator: Validator | None = None):
        self.buf = bytearray(BLOCK_SIZE)
        self.validators: list[Validator | None] = [first_validator]

    @property
    def nr_blocks(self) -> int:
        return len(self.validators)

    def alloc(self, validator: Validator) -> int:
        """Append a zeroed block; return its number."""
        self.buf.extend(bytes(BLOCK_SIZE))
        self.validators.append(validator)
        return len(self.validators) - 1

    def view(self, b: int) -> memoryview:
        return memoryview(self.buf)[b * BLOCK_SIZE:(b + 1) * BLOCK_SIZE]

    def seal(self) -> None:
        """Stamp blocknr and checksum on every block that has a validator."""
        for b, v in enumerate(self.validators):
            if v is not None:
                v.prepare_for_write(self.view(b), b)


def _u64_bytes(seq) -> bytes:
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


def _write_node(img: BlockImage, flags: int, keys_b: bytes, values_b: bytes, nr: int,
                mx: int, vs: int) -> int:
    b = img.alloc(BTREE_NODE)
    off = b * BLOCK_SIZE
    buf = img.buf
    _HDR.pack_into(buf, off + 4, flags, b, nr, mx, vs)
    buf[off + HEADER_SIZE:off + HEADER_SIZE + len(keys_b)] = keys_b
    voff = off + HEADER_SIZE + 8 * mx
    buf[voff:voff + len(values_b)] = values_b
    return b


def build_btree(img: BlockImage, keys, values: bytes, value_size: int) -> int:
    """Build a btree holding *keys* (strictly increasing u64s: an
    ``array('Q')`` or a sequence) with *values* (``len(keys) * value_size``
    packed bytes).  Return the root block.  An empty tree is one empty leaf."""
    n = len(keys)
    if len(values) != n * value_size:
        raise ValueError(f"{len(values)} value bytes for {n} keys of size {value_size}")
    kb = _u64_bytes(keys)
    mx = calc_max_entries(value_size)
    level: list[tuple[int, int]] = []           # (first key, block)
    i = 0
    for size in partition(n, mx):
        b = _write_node(img, LEAF_NODE, kb[8 * i:8 * (i + size)],
                        values[value_size * i:value_size * (i + size)], size, mx, value_size)
        level.append((keys[i] if size else 0, b))
        i += size
    imx = calc_max_entries(8)
    while len(level) > 1:
        parents: list[tuple[int, int]] = []
        i = 0
        for size in partition(len(level), imx):
            chunk = level[i:i + size]
            kbytes = struct.pack(f"<{size}Q", *(k for k, _ in chunk))
            vbytes = struct.pack(f"<{size}Q", *(c for _, c in chunk))
            parents.append((chunk[0][0], _write_node(img, INTERNAL_NODE, kbytes, vbytes,
                                                     size, imx, 8)))
            i += size
        level = parents
    return level[0][1]


def build_u64_btree(img: BlockImage, keys, values) -> int:
    """:func:`build_btree` for 8-byte values given as u64 integers."""
    return build_btree(img, keys, _u64_bytes(values), 8)
