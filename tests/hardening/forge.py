"""Forging hostile metadata for the hardening tests: read a block, change a
field, re-seal it with its own kind's checksum (so only the content is
wrong), write it back."""
from __future__ import annotations

import os
import struct
from pathlib import Path

from dmthin import Pool
from dmthin.pdata.block import BlockManager
from dmthin.pdata.btree.walk import iter_leaves, lookup
from dmthin.pdata.checksum import BITMAP, BLOCK_SIZE, BTREE_NODE, INDEX, SUPERBLOCK, block_kind
from dmthin.thin.format import TIME_BITS
from dmthin.thin.superblock import read_superblock

BS = 64 << 10
_VALIDATORS = {v.name: v for v in (SUPERBLOCK, BTREE_NODE, BITMAP, INDEX)}


def make_pool(path: Path, data_size: str = "8M") -> Path:
    """A closed sim pool: thin 1 with blocks 0..2 written (b"a", b"b",
    b"c" repeated), thin 2 a snapshot of it with block 1 rewritten (b"B"),
    thin 3 empty.  Returns its directory."""
    with Pool.create(path, data_size=data_size, metadata_size="4M", backend="sim") as pool:
        t = pool.create_thin(1, "1M")
        for i, c in enumerate(b"abc"):
            t.write(i * BS, bytes([c]) * BS)
        t.flush()
        s = pool.create_snap(2, 1)
        s.write(BS, b"B" * BS)
        s.flush()
        pool.create_thin(3, "1M")
    return path


def metadata(path: Path) -> Path:
    return path / "metadata" if path.is_dir() else path


def read_block(path: Path, b: int) -> bytearray:
    with open(metadata(path), "rb") as f:
        f.seek(b * BLOCK_SIZE)
        return bytearray(f.read(BLOCK_SIZE))


def write_block(path: Path, b: int, buf: bytes | bytearray, kind: str | None = "same") -> None:
    """Write *buf* at block *b*, re-sealed as a *kind* block ("same": the
    kind its current checksum says; None: as is)."""
    buf = bytearray(buf)
    if kind == "same":
        kind = block_kind(read_block(path, b))
    if kind is not None:
        _VALIDATORS[kind].prepare_for_write(buf, b)
    fd = os.open(metadata(path), os.O_WRONLY)
    try:
        os.pwrite(fd, buf, b * BLOCK_SIZE)
    finally:
        os.close(fd)


def superblock(path: Path):
    bm = BlockManager(metadata(path))
    try:
        return read_superblock(bm)
    finally:
        bm.close()


def subtree_root(path: Path, dev_id: int) -> int:
    bm = BlockManager(metadata(path))
    try:
        return lookup(bm, read_superblock(bm).data_mapping_root, dev_id)
    finally:
        bm.close()


def mapping_leaves(path: Path, dev_id: int) -> list[int]:
    bm = BlockManager(metadata(path))
    try:
        root = lookup(bm, read_superblock(bm).data_mapping_root, dev_id)
        return [b for b, _k, _v in iter_leaves(bm, root)]
    finally:
        bm.close()


def header(buf: bytes | bytearray) -> tuple[int, int, int, int]:
    """(flags, nr_entries, max_entries, value_size) of a node."""
    flags, _blocknr, nr, mx, vs = struct.unpack_from("<IQIII", buf, 4)
    return flags, nr, mx, vs


def set_header(buf: bytearray, *, flags: int | None = None, nr: int | None = None,
               mx: int | None = None, vs: int | None = None) -> None:
    old = header(buf)
    new = [old[i] if v is None else v for i, v in enumerate((flags, nr, mx, vs))]
    struct.pack_into("<I", buf, 4, new[0])
    struct.pack_into("<III", buf, 16, new[1], new[2], new[3])


def set_key(buf: bytearray, i: int, key: int) -> None:
    struct.pack_into("<Q", buf, 32 + 8 * i, key)


def set_mapping(path: Path, dev_id: int, index: int, data_block: int) -> int:
    """Point the *index*-th mapping of *dev_id*'s first leaf at *data_block*
    (same time); returns the leaf's block."""
    leaf = mapping_leaves(path, dev_id)[0]
    buf = read_block(path, leaf)
    _f, _nr, mx, _vs = header(buf)
    off = 32 + 8 * mx + 8 * index
    old = struct.unpack_from("<Q", buf, off)[0]
    struct.pack_into("<Q", buf, off, (data_block << TIME_BITS) | (old & ((1 << TIME_BITS) - 1)))
    write_block(path, leaf, buf)
    return leaf
