"""Btree node format (dm-btree-internal.h).

A node is one 4 KiB block: a 32-byte header (csum, flags, blocknr,
nr_entries, max_entries, value_size, padding), then ``le64 keys[max]`` at
offset 32, then ``values[max]`` of ``value_size`` bytes each.  Unused slots
are zero.  Internal nodes have value_size 8 (child block numbers).
"""
from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import Any

from ...errors import BTreeError
from ..checksum import BLOCK_SIZE, BTREE_NODE, Buffer, Validator

INTERNAL_NODE = 1
LEAF_NODE = 2
HEADER_SIZE = 32
# The header after the checksum: flags, blocknr, nr_entries, max_entries,
# value_size (then 4 bytes of padding up to HEADER_SIZE).
HEADER_FIELDS_OFFSET = 4
HEADER_FIELDS = struct.Struct("<IQIII")

# Bounds on the depth of a tree, as cycle guards.  dm-btree.c bounds a path
# being modified (and its deletion stack) at 64 nodes; read-only walkers
# stop at 16 levels, which with a fan-out of at least 84 (a third of the
# smallest max_entries, 252) covers far more than 2^64 keys.
MAX_SPINE_DEPTH = 64
WALK_MAX_DEPTH = 16

#: a value in a node: an int for 8-byte values (child blocks, block-time
#: pairs, ...), else ``bytes`` of the node's value size
Value = Any


def calc_max_entries(value_size: int) -> int:
    """``calc_max_entries``: a multiple of 3 that fits the block."""
    return 3 * (((BLOCK_SIZE - HEADER_SIZE) // (8 + value_size)) // 3)


def read_header(buf: Buffer) -> tuple[int, int, int, int]:
    """Return ``(flags, nr_entries, max_entries, value_size)``."""
    flags, _blocknr, nr, mx, vs = HEADER_FIELDS.unpack_from(buf, HEADER_FIELDS_OFFSET)
    return flags, nr, mx, vs


def check_header(buf: Buffer, blocknr: int) -> tuple[int, int, int, int]:
    """``node_check``'s shape tests; raise :class:`BTreeError`."""
    flags, nr, mx, vs = read_header(buf)
    if HEADER_SIZE + (8 + vs) * mx > BLOCK_SIZE:
        raise BTreeError(f"btree node {blocknr}: max_entries {mx} with value size {vs} "
                         "does not fit a block", blocknr)
    if nr > mx:
        raise BTreeError(f"btree node {blocknr}: nr_entries {nr} > max_entries {mx}", blocknr)
    if not flags & (INTERNAL_NODE | LEAF_NODE):
        raise BTreeError(f"btree node {blocknr}: neither internal nor leaf (flags {flags})",
                         blocknr)
    return flags, nr, mx, vs


def lower_bound(keys: Sequence[int], key: int) -> int:
    """The kernel's ``lower_bound``: index of *key*, else of the last key
    below it, else -1.  *keys* ascend strictly, as in every valid node."""
    return bisect_right(keys, key) - 1


def upper_bound(keys: Sequence[int], key: int) -> int:
    """The kernel's ``upper_bound``: index of *key*, else of the first key
    above it (``len(keys)`` if none)."""
    return bisect_left(keys, key)


def read_keys(buf: Buffer, nr: int) -> tuple[int, ...]:
    return struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE)


def read_u64_values(buf: Buffer, nr: int, mx: int) -> tuple[int, ...]:
    return struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE + 8 * mx)


def read_values(buf: Buffer, nr: int, mx: int,
                vs: int) -> tuple[int, ...] | list[bytes]:
    """The first *nr* values of a node: a tuple of ints for 8-byte values,
    else a list of ``bytes``."""
    off = HEADER_SIZE + 8 * mx
    if vs == 8:
        return struct.unpack_from(f"<{nr}Q", buf, off)
    raw = bytes(buf[off:off + nr * vs])
    return [raw[i * vs:(i + 1) * vs] for i in range(nr)]


def value_offset(mx: int, vs: int, i: int) -> int:
    return HEADER_SIZE + 8 * mx + i * vs


def check_leaf_value_size(node: Node, want: int, blocknr: int) -> None:
    """A leaf reached in a tree of *want*-byte values must hold such
    values (else it belongs to another tree: a lookup would read garbage,
    an insert would mix value sizes).  Raises :class:`BTreeError`."""
    if node.flags & LEAF_NODE and node.value_size != want:
        raise BTreeError(f"btree leaf {blocknr} holds {node.value_size}-byte values where "
                         f"{want}-byte values belong (a node of another tree)", blocknr)


class Node:
    """A decoded btree node: mutable lists of keys and values.

    Values are ints for value_size 8, else ``bytes`` of value_size.
    """

    __slots__ = ("flags", "max_entries", "value_size", "keys", "values")

    def __init__(self, flags: int, max_entries: int, value_size: int,
                 keys: list[int] | None = None, values: list[Value] | None = None):
        self.flags = flags
        self.max_entries = max_entries
        self.value_size = value_size
        self.keys = keys if keys is not None else []
        self.values = values if values is not None else []

    @property
    def is_leaf(self) -> bool:
        return bool(self.flags & LEAF_NODE)

    @property
    def nr_entries(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        kind = "leaf" if self.is_leaf else "internal"
        return f"<Node {kind} {len(self.keys)}/{self.max_entries} vs={self.value_size}>"

    @classmethod
    def empty(cls, value_size: int, leaf: bool = True) -> Node:
        return cls(LEAF_NODE if leaf else INTERNAL_NODE, calc_max_entries(value_size),
                   value_size)

    @classmethod
    def decode(cls, buf: Buffer, blocknr: int = -1) -> Node:
        """The node in *buf*: :func:`check_header`, and a node the btree code
        can use: exactly one of the INTERNAL and LEAF flags, an internal
        node's values 8-byte block numbers (the tools' rules; the kernel's
        ``node_check`` takes both flags and then reads the node both ways).
        Raises :class:`BTreeError`."""
        flags, nr, mx, vs = check_header(buf, blocknr)
        if flags & (INTERNAL_NODE | LEAF_NODE) == INTERNAL_NODE | LEAF_NODE:
            raise BTreeError(f"btree node {blocknr} is both internal and leaf "
                             f"(flags {flags})", blocknr)
        if flags & INTERNAL_NODE and vs != 8:
            raise BTreeError(f"internal btree node {blocknr} has value size {vs}, not 8",
                             blocknr)
        keys = list(struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE))
        return cls(flags, mx, vs, keys, list(read_values(buf, nr, mx, vs)))

    def encode_into(self, buf: bytearray) -> None:
        """Write the node into *buf* (csum and blocknr are the validator's)."""
        nr = len(self.keys)
        mx, vs = self.max_entries, self.value_size
        if nr > mx:
            raise BTreeError(f"node overflow: {nr} entries > max {mx}")
        buf[4:BLOCK_SIZE] = bytes(BLOCK_SIZE - 4)
        HEADER_FIELDS.pack_into(buf, HEADER_FIELDS_OFFSET, self.flags, 0, nr, mx, vs)
        struct.pack_into(f"<{nr}Q", buf, HEADER_SIZE, *self.keys)
        off = HEADER_SIZE + 8 * mx
        if vs == 8:
            struct.pack_into(f"<{nr}Q", buf, off, *self.values)
        elif nr:
            buf[off:off + nr * vs] = b"".join(self.values)


class NodeCodec:
    """How the transaction manager decodes and copies btree nodes (its hook
    into this module: it caches decoded nodes without importing btrees)."""

    validator: Validator = BTREE_NODE

    @staticmethod
    def decode(buf: Buffer, blocknr: int) -> Node:
        return Node.decode(buf, blocknr)

    @staticmethod
    def copy(node: Node) -> Node:
        return Node(node.flags, node.max_entries, node.value_size, list(node.keys),
                    list(node.values))


NODE_CODEC = NodeCodec()
