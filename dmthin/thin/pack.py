"""``thin_metadata_pack`` / ``thin_metadata_unpack``: thin metadata squeezed
for bug reports, in thin-provisioning-tools 1.x's pack format (version 3),
so either side's packs unpack with the other's tool.

The format: a header (``le64`` magic ``0xa537a0aa6309ef77``, version 3, block
size 4096, number of blocks), then chunks ``le64 length`` + a zlib stream of
up to 1024 records ``le64 block`` + the block encoded for a small virtual
machine.  Only blocks whose checksum marks them as metadata are packed.  A
btree node is its header as a literal, its keys as a delta list, and its
values as a delta list (8-byte leaf values split into the data block and
the 24-bit time, "shifted run"), then the rest as a literal; any other block
is one literal.  The encoder writes the same instructions as 1.1.0 for each
block; packs differ only in chunk order (1.x shuffles and uses threads).
"""
from __future__ import annotations

import io
import os
import stat
import struct
import tempfile
import zlib
from collections.abc import Iterator
from typing import Self

from ..errors import MetadataError, UsageError
from ..pdata.checksum import BLOCK_SIZE, block_kind
from .format import THIN_SUPERBLOCK_MAGIC, superblock_magic
from .output import MetadataOutput, pwrite_all

MAGIC = 0xA537A0AA6309EF77
PACK_VERSION = 3
_HEADER = struct.Struct("<QQQQ")
_U64 = struct.Struct("<Q")
RECORDS_PER_CHUNK = 1024
M64 = (1 << 64) - 1

# VM tags (the high nibble of an instruction byte)
SET, POS, POSW, NEG, NEGW, CONST, CONST8, COUNT, COUNT8, LIT, LITW, SHIFTED = range(12)
_WIDTH = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}


# -- encoding -----------------------------------------------------------------------------
def _tag(out: bytearray, tag: int, nibble: int) -> None:
    out.append(tag << 4 | nibble)


def _width(out: bytearray, tag: int, n: int) -> None:
    for w in (1, 2, 4, 8):
        if n < 1 << (8 * w):
            _tag(out, tag, w)
            out += struct.pack(_WIDTH[w], n)
            return


def _count(out: bytearray, count: int) -> None:
    if count == 1:
        return
    if count < 16:
        _tag(out, COUNT, count)
    else:
        _tag(out, COUNT8, count >> 8)
        out.append(count & 0xFF)


def pack_u64s(out: bytearray, ns: tuple[int, ...] | list[int]) -> None:
    """1.x's ``to_delta`` + ``pack_deltas``."""
    if not ns:
        return
    base = ns[0]
    _width(out, SET, base)
    i, n = 1, len(ns)
    while i < n:
        v = ns[i]
        if v < base:
            delta = base - v
            count = 1
            while i < n and (ns[i] + count * delta) & M64 == base:
                i += 1
                count += 1
            count -= 1
            _count(out, count)
            if delta < 16:
                _tag(out, NEG, delta)
            else:
                _width(out, NEGW, delta)
            base = (base - delta * count) & M64
        elif v == base:
            count = 1
            while i < n and ns[i] == base:
                i += 1
                count += 1
            count -= 1
            if count < 16:
                _tag(out, CONST, count)
            else:
                _tag(out, CONST8, count >> 8)
                out.append(count & 0xFF)
        else:
            delta = v - base
            count = 1
            while i < n and ns[i] == (base + count * delta) & M64:
                i += 1
                count += 1
            count -= 1
            _count(out, count)
            if delta < 16:
                _tag(out, POS, delta)
            else:
                _width(out, POSW, delta)
            base = (base + delta * count) & M64


def pack_literal(out: bytearray, data: bytes | memoryview) -> None:
    n = len(data)
    if n < 16:
        _tag(out, LIT, n)
    else:
        _width(out, LITW, n)
    out += data


def pack_block(out: bytearray, buf: bytes) -> None:
    """Encode one metadata block as 1.1.0 does."""
    if block_kind(buf) != "btree node":
        pack_literal(out, buf)
        return
    flags, mx, vs = struct.unpack_from("<I", buf, 4)[0], *struct.unpack_from("<II", buf, 20)
    if 32 + 8 * mx > BLOCK_SIZE:
        pack_literal(out, buf)              # not a node shape 1.x would parse: keep it whole
        return
    pack_literal(out, buf[:32])
    pack_u64s(out, struct.unpack_from(f"<{mx}Q", buf, 32))
    off = 32 + 8 * mx
    if flags == 2 and vs != 8:
        pack_literal(out, buf[off:])
        return
    if off + 8 * mx > BLOCK_SIZE:
        pack_literal(out, buf[off:])
        return
    values = struct.unpack_from(f"<{mx}Q", buf, off)
    if flags == 2:
        _tag(out, SHIFTED, mx >> 8)
        out.append(mx & 0xFF)
        pack_u64s(out, [v >> 24 for v in values])
        pack_u64s(out, [v & 0xFFFFFF for v in values])
    else:
        pack_u64s(out, values)
    tail = buf[off + 8 * mx:]
    if tail:
        pack_literal(out, tail)


# -- decoding -----------------------------------------------------------------------------
class _VM:
    """1.x's unpacking machine over a byte stream."""

    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos, self.base = data, pos, 0

    def _byte(self) -> int:
        b = self.data[self.pos]
        self.pos += 1
        return b

    def _wide(self, nibble: int) -> int:
        if nibble not in _WIDTH:
            raise MetadataError("corrupt pack: bad operand width")
        v = struct.unpack_from(_WIDTH[nibble], self.data, self.pos)[0]
        self.pos += nibble
        return int(v)

    def instr(self, out: bytearray, count: int = 1) -> None:
        b = self._byte()
        tag, nib = b >> 4, b & 15
        if tag == SET:
            self.base = self._wide(nib)
            out += _U64.pack(self.base) * count
        elif tag in (POS, POSW, NEG, NEGW):
            delta = nib if tag in (POS, NEG) else self._wide(nib)
            if tag in (NEG, NEGW):
                delta = -delta
            for _ in range(count):
                self.base = (self.base + delta) & M64
                out += _U64.pack(self.base)
        elif tag == CONST:
            out += _U64.pack(self.base) * nib
        elif tag == CONST8:
            out += _U64.pack(self.base) * (nib << 8 | self._byte())
        elif tag == COUNT:
            self.instr(out, nib)
        elif tag == COUNT8:
            self.instr(out, nib << 8 | self._byte())
        elif tag in (LIT, LITW):
            n = nib if tag == LIT else self._wide(nib)
            out += self.data[self.pos:self.pos + n]
            self.pos += n
        elif tag == SHIFTED:
            n = nib << 8 | self._byte()
            high = struct.unpack(f"<{n}Q", self.run(8 * n))
            low = struct.unpack(f"<{n}Q", self.run(8 * n))
            out += struct.pack(f"<{n}Q", *((h << 24 | lo & 0xFFFFFF) & M64
                                          for h, lo in zip(high, low, strict=True)))
        else:
            raise MetadataError(f"corrupt pack: unknown instruction {b:#04x}")

    def run(self, nbytes: int) -> bytes:
        out = bytearray()
        while len(out) < nbytes:
            self.instr(out)
        if len(out) != nbytes:
            raise MetadataError("corrupt pack: a block decodes to the wrong size")
        return bytes(out)


def unpack_records(data: bytes) -> Iterator[tuple[int, bytes]]:
    """``(block, contents)`` of one decompressed chunk."""
    vm = _VM(data)
    while vm.pos < len(data):
        b = _U64.unpack_from(data, vm.pos)[0]
        vm.pos += 8
        vm.base = 0
        yield b, vm.run(BLOCK_SIZE)


# -- files ---------------------------------------------------------------------------------
def _size(fd: int) -> int:
    st = os.fstat(fd)
    return os.lseek(fd, 0, os.SEEK_END) if stat.S_ISBLK(st.st_mode) else st.st_size


def pack(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str], *,
         force: bool = False) -> int:
    """Pack the metadata *input_path* into a new file *output_path* (with
    *force*, an existing one is replaced); return the blocks packed.  Raises
    :class:`UsageError` and ``OSError``."""
    fd = os.open(os.fspath(input_path), os.O_RDONLY | os.O_CLOEXEC)
    try:
        nr = _size(fd) // BLOCK_SIZE
        if nr < 1:
            raise UsageError(f"{os.fspath(input_path)} is too small to be thin metadata")
        out = _create(output_path, force)
        packed = 0
        with out:
            out.write(_HEADER.pack(MAGIC, PACK_VERSION, BLOCK_SIZE, nr))
            z, n = zlib.compressobj(6), 0
            for start in range(0, nr, 256):
                data = os.pread(fd, min(256, nr - start) * BLOCK_SIZE, start * BLOCK_SIZE)
                for i in range(len(data) // BLOCK_SIZE):
                    buf = data[i * BLOCK_SIZE:(i + 1) * BLOCK_SIZE]
                    if block_kind(buf) is None:
                        continue
                    rec = bytearray(_U64.pack(start + i))
                    pack_block(rec, buf)
                    chunk = z.compress(bytes(rec))
                    n += 1
                    packed += 1
                    if n == RECORDS_PER_CHUNK:
                        chunk += z.flush()
                        out.write_chunk(chunk)
                        z, n = zlib.compressobj(6), 0
                    else:
                        out.pending(chunk)
            if n:
                out.write_chunk(z.flush())
        return packed
    finally:
        os.close(fd)


class _Output:
    """A pack being written: chunks are ``le64 length`` + bytes, so each
    compressed stream is gathered whole first; written to a temporary file
    renamed into place at the end."""

    def __init__(self, path: str, fd: int, tmp: str):
        self.path, self.tmp = path, tmp
        self.f = os.fdopen(fd, "wb")
        self.buf = io.BytesIO()

    def write(self, data: bytes) -> None:
        self.f.write(data)

    def pending(self, data: bytes) -> None:
        self.buf.write(data)

    def write_chunk(self, tail: bytes) -> None:
        self.buf.write(tail)
        body = self.buf.getvalue()
        self.f.write(_U64.pack(len(body)) + body)
        self.buf = io.BytesIO()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: object, *_rest: object) -> None:
        self.f.close()
        if kind is None:
            os.replace(self.tmp, self.path)
        else:
            os.unlink(self.tmp)


def _create(path: str | os.PathLike[str], force: bool) -> _Output:
    p = os.fspath(path)
    if os.path.lexists(p) and not force:
        raise UsageError(f"{p} exists: give -f/--force to replace it")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(p)}.", suffix=".tmp",
                               dir=os.path.dirname(os.path.abspath(p)))
    return _Output(p, fd, tmp)


def _holds_metadata(fd: int) -> bool:
    head = os.pread(fd, BLOCK_SIZE, 0)
    return len(head) == BLOCK_SIZE and superblock_magic(head) == THIN_SUPERBLOCK_MAGIC


def unpack(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str], *,
           force: bool = False) -> int:
    """Unpack *input_path* into *output_path*: a new file (sparse, as big as
    the packed metadata), or with *force* an existing file or block device
    that may hold metadata; return the blocks written.  The whole pack is
    decoded before anything is written.  Raises :class:`UsageError`,
    :class:`~dmthin.errors.MetadataError` (not a pack, corrupt) and
    ``OSError``."""
    with open(os.fspath(input_path), "rb") as f:
        head = f.read(_HEADER.size)
        if len(head) < _HEADER.size or _U64.unpack_from(head)[0] != MAGIC:
            raise MetadataError(f"{os.fspath(input_path)} is not a pack file")
        _m, version, bs, nr = _HEADER.unpack(head)
        if version != PACK_VERSION or bs != BLOCK_SIZE:
            raise MetadataError(f"unsupported pack: version {version}, block size {bs}")
        blocks: list[tuple[int, bytes]] = []
        while True:
            n = f.read(8)
            if len(n) < 8:
                break
            body = f.read(_U64.unpack(n)[0])
            try:
                blocks.extend(unpack_records(zlib.decompress(body)))
            except (zlib.error, struct.error, IndexError) as e:
                raise MetadataError(f"corrupt pack: {e}") from None
    if any(b >= nr for b, _d in blocks):
        raise MetadataError("corrupt pack: a block lies past the metadata's end")
    p = os.fspath(output_path)
    exists = os.path.lexists(p)
    if exists and not force:
        raise UsageError(f"{p} exists: give -f/--force to write over it")
    # crash-safe (dmthin.thin.output): a new file renamed into place, or in
    # place behind the "incomplete restore" mark; the superblock last
    with MetadataOutput(p, new_size=nr * BLOCK_SIZE) as out:
        if out.in_place:
            if _size(out.fd) < nr * BLOCK_SIZE:
                raise UsageError(f"{p} is smaller than the packed metadata ({nr} blocks)")
        else:
            os.ftruncate(out.fd, 0)
            os.ftruncate(out.fd, nr * BLOCK_SIZE)
        out.begin()
        superblock = bytes(BLOCK_SIZE)
        for b, data in sorted(blocks):
            if b == 0:
                superblock = data
            else:
                pwrite_all(out.fd, data, b * BLOCK_SIZE, p)
        out.write_superblock(superblock)
        out.commit()
    return len(blocks)
