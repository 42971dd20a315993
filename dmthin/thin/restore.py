"""XML (IR events) -> thin metadata, like ``thin_restore``.

Two phases, so that bad input never touches the output:

1. :class:`Restorer` (a :class:`~dmthin.thin.ir.MetadataVisitor`) takes the
   whole XML: devices, mappings (kept as compact ``array('Q')`` keys and
   packed block_time values per device) and data block reference counts
   (one byte per data block, allocated per space-map bitmap on first use).
   Everything is validated here; 1.x ``<def>``/``<ref>`` shared mappings
   are expanded into each referring device.
2. :func:`build_image` lays the metadata out bottom-up in memory: mapping
   subtrees, the top-level and details trees, the data space map (bitmaps,
   index btree, overflow tree) and the metadata space map (bitmaps, index
   block, empty overflow tree), every allocated block with count 1 (nothing
   is shared after expansion).  :func:`write_image` then writes blocks 1..n
   and finally the superblock, in place (the output may be a block device).

The result passes thin_check 0.9.0 and 1.1.0.  ``mapped_blocks`` is
recomputed from the mappings (as 0.9.0 does); ``metadata_snap`` is ignored.
"""
from __future__ import annotations

import os
import stat
import struct
import sys
from array import array

from ..errors import InvalidArgument, UsageError
from ..pdata.btree.builder import BlockImage, build_btree, build_u64_btree
from ..pdata.checksum import BITMAP, BLOCK_SIZE, INDEX, SUPERBLOCK
from ..units import (DATA_BLOCK_SIZE_MAX_SECTORS, DATA_BLOCK_SIZE_MIN_SECTORS,
                     ENTRIES_PER_BITMAP, MAX_DATA_BLOCK, MAX_METADATA_BITMAPS,
                     MAX_METADATA_BLOCKS)
from .ir import Device, Map, Superblock
from .superblock import SMRoot, Superblock as DiskSuperblock, THIN_VERSION

E = ENTRIES_PER_BITMAP
_ONES = b"\x01" * E
_DETAILS = struct.Struct("<QQII")
_INDEX_ENTRY = struct.Struct("<QII")
# count (0, 1, 2, >=3) -> 2-bit field (sm_lookup_bitmap: bit 2i is the HIGH bit)
_FIELD = bytes([0, 2, 1] + [3] * 253)


class _Dev:
    __slots__ = ("dev", "keys", "values", "end", "sorted")

    def __init__(self, dev: Device):
        self.dev = dev
        self.keys = array("Q")
        self.values = array("Q")
        self.end = 0
        self.sorted = True


class Restorer:
    """Visitor collecting and validating everything a restore needs.

    Overrides (``None`` = from the XML): *transaction_id*,
    *data_block_size*, *nr_data_blocks*.  Raises
    :class:`~dmthin.errors.InvalidArgument` (a ``ValueError``: the XML reader
    adds the position) for inconsistent input."""

    def __init__(self, *, transaction_id: int | None = None,
                 data_block_size: int | None = None, nr_data_blocks: int | None = None):
        self.overrides = (transaction_id, data_block_size, nr_data_blocks)
        self.sb: Superblock | None = None
        self.devices: dict[int, _Dev] = {}
        self.defs: dict[str, list[Map]] = {}
        self.counts: dict[int, bytearray] = {}     # bitmap index -> per-block counts
        self.big: dict[int, int] = {}              # exact counts of blocks at 255+
        self.nr_data_blocks = 0
        self._cur: _Dev | None = None
        self._def: list[Map] | None = None

    # -- visitor ----------------------------------------------------------------
    def superblock_b(self, sb: Superblock) -> None:
        trans, dbs, nr = self.overrides
        sb = Superblock(sb.uuid, sb.time, sb.transaction if trans is None else trans,
                        sb.flags, sb.version,
                        sb.data_block_size if dbs is None else dbs,
                        sb.nr_data_blocks if nr is None else nr, None)
        d = sb.data_block_size
        if (d < DATA_BLOCK_SIZE_MIN_SECTORS or d > DATA_BLOCK_SIZE_MAX_SECTORS
                or d % DATA_BLOCK_SIZE_MIN_SECTORS):
            raise InvalidArgument(
                f"data_block_size={d} sectors is not a multiple of 128 between "
                f"{DATA_BLOCK_SIZE_MIN_SECTORS} and {DATA_BLOCK_SIZE_MAX_SECTORS} (64 KiB..1 GiB)")
        if sb.nr_data_blocks > MAX_DATA_BLOCK + 1:
            raise InvalidArgument(f"nr_data_blocks={sb.nr_data_blocks} exceeds 2^40, the most "
                                  "a mapping can address")
        if sb.time > 0xFFFFFFFF:
            raise InvalidArgument(f"superblock time={sb.time} does not fit 32 bits")
        if sb.version is not None and sb.version not in (1, 2):
            raise InvalidArgument(f"superblock version={sb.version} is not 1 or 2")
        self.sb = sb
        self.nr_data_blocks = sb.nr_data_blocks

    def superblock_e(self) -> None:
        pass

    def def_shared_b(self, name: str) -> None:
        self._def = self.defs[name] = []

    def def_shared_e(self) -> None:
        self._def = None

    def device_b(self, dev: Device) -> None:
        if dev.dev_id in self.devices:
            raise InvalidArgument(f"device {dev.dev_id} appears twice")
        self._cur = self.devices[dev.dev_id] = _Dev(dev)

    def device_e(self) -> None:
        cur = self._cur
        self._cur = None
        if not cur.sorted:
            _sort_device(cur)

    def map(self, m: Map) -> None:
        if self._def is not None:
            self._def.append(m)
            return
        self._add(m)

    def ref_shared(self, name: str) -> None:
        for m in self.defs[name]:
            self._add(m)

    def map_raw(self, o: int, d: int, t: int, n: int) -> None:
        """Fast path from the XML reader (no :class:`Map` object)."""
        cur = self._cur
        if n != 1 or cur is None or d >= self.nr_data_blocks:
            self.map(Map(o, d, t, n))
            return
        cur.keys.append(o)
        cur.values.append((d << 24) | t)
        if o < cur.end:
            cur.sorted = False
        cur.end = o + 1
        bi = d // E
        bm = self.counts.get(bi)
        if bm is None:
            bm = self.counts[bi] = bytearray(E)
        off = d - bi * E
        c = bm[off]
        if c < 254:
            bm[off] = c + 1
        else:
            self._inc_big(bm, bi, off)

    def eof(self) -> None:
        pass

    # -- helpers ------------------------------------------------------------------
    def _add(self, m: Map) -> None:
        t, d, tm, n = m
        if d + n > self.nr_data_blocks:
            raise InvalidArgument(f"mapping to data block {d + n - 1} is beyond the end of the "
                                  f"data device (nr_data_blocks={self.nr_data_blocks})")
        cur = self._cur
        if n == 1:
            cur.keys.append(t)
            cur.values.append((d << 24) | tm)
        else:
            cur.keys.extend(range(t, t + n))
            start = (d << 24) | tm
            cur.values.extend(range(start, start + (n << 24), 1 << 24))
        if t < cur.end:
            cur.sorted = False
        cur.end = t + n
        self._count(d, n)

    def _count(self, d: int, n: int) -> None:
        counts = self.counts
        while n:
            bi, off = divmod(d, E)
            k = min(n, E - off)
            bm = counts.get(bi)
            if bm is None:
                bm = counts[bi] = bytearray(E)
            if k == 1:
                c = bm[off]
                if c < 254:
                    bm[off] = c + 1
                else:
                    self._inc_big(bm, bi, off)
            elif bm.count(0, off, off + k) == k:
                bm[off:off + k] = _ONES[:k]
            else:
                for j in range(off, off + k):
                    c = bm[j]
                    if c < 254:
                        bm[j] = c + 1
                    else:
                        self._inc_big(bm, bi, j)
            d += k
            n -= k

    def _inc_big(self, bm: bytearray, bi: int, j: int) -> None:
        b = bi * E + j
        if bm[j] == 254:
            bm[j] = 255
            self.big[b] = 255
        else:
            self.big[b] += 1

    def count_of(self, b: int) -> int:
        """Reference count of data block *b* (for tests)."""
        bm = self.counts.get(b // E)
        if bm is None:
            return 0
        c = bm[b % E]
        return self.big[b] if c == 255 else c


def _sort_device(cur: _Dev) -> None:
    order = sorted(range(len(cur.keys)), key=cur.keys.__getitem__)
    keys = array("Q", (cur.keys[i] for i in order))
    values = array("Q", (cur.values[i] for i in order))
    for i in range(1, len(keys)):
        if keys[i] == keys[i - 1]:
            raise InvalidArgument(f"virtual block {keys[i]} of device {cur.dev.dev_id} is "
                                  "mapped twice")
    cur.keys, cur.values = keys, values


# -- layout ------------------------------------------------------------------------

def _pack_bitmap(counts: bytes) -> bytes:
    """16320 per-block counts -> the 4080 bytes of 2-bit fields of a bitmap."""
    f = counts.translate(_FIELD)
    x = int.from_bytes(f, "little")
    z = x | (x >> 6) | (x >> 12) | (x >> 18)
    return z.to_bytes(len(f), "little")[0::4]


def _first_free(counts: bytes) -> int:
    i = counts.find(0)
    return E if i < 0 else i


def _data_space_map(img: BlockImage, r: Restorer) -> SMRoot:
    nr = r.nr_data_blocks
    nbitmaps = -(-nr // E)
    index_keys, index_vals = [], []
    allocated = 0
    for bi in range(nbitmaps):
        counts = r.counts.get(bi)
        valid = min(E, nr - bi * E)
        b = img.alloc(BITMAP)
        if counts is None:
            used, nfb = 0, 0
        else:
            off = b * BLOCK_SIZE + 16
            img.buf[off:off + E // 4] = _pack_bitmap(bytes(counts))
            used = valid - counts.count(0, 0, valid)
            nfb = _first_free(bytes(counts[:valid]))
        allocated += used
        index_keys.append(bi)
        index_vals.append(_INDEX_ENTRY.pack(b, E - used, nfb))
    ref_keys = [bi * E + j for bi in sorted(r.counts) for j, _c in _over3(r.counts[bi])]
    ref_vals = b"".join(struct.pack("<I", r.count_of(b)) for b in ref_keys)
    ref_root = build_btree(img, ref_keys, ref_vals, 4)
    index_root = build_btree(img, index_keys, b"".join(index_vals), 16)
    return SMRoot(nr, allocated, index_root, ref_root)


def _over3(bm: bytearray):
    """(index, count) of entries >= 3 in a counts bytearray."""
    if not bm.translate(_FIELD).count(3):
        return
    for j, c in enumerate(bm):
        if c >= 3:
            yield j, c


def _metadata_space_map(img: BlockImage, nr_meta: int) -> SMRoot:
    nbitmaps = -(-nr_meta // E)
    ref_root = build_btree(img, [], b"", 4)
    bitmaps = [img.alloc(BITMAP) for _ in range(nbitmaps)]
    index = img.alloc(INDEX)
    used_total = img.nr_blocks             # blocks 0..n-1 are all in use, count 1
    ibuf = img.buf
    ioff = index * BLOCK_SIZE + 16
    for bi, b in enumerate(bitmaps):
        used = max(0, min(used_total, (bi + 1) * E) - bi * E)
        off = b * BLOCK_SIZE + 16
        full, rest = divmod(used, 4)
        ibuf[off:off + full] = b"\xaa" * full
        if rest:
            ibuf[off + full] = sum(2 << (2 * k) for k in range(rest))
        _INDEX_ENTRY.pack_into(ibuf, ioff + 16 * bi, b, E - used, used if used < E else E)
    return SMRoot(nr_meta, used_total, index, ref_root)


def build_image(r: Restorer, nr_meta: int) -> BlockImage:
    """Lay out the restored metadata (sealed, superblock at block 0) for a
    metadata device of *nr_meta* blocks.  Raises :class:`UsageError` when it
    does not fit."""
    need = -(-r.nr_data_blocks // E)
    if need >= nr_meta:
        raise UsageError(f"the output is too small: nr_data_blocks={r.nr_data_blocks} alone "
                         f"needs {need} space-map bitmap blocks but the output holds {nr_meta}; "
                         "use a bigger metadata file or device")
    img = BlockImage(SUPERBLOCK)
    ids = sorted(r.devices)
    roots = []
    details = []
    for dev_id in ids:
        cur = r.devices[dev_id]
        roots.append(build_btree(img, cur.keys, _values_bytes(cur.values), 8))
        d = cur.dev
        details.append(_DETAILS.pack(len(cur.keys), d.transaction, d.creation_time,
                                     d.snap_time))
    top = build_u64_btree(img, ids, roots)
    det = build_btree(img, ids, b"".join(details), 24)
    data_sm = _data_space_map(img, r)
    meta_sm = _metadata_space_map(img, nr_meta)
    if img.nr_blocks > nr_meta:
        raise UsageError(f"the output is too small: the metadata needs {img.nr_blocks} blocks "
                         f"({img.nr_blocks * 4} KiB) but the output holds {nr_meta}; "
                         "use a bigger metadata file or device")
    sb = r.sb
    version = THIN_VERSION if sb.version is None else sb.version
    disk = DiskSuperblock(flags=sb.flags or 0, version=version, time=sb.time,
                          trans_id=sb.transaction, held_root=0,
                          data_sm_root=data_sm.pack(), metadata_sm_root=meta_sm.pack(),
                          data_mapping_root=top, device_details_root=det,
                          data_block_size=sb.data_block_size, metadata_nr_blocks=nr_meta)
    sbuf = bytearray(BLOCK_SIZE)
    disk.pack_into(sbuf)
    img.buf[0:BLOCK_SIZE] = sbuf
    img.seal()
    return img


def _values_bytes(values: array) -> bytes:
    if sys.byteorder != "little":
        values = array("Q", values)
        values.byteswap()
    return values.tobytes()


# -- output ----------------------------------------------------------------------------

def output_blocks(path) -> int:
    """Metadata blocks the existing output *path* can hold (capped at the
    kernel maximum).  Raises :class:`UsageError` if it does not exist or is
    too small for a superblock."""
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise UsageError(f"output {p} does not exist: create it first with the metadata size "
                         f"(e.g. truncate -s 8M {p})") from None
    if stat.S_ISBLK(st.st_mode):
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
    elif stat.S_ISREG(st.st_mode):
        size = st.st_size
    else:
        raise UsageError(f"output {p} is neither a regular file nor a block device")
    nr = min(size // BLOCK_SIZE, MAX_METADATA_BLOCKS)
    if nr < 1:
        raise UsageError(f"output {p} is too small ({size} bytes) for thin metadata: "
                         "give it a size first (e.g. truncate -s 8M)")
    return nr


def write_image(path, img: BlockImage, chunk_blocks: int = 2048) -> None:
    """Write blocks 1..n-1 of *img* to *path* in place, sync, then block 0
    (the superblock) and sync again.  ``OSError`` on I/O failure."""
    fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CLOEXEC)
    try:
        mv = memoryview(img.buf)
        n = img.nr_blocks
        b = 1
        while b < n:
            e = min(n, b + chunk_blocks)
            data = mv[b * BLOCK_SIZE:e * BLOCK_SIZE]
            done = 0
            while done < len(data):
                done += os.pwrite(fd, data[done:], b * BLOCK_SIZE + done)
            b = e
        os.fsync(fd)
        if os.pwrite(fd, mv[0:BLOCK_SIZE], 0) != BLOCK_SIZE:
            raise OSError(f"short write of the superblock to {path}")
        os.fsync(fd)
    finally:
        os.close(fd)


def restore_events(drive, output, *, transaction_id=None, data_block_size=None,
                   nr_data_blocks=None) -> Restorer:
    """Restore from any IR producer: ``drive(visitor)`` emits the events
    (e.g. ``lambda v: dump(bm, v)`` copies metadata, like thin_repair's
    dump + restore).  Nothing is written unless everything is valid and
    fits.  Raises :class:`~dmthin.errors.InvalidArgument`,
    :class:`UsageError`, ``OSError`` and whatever the producer raises."""
    nr_meta = output_blocks(output)
    if -(-nr_meta // E) > MAX_METADATA_BITMAPS:
        raise UsageError("metadata device larger than the kernel maximum")
    r = Restorer(transaction_id=transaction_id, data_block_size=data_block_size,
                 nr_data_blocks=nr_data_blocks)
    drive(r)
    if r.sb is None:
        raise UsageError("the input has no superblock")
    img = build_image(r, nr_meta)
    write_image(output, img)
    return r


def restore(xml_source, output, *, transaction_id=None, data_block_size=None,
            nr_data_blocks=None, progress=None) -> Restorer:
    """Restore metadata XML *xml_source* (path or binary file) into the
    existing *output*.  Nothing is written unless the whole input is valid
    and fits.  Raises :class:`~dmthin.thin.xml.XmlError`,
    :class:`UsageError`, ``OSError``."""
    from .xml import read_xml
    if isinstance(xml_source, (str, os.PathLike)):
        try:
            if os.path.samefile(xml_source, output):
                raise UsageError("the input XML and the output metadata are the same file")
        except FileNotFoundError:
            pass
    return restore_events(lambda v: read_xml(xml_source, v, progress=progress), output,
                          transaction_id=transaction_id, data_block_size=data_block_size,
                          nr_data_blocks=nr_data_blocks)
