"""XML (IR events) -> thin metadata, like ``thin_restore``, in memory that
does not grow with the number of mappings.

Bad input never touches the output, because the input is read twice:

1. :class:`Restorer` (a :class:`~dmthin.thin.ir.MetadataVisitor`) validates
   the whole input and keeps only per-device summaries (mapping count, whether
   the mappings came in key order), the 1.x ``<def>`` mappings, and the data
   block reference counts (one byte per data block, allocated per space-map
   bitmap on first use).  Devices whose mappings are out of order (rare:
   thin_dump writes them sorted) are re-read by :class:`_Collector`, which
   sorts them and rejects duplicates; only those are held in memory.  From
   the summaries the exact number of metadata blocks is known, so an output
   that is too small is refused here too.
2. :class:`_Builder` re-reads the input and streams each device's mappings
   into a :class:`~dmthin.pdata.btree.builder.U64TreeStream`, which writes
   every leaf to the output at its block number as soon as it is full.  Then
   come the top-level and details trees, the data space map (bitmaps, index
   btree, overflow tree), the metadata space map (bitmaps covering exactly
   the blocks written, count 1 each, index block, empty overflow tree), an
   fsync, and the superblock last (the output may be a block device).

The result passes thin_check 0.9.0 and 1.1.0.  ``mapped_blocks`` is
recomputed from the mappings (as 0.9.0 does); ``metadata_snap`` is ignored.
An input file object that cannot seek (stdin) is spooled to a temporary file.
"""
from __future__ import annotations

import os
import shutil
import stat
import struct
import sys
import tempfile
from array import array

from ..errors import InvalidArgument, UsageError
from ..pdata.btree.builder import (BlockWriter, U64TreeStream, btree_blocks, build_btree,
                                   build_u64_btree)
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
    """Pass-1 summary of one device: its mapping count and whether the
    mappings came in strictly increasing key order."""
    __slots__ = ("dev", "count", "end", "sorted")

    def __init__(self, dev: Device):
        self.dev = dev
        self.count = 0
        self.end = 0
        self.sorted = True


class Restorer:
    """Pass 1: the visitor validating everything a restore needs.

    Keeps per-device summaries, ``<def>`` mappings and the data block
    reference counts, never the mappings themselves.  Overrides (``None`` =
    from the XML): *transaction_id*, *data_block_size*, *nr_data_blocks*.
    Raises :class:`~dmthin.errors.InvalidArgument` (a ``ValueError``: the XML
    reader adds the position) for inconsistent input."""

    def __init__(self, *, transaction_id: int | None = None,
                 data_block_size: int | None = None, nr_data_blocks: int | None = None):
        self.overrides = (transaction_id, data_block_size, nr_data_blocks)
        self.sb: Superblock | None = None
        self.devices: dict[int, _Dev] = {}
        self.defs: dict[str, list[Map]] = {}
        self.counts: dict[int, bytearray] = {}     # bitmap index -> per-block counts
        self.big: dict[int, int] = {}              # exact counts of blocks at 255+
        self.presorted: dict[int, tuple[array, array]] = {}   # out-of-order devices, sorted
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
        self._cur = None

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
        cur.count += 1
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
        t, d, _tm, n = m
        if d + n > self.nr_data_blocks:
            raise InvalidArgument(f"mapping to data block {d + n - 1} is beyond the end of the "
                                  f"data device (nr_data_blocks={self.nr_data_blocks})")
        cur = self._cur
        cur.count += n
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

    def nr_over2(self) -> int:
        """Data blocks with a reference count of 3 or more (the overflow tree)."""
        return sum(bm.translate(_FIELD).count(3) for bm in self.counts.values())


class _Passive:
    """Visitor events a later pass ignores (the superblock was taken in pass 1)."""

    def superblock_b(self, sb: Superblock) -> None:
        pass

    def superblock_e(self) -> None:
        pass

    def def_shared_b(self, name: str) -> None:
        pass

    def def_shared_e(self) -> None:
        pass

    def map(self, m: Map) -> None:
        self.map_raw(*m)

    def eof(self) -> None:
        pass


class _Collector(_Passive):
    """Pass 1b, only for devices whose mappings are out of order: collect,
    sort and check them for duplicates into ``r.presorted``."""

    def __init__(self, r: Restorer, keep: set[int]):
        self.r = r
        self.keep = keep
        self.nr_data_blocks = r.nr_data_blocks
        self._cur: tuple[array, array] | None = None
        self._id = 0

    def device_b(self, dev: Device) -> None:
        if dev.dev_id in self.keep:
            self._cur = (array("Q"), array("Q"))
            self._id = dev.dev_id

    def device_e(self) -> None:
        cur = self._cur
        if cur is None:
            return
        self._cur = None
        keys, values = cur
        order = sorted(range(len(keys)), key=keys.__getitem__)
        keys = array("Q", (keys[i] for i in order))
        values = array("Q", (values[i] for i in order))
        del order
        for i in range(1, len(keys)):
            if keys[i] == keys[i - 1]:
                raise InvalidArgument(f"virtual block {keys[i]} of device {self._id} is "
                                      "mapped twice")
        self.r.presorted[self._id] = (keys, values)

    def map_raw(self, o: int, d: int, t: int, n: int) -> None:
        cur = self._cur
        if cur is None:
            return
        keys, values = cur
        if n == 1:
            keys.append(o)
            values.append((d << 24) | t)
        else:
            keys.extend(range(o, o + n))
            start = (d << 24) | t
            values.extend(range(start, start + (n << 24), 1 << 24))

    def ref_shared(self, name: str) -> None:
        if self._cur is not None:
            for m in self.r.defs[name]:
                self.map_raw(*m)


_CHANGED = ("the input changed between the validating and the writing pass "
            "(the output has no new superblock yet: restore again from a stable input)")


class _Builder(_Passive):
    """Pass 2: stream each device's mappings into its mapping tree, leaf by leaf."""

    def __init__(self, r: Restorer, w: BlockWriter):
        self.r = r
        self.w = w
        self.nr_data_blocks = r.nr_data_blocks
        self.roots: dict[int, int] = {}
        self._cur: U64TreeStream | None = None
        self._id = 0

    def device_b(self, dev: Device) -> None:
        i = dev.dev_id
        summary = self.r.devices.get(i)
        if summary is None or i in self.roots:
            raise InvalidArgument(_CHANGED)
        self._id = i
        pre = self.r.presorted.get(i)
        if pre is not None:
            self.roots[i] = build_btree(self.w, pre[0], _values_bytes(pre[1]), 8)
        else:
            self._cur = U64TreeStream(self.w, summary.count)

    def device_e(self) -> None:
        cur = self._cur
        if cur is not None:
            self._cur = None
            try:
                self.roots[self._id] = cur.finish()
            except ValueError:
                raise InvalidArgument(_CHANGED) from None

    def map_raw(self, o: int, d: int, t: int, n: int) -> None:
        cur = self._cur
        if cur is None:                 # inside <def>, or a presorted device
            return
        if n == 1:
            keys = cur.keys
            keys.append(o)
            cur.values.append((d << 24) | t)
            if len(keys) == cur.want:
                cur.leaf_full()
            return
        v = (d << 24) | t
        while n:
            room = cur.want - len(cur.keys)
            if room <= 0:
                raise InvalidArgument(_CHANGED)
            k = min(n, room)
            cur.keys.extend(range(o, o + k))
            cur.values.extend(range(v, v + (k << 24), 1 << 24))
            o += k
            v += k << 24
            n -= k
            if k == room:
                cur.leaf_full()

    def ref_shared(self, name: str) -> None:
        if self._cur is not None:
            for m in self.r.defs[name]:
                self.map_raw(*m)


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

def _data_space_map(w: BlockWriter, r: Restorer) -> SMRoot:
    nr = r.nr_data_blocks
    nbitmaps = -(-nr // E)
    index_keys, index_vals = [], []
    allocated = 0
    for bi in range(nbitmaps):
        counts = r.counts.get(bi)
        valid = min(E, nr - bi * E)
        b = w.alloc(BITMAP)
        if counts is None:
            used, nfb = 0, 0
        else:
            off = w.offset(b) + 16
            w.buf[off:off + E // 4] = _pack_bitmap(bytes(counts))
            used = valid - counts.count(0, 0, valid)
            nfb = _first_free(bytes(counts[:valid]))
        allocated += used
        index_keys.append(bi)
        index_vals.append(_INDEX_ENTRY.pack(b, E - used, nfb))
    ref_keys = array("Q", (bi * E + j for bi in sorted(r.counts)
                           for j, _c in _over3(r.counts[bi])))
    ref_vals = b"".join(struct.pack("<I", r.count_of(b)) for b in ref_keys)
    ref_root = build_btree(w, ref_keys, ref_vals, 4)
    index_root = build_btree(w, index_keys, b"".join(index_vals), 16)
    return SMRoot(nr, allocated, index_root, ref_root)


def _over3(bm: bytearray):
    """(index, count) of entries >= 3 in a counts bytearray."""
    if not bm.translate(_FIELD).count(3):
        return
    for j, c in enumerate(bm):
        if c >= 3:
            yield j, c


def _metadata_space_map(w: BlockWriter, nr_meta: int, used_total: int) -> SMRoot:
    """The metadata space map, last: blocks 0..used_total-1 (all of them,
    this one included) in use with count 1."""
    nbitmaps = -(-nr_meta // E)
    ref_root = build_btree(w, [], b"", 4)
    entries = []
    for bi in range(nbitmaps):
        b = w.alloc(BITMAP)
        used = max(0, min(used_total, (bi + 1) * E) - bi * E)
        off = w.offset(b) + 16
        full, rest = divmod(used, 4)
        w.buf[off:off + full] = b"\xaa" * full
        if rest:
            w.buf[off + full] = sum(2 << (2 * k) for k in range(rest))
        entries.append(_INDEX_ENTRY.pack(b, E - used, used if used < E else E))
    index = w.alloc(INDEX)
    ioff = w.offset(index) + 16
    blob = b"".join(entries)
    w.buf[ioff:ioff + len(blob)] = blob
    return SMRoot(nr_meta, used_total, index, ref_root)


def plan_blocks(r: Restorer, nr_meta: int) -> int:
    """Metadata blocks (superblock included) the restore of validated *r*
    writes to a device of *nr_meta* blocks.  Raises :class:`UsageError`
    when it does not fit."""
    need = -(-r.nr_data_blocks // E)
    if need >= nr_meta:
        raise UsageError(f"the output is too small: nr_data_blocks={r.nr_data_blocks} alone "
                         f"needs {need} space-map bitmap blocks but the output holds {nr_meta}; "
                         "use a bigger metadata file or device")
    ndev = len(r.devices)
    total = 1 + sum(btree_blocks(d.count, 8) for d in r.devices.values())
    total += btree_blocks(ndev, 8) + btree_blocks(ndev, 24)
    total += need + btree_blocks(r.nr_over2(), 4) + btree_blocks(need, 16)
    total += btree_blocks(0, 4) + -(-nr_meta // E) + 1
    if total > nr_meta:
        raise UsageError(f"the output is too small: the metadata needs {total} blocks "
                         f"({total * 4} KiB) but the output holds {nr_meta}; "
                         "use a bigger metadata file or device")
    return total


def _write(drive, output, r: Restorer, nr_meta: int, total: int) -> None:
    """Pass 2: stream the metadata to *output* (blocks 1..total-1), fsync,
    then the superblock, fsync."""
    fd = os.open(os.fspath(output), os.O_WRONLY | os.O_CLOEXEC)
    try:
        w = BlockWriter(fd)
        builder = _Builder(r, w)
        drive(builder)
        if builder._cur is not None or len(builder.roots) != len(r.devices):
            raise InvalidArgument(_CHANGED)
        ids = sorted(r.devices)
        roots = [builder.roots[i] for i in ids]
        details = []
        for dev_id in ids:
            cur = r.devices[dev_id]
            d = cur.dev
            details.append(_DETAILS.pack(cur.count, d.transaction, d.creation_time,
                                         d.snap_time))
        top = build_u64_btree(w, ids, roots)
        det = build_btree(w, ids, b"".join(details), 24)
        data_sm = _data_space_map(w, r)
        meta_sm = _metadata_space_map(w, nr_meta, total)
        w.flush()
        if w.next != total:
            raise RuntimeError(f"restore wrote {w.next} blocks but planned {total}")
        os.fsync(fd)
        sb = r.sb
        version = THIN_VERSION if sb.version is None else sb.version
        disk = DiskSuperblock(flags=sb.flags or 0, version=version, time=sb.time,
                              trans_id=sb.transaction, held_root=0,
                              data_sm_root=data_sm.pack(), metadata_sm_root=meta_sm.pack(),
                              data_mapping_root=top, device_details_root=det,
                              data_block_size=sb.data_block_size, metadata_nr_blocks=nr_meta)
        sbuf = bytearray(BLOCK_SIZE)
        disk.pack_into(sbuf)
        SUPERBLOCK.prepare_for_write(sbuf, 0)
        if os.pwrite(fd, sbuf, 0) != BLOCK_SIZE:
            raise OSError(f"short write of the superblock to {output}")
        os.fsync(fd)
    finally:
        os.close(fd)


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


def restore_events(drive, output, *, transaction_id=None, data_block_size=None,
                   nr_data_blocks=None) -> Restorer:
    """Restore from any IR producer: ``drive(visitor)`` emits the events
    (e.g. ``lambda v: dump(bm, v)`` copies metadata, like thin_repair's
    dump + restore).  *drive* is called two or three times and must emit
    the same events each time.  Nothing is written unless everything is
    valid and fits.  Raises :class:`~dmthin.errors.InvalidArgument`,
    :class:`UsageError`, ``OSError`` and whatever the producer raises."""
    nr_meta = output_blocks(output)
    if -(-nr_meta // E) > MAX_METADATA_BITMAPS:
        raise UsageError("metadata device larger than the kernel maximum")
    r = Restorer(transaction_id=transaction_id, data_block_size=data_block_size,
                 nr_data_blocks=nr_data_blocks)
    drive(r)
    if r.sb is None:
        raise UsageError("the input has no superblock")
    unsorted = {i for i, d in r.devices.items() if not d.sorted}
    if unsorted:
        drive(_Collector(r, unsorted))
    total = plan_blocks(r, nr_meta)
    _write(drive, output, r, nr_meta, total)
    return r


def _rereadable(f):
    """(file, start offset, size, temporary or None) for reading *f* more
    than once: *f* itself if it can seek, else a temporary copy."""
    if f.seekable():
        start = f.tell()
        size = f.seek(0, os.SEEK_END) - start
        f.seek(start)
        return f, start, size, None
    tmp = tempfile.TemporaryFile(prefix="dmthin-restore-")
    try:
        shutil.copyfileobj(f, tmp, 1 << 20)
        size = tmp.tell()
    except BaseException:
        tmp.close()
        raise
    return tmp, 0, size, tmp


def restore(xml_source, output, *, transaction_id=None, data_block_size=None,
            nr_data_blocks=None, progress=None) -> Restorer:
    """Restore metadata XML *xml_source* (path or binary file object; one
    that cannot seek, such as stdin, is first copied to a temporary file)
    into the existing *output*.  Nothing is written unless the whole input is
    valid and fits.  *progress*, if given, is called with a byte count
    growing to the input size over both passes.  Raises
    :class:`~dmthin.thin.xml.XmlError`, :class:`UsageError`, ``OSError``."""
    from .xml import read_xml
    output_blocks(output)                       # fail early, before any spooling
    overrides = dict(transaction_id=transaction_id, data_block_size=data_block_size,
                     nr_data_blocks=nr_data_blocks)
    if isinstance(xml_source, (str, os.PathLike)):
        try:
            if os.path.samefile(xml_source, output):
                raise UsageError("the input XML and the output metadata are the same file")
        except FileNotFoundError:
            pass
        with open(xml_source, "rb") as f:
            return restore(f, output, progress=progress, **overrides)
    name = str(getattr(xml_source, "name", "<xml>"))
    f, start, size, tmp = _rereadable(xml_source)

    def drive(visitor):
        f.seek(start)
        report = None
        if progress is not None and not isinstance(visitor, _Collector):
            base = size if isinstance(visitor, _Builder) else 0
            report = (lambda n: progress((base + n) // 2))
        read_xml(f, visitor, name=name, progress=report)
    try:
        return restore_events(drive, output, **overrides)
    finally:
        if tmp is not None:
            tmp.close()
