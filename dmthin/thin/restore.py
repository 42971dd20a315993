"""XML (IR events) -> thin metadata, like ``thin_restore``, in memory that
does not grow with the number of mappings.

Bad input never touches the output, because the input is read twice:

1. :class:`~dmthin.thin.restore_plan.Restorer` validates the whole input
   and keeps only per-device summaries, the 1.x ``<def>`` mappings, and the
   data block reference counts (one byte per data block, allocated per
   space-map bitmap on first use).  Devices whose mappings are out of order (rare:
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
   fsync, and the superblock last.  A crash never leaves a mix of old and
   new metadata that opens: a regular output file is replaced by a new file
   renamed over it; a block device or a pool's metadata is first marked
   "incomplete restore" in block 0 (:class:`~dmthin.thin.output.MetadataOutput`).

The result passes thin_check 0.9.0 and 1.1.0.  ``mapped_blocks`` is
recomputed from the mappings (as 0.9.0 does); ``metadata_snap`` is ignored.
An input file object that cannot seek (stdin) is spooled to a temporary file.
"""
from __future__ import annotations

import os
import stat
from abc import ABC, abstractmethod
from array import array
from collections.abc import Callable
from typing import IO, Any

from ..errors import InvalidArgument, UsageError
from ..pdata.btree.builder import BlockWriter, U64TreeStream, build_btree, build_u64_btree
from ..pdata.checksum import BLOCK_SIZE
from ..pdata.space_map.build import build_disk_space_map, build_metadata_space_map
from ..pdata.space_map.format import nr_bitmaps
from ..units import MAX_METADATA_BITMAPS, MAX_METADATA_BLOCKS
from .accel import ffi, lib
from .format import THIN_VERSION, TIME_BITS, DeviceDetails, pack_sm_root
from .format import Superblock as DiskSuperblock
from .ir import Device, Map, MetadataVisitor, Superblock
from .output import MetadataOutput
from .restore_plan import Restorer, plan_blocks
from .xml import read_xml

__all__ = ["restore", "restore_events", "output_blocks", "Restorer", "plan_blocks"]

_NEXT = 1 << TIME_BITS      # the packed value of the next data block, same time

#: a producer of IR events: ``drive(visitor)`` emits them all to *visitor*
Drive = Callable[[MetadataVisitor], None]


_SEQ = 4096                 # entries of the accelerator's scratch run
_seq_buf: Any = ffi.new("uint64_t[]", _SEQ) if lib is not None else None


def _extend_run(arr: array[int], start: int, step: int, n: int) -> None:
    """``arr.extend(range(start, start + n * step, step))``, the accelerator
    writing the numbers when it is built (``dm_seq``)."""
    if _seq_buf is None:
        arr.extend(range(start, start + n * step, step))
        return
    while n:
        k = min(n, _SEQ)
        lib.dm_seq(_seq_buf, start, step, k)
        arr.frombytes(ffi.buffer(_seq_buf, 8 * k))
        start += k * step
        n -= k


_ri: Any = ffi.new("size_t[1]") if lib is not None else None
_roff: Any = ffi.new("uint64_t[1]") if lib is not None else None
_exp_keys: Any = ffi.new("uint64_t[]", _SEQ) if lib is not None else None
_exp_values: Any = ffi.new("uint64_t[]", _SEQ) if lib is not None else None


def _expand_at(recs: Any, k: int, keys: array[int], values: array[int], room: int) -> int:
    """Append to *keys* / *values* at most *room* mappings of the scanner's
    records *recs[0..k)* from (``_ri``, ``_roff``) on (``dm_expand_runs``);
    return how many."""
    done = 0
    while done < room and _ri[0] < k:
        w = lib.dm_expand_runs(recs, k, _ri, _roff, _exp_keys, _exp_values,
                               min(room - done, _SEQ))
        keys.frombytes(ffi.buffer(_exp_keys, 8 * w))
        values.frombytes(ffi.buffer(_exp_values, 8 * w))
        done += w
    return done


def _expand(recs: Any, k: int, keys: array[int], values: array[int]) -> None:
    """Append every mapping of the scanner's records *recs[0..k)*."""
    _ri[0] = _roff[0] = 0
    while _ri[0] < k:
        _expand_at(recs, k, keys, values, _SEQ)


class _Passive(ABC):
    """A later pass over the input: it ignores the events pass 1 took (the
    superblock, the ``<def>`` bodies) and sees every mapping of the devices
    it wants through :meth:`map_raw`."""

    r: Restorer
    _cur: object

    @abstractmethod
    def map_raw(self, o: int, d: int, t: int, n: int) -> None:
        """A run of *n* mappings: virtual block *o* -> data block *d*, time *t*."""

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

    def ref_shared(self, name: str) -> None:
        if self._cur is not None:
            for m in self.r.defs[name]:
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
        self._cur: tuple[array[int], array[int]] | None = None
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
        v = (d << TIME_BITS) | t
        if n == 1:
            keys.append(o)
            values.append(v)
        else:
            _extend_run(keys, o, 1, n)
            _extend_run(values, v, _NEXT, n)

    def map_records(self, recs: Any, k: int) -> int:
        """All *k* of the XML scanner's records at once (``dm_xml_maps``'s,
        6 words each), as that many :meth:`map_raw` calls."""
        cur = self._cur
        if cur is None:
            return k
        _expand(recs, k, cur[0], cur[1])
        return k



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
            self.roots[i] = build_u64_btree(self.w, pre[0], pre[1])
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
        v = (d << TIME_BITS) | t
        if n == 1:
            keys = cur.keys
            keys.append(o)
            cur.values.append(v)
            if len(keys) == cur.want:
                cur.leaf_full()
            return
        while n:
            room = cur.want - len(cur.keys)
            if room <= 0:
                raise InvalidArgument(_CHANGED)
            k = min(n, room)
            _extend_run(cur.keys, o, 1, k)
            _extend_run(cur.values, v, _NEXT, k)
            o += k
            v += k * _NEXT
            n -= k
            if k == room:
                cur.leaf_full()

    def map_records(self, recs: Any, k: int) -> int:
        """The XML scanner's *k* records (``dm_xml_maps``'s, 6 words each)
        leaf by leaf, as that many :meth:`map_raw` calls; returns how many
        were taken (fewer when the device already has the mappings pass 1
        counted: the caller's :meth:`map_raw` then refuses the next one)."""
        cur = self._cur
        if cur is None:
            return k
        _ri[0] = _roff[0] = 0
        while True:
            room = cur.want - len(cur.keys)
            if cur.want < 0 or room <= 0:
                return int(_ri[0])
            if _expand_at(recs, k, cur.keys, cur.values, room) == room:
                cur.leaf_full()
            if _ri[0] == k:
                return k


def _write(drive: Drive, target: MetadataOutput, r: Restorer, sb: Superblock, nr_meta: int,
           total: int) -> None:
    """Pass 2: stream the metadata to *target* (blocks 1..total-1), fsync,
    then the superblock, fsync; then the target is committed."""
    fd = target.fd
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
        details.append(DeviceDetails(cur.count, d.transaction, d.creation_time,
                                     d.snap_time).pack())
    top = build_u64_btree(w, ids, roots)
    det = build_btree(w, ids, b"".join(details), DeviceDetails.SIZE)
    data_sm = build_disk_space_map(w, r.counts)
    meta_sm = build_metadata_space_map(w, nr_meta, total)
    w.flush()
    if w.next != total:
        raise RuntimeError(f"restore wrote {w.next} blocks but planned {total}")
    version = THIN_VERSION if sb.version is None else sb.version
    disk = DiskSuperblock(flags=sb.flags or 0, version=version, time=sb.time,
                          trans_id=sb.transaction, held_root=0,
                          data_sm_root=pack_sm_root(data_sm),
                          metadata_sm_root=pack_sm_root(meta_sm),
                          data_mapping_root=top, device_details_root=det,
                          data_block_size=sb.data_block_sectors, metadata_nr_blocks=nr_meta)
    target.finish(disk)


# -- output ----------------------------------------------------------------------------

def output_blocks(path: str | os.PathLike[str]) -> int:
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


def restore_events(drive: Drive, output: str | os.PathLike[str], *,
                   transaction_id: int | None = None, data_block_size: int | None = None,
                   nr_data_blocks: int | None = None,
                   in_place: bool | None = None, nofollow: bool = False) -> Restorer:
    """Restore from any IR producer: ``drive(visitor)`` emits the events
    (e.g. ``lambda v: dump(bm, v)`` copies metadata, like thin_repair's
    dump + restore).  *drive* is called two or three times and must emit
    the same events each time.  Nothing is written unless everything is
    valid and fits.  The overrides (``None``: the input's own) are named for
    the XML attributes they replace: *transaction_id*, *data_block_size* (in
    sectors), *nr_data_blocks*.  *in_place*: see
    :class:`~dmthin.thin.output.MetadataOutput` (None: a regular file gets a
    new file renamed over it, anything else is written in place); *nofollow*:
    the output is a pool directory's metadata, never written through a
    symlink.  Raises :class:`~dmthin.errors.InvalidArgument`,
    :class:`UsageError`, ``OSError`` and whatever the producer raises."""
    nr_meta = output_blocks(output)
    if nr_bitmaps(nr_meta) > MAX_METADATA_BITMAPS:
        raise UsageError("metadata device larger than the kernel maximum")
    r = Restorer(transaction_id=transaction_id, data_block_sectors=data_block_size,
                 nr_data_blocks=nr_data_blocks, capacity=nr_meta)
    drive(r)
    sb = r.sb
    if sb is None:
        raise UsageError("the input has no superblock")
    unsorted = {i for i, d in r.devices.items() if not d.sorted}
    if unsorted:
        drive(_Collector(r, unsorted))
    total = plan_blocks(r, nr_meta)
    with MetadataOutput(output, in_place=in_place, nofollow=nofollow) as target:
        target.begin()
        _write(drive, target, r, sb, nr_meta, total)
    return r


def _rereadable(f: IO[bytes]) -> tuple[IO[bytes], int, int, IO[bytes] | None]:
    """(file, start offset, size, temporary or None) for reading *f* more
    than once: *f* itself if it can seek, else a temporary copy."""
    if f.seekable():
        start = f.tell()
        size = f.seek(0, os.SEEK_END) - start
        f.seek(start)
        return f, start, size, None
    import shutil  # (here: only a restore from a pipe loads them)
    import tempfile
    tmp = tempfile.TemporaryFile(prefix="dmthin-restore-")  # noqa: SIM115 - the caller closes it
    try:
        shutil.copyfileobj(f, tmp, 1 << 20)
        size = tmp.tell()
    except BaseException:
        tmp.close()
        raise
    return tmp, 0, size, tmp


def restore(xml_source: str | os.PathLike[str] | IO[bytes], output: str | os.PathLike[str], *,
            transaction_id: int | None = None, data_block_size: int | None = None,
            nr_data_blocks: int | None = None, progress: Callable[[int], None] | None = None,
            in_place: bool | None = None, nofollow: bool = False) -> Restorer:
    """Restore metadata XML *xml_source* (path or binary file object; one
    that cannot seek, such as stdin, is first copied to a temporary file)
    into the existing *output*.  Nothing is written unless the whole input is
    valid and fits.  *progress*, if given, is called with a byte count
    growing to the input size over both passes.  *in_place*: how the output
    is replaced (:class:`~dmthin.thin.output.MetadataOutput`; None: by its type).  Raises
    :class:`~dmthin.thin.xml.XmlError`, :class:`UsageError`, ``OSError``.
    The overrides are :func:`restore_events`'s."""
    output_blocks(output)                       # fail early, before any spooling
    overrides: dict[str, Any] = {"transaction_id": transaction_id,
                                     "data_block_size": data_block_size,
                                     "nr_data_blocks": nr_data_blocks, "in_place": in_place,
                                     "nofollow": nofollow}
    if isinstance(xml_source, (str, os.PathLike)):
        try:
            if os.path.samefile(xml_source, output):
                raise UsageError("the input XML and the output metadata are the same file")
        except FileNotFoundError:
            pass
        with open(xml_source, "rb") as source:
            return restore(source, output, progress=progress, **overrides)
    name = str(getattr(xml_source, "name", "<xml>"))
    f, start, size, tmp = _rereadable(xml_source)

    def drive(visitor: MetadataVisitor) -> None:
        f.seek(start)
        base = size if isinstance(visitor, _Builder) else 0
        report: Callable[[int], None] | None = None
        if progress is not None and not isinstance(visitor, _Collector):
            def report(n: int) -> None:
                progress((base + n) // 2)
        read_xml(f, visitor, name=name, progress=report)
    try:
        return restore_events(drive, output, **overrides)
    finally:
        if tmp is not None:
            tmp.close()
