"""thin_dump's XML format: a writer (visitor) and a streaming reader.

:class:`XmlWriter` produces the output of ``thin_dump`` 0.9.0 byte for byte:
two-space indentation, attributes in the tools' order, ``flags`` and
``version`` always present on ``<superblock>``, a newline after every line.
1.x ``<def>``/``<ref>`` events are written in the 1.x form.

:func:`read_xml` parses the 0.9.0 form and the 1.x form (``<def name>``
shared mapping lists and ``<ref name>``) with expat, in bounded memory, and
drives any :class:`~dmthin.thin.ir.MetadataVisitor`.  Like the 1.x parser
it rejects unknown elements and attributes and missing required attributes;
in addition it range-checks values (dev_id, time, data blocks), checks
nesting, and refuses DOCTYPE/entity declarations.  Text between elements is
ignored, as by the 1.x parser.  Every error is one :class:`XmlError` line
naming the source, line and column (of the offending element's start).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import IO, NoReturn, TextIO
from xml.parsers import expat

from ..errors import UsageError
from ..units import MAX_DEV_ID
from .accel import ffi, lib
from .format import MAX_DATA_BLOCK, MAX_TIME, TIME_BITS, TIME_MASK
from .ir import Device, Map, MetadataVisitor, Superblock

U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
READ_CHUNK = 1 << 20
#: mappings the accelerator's scanner hands over at a time
_SCAN_BATCH = 4096
#: u64s of each mapping the scanner takes: origin, data, time, length,
#: packed value, offset of its element
_REC = 6
#: markup the scanner hands back in a row before expat takes over alone
#: (a document not in thin_dump's spelling)
_MAX_REFUSED = 256
#: markup longer than this unfinished at a chunk's end: expat alone from there
_MAX_CARRY = 1 << 20


class XmlError(UsageError):
    """Malformed or out-of-range metadata XML (one line, with position)."""


# -- writer ------------------------------------------------------------------------

def _esc(s: str) -> str:
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


class XmlWriter:
    """Visitor writing ``thin_dump`` 0.9.0 XML to a text stream *out*."""

    def __init__(self, out: TextIO):
        self.out = out
        self.write = out.write
        self.depth = 0
        self._ind = ""

    def _push(self) -> None:
        self.depth += 1
        self._ind = "  " * self.depth

    def _pop(self) -> None:
        self.depth -= 1
        self._ind = "  " * self.depth

    @property
    def indent(self) -> str:
        """The indentation of the lines written now."""
        return self._ind

    def superblock_b(self, sb: Superblock) -> None:
        snap = "" if sb.metadata_snap is None else f' metadata_snap="{sb.metadata_snap}"'
        flags = 0 if sb.flags is None else sb.flags
        version = 1 if sb.version is None else sb.version
        self.write(f'{self._ind}<superblock uuid="{_esc(sb.uuid)}" time="{sb.time}" '
                   f'transaction="{sb.transaction}" flags="{flags}" version="{version}" '
                   f'data_block_size="{sb.data_block_sectors}" '
                   f'nr_data_blocks="{sb.nr_data_blocks}"{snap}>\n')
        self._push()

    def superblock_e(self) -> None:
        self._pop()
        self.write(f"{self._ind}</superblock>\n")

    def def_shared_b(self, name: str) -> None:
        self.write(f'{self._ind}<def name="{_esc(name)}">\n')
        self._push()

    def def_shared_e(self) -> None:
        self._pop()
        self.write(f"{self._ind}</def>\n")

    def device_b(self, d: Device) -> None:
        self.write(f'{self._ind}<device dev_id="{d.dev_id}" mapped_blocks="{d.mapped_blocks}" '
                   f'transaction="{d.transaction}" creation_time="{d.creation_time}" '
                   f'snap_time="{d.snap_time}">\n')
        self._push()

    def device_e(self) -> None:
        self._pop()
        self.write(f"{self._ind}</device>\n")

    def map(self, m: Map) -> None:
        if m.len == 1:
            self.write(f'{self._ind}<single_mapping origin_block="{m.thin_begin}" '
                       f'data_block="{m.data_begin}" time="{m.time}"/>\n')
        else:
            self.write(f'{self._ind}<range_mapping origin_begin="{m.thin_begin}" '
                       f'data_begin="{m.data_begin}" length="{m.len}" time="{m.time}"/>\n')

    def map_runs(self, runs: Iterable[tuple[int, int, int]]) -> None:
        """Fast path: raw ``(thin_begin, packed_value, length)`` runs."""
        ind = self._ind
        self.write("".join([
            f'{ind}<single_mapping origin_block="{t}" data_block="{v >> TIME_BITS}" '
            f'time="{v & TIME_MASK}"/>\n' if n == 1 else
            f'{ind}<range_mapping origin_begin="{t}" data_begin="{v >> TIME_BITS}" '
            f'length="{n}" time="{v & TIME_MASK}"/>\n' for t, v, n in runs]))

    def ref_shared(self, name: str) -> None:
        self.write(f'{self._ind}<ref name="{_esc(name)}"/>\n')

    def eof(self) -> None:
        self.out.flush()


# -- reader ------------------------------------------------------------------------

_SB_REQUIRED = ("uuid", "time", "transaction", "data_block_size", "nr_data_blocks")
_SB_OPTIONAL = ("flags", "version", "metadata_snap")
_DEV_ATTRS = ("dev_id", "mapped_blocks", "transaction", "creation_time", "snap_time")
_SINGLE_ATTRS = ("origin_block", "data_block", "time")
_RANGE_ATTRS = ("origin_begin", "data_begin", "length", "time")
_ALLOWED = {
    "superblock": _SB_REQUIRED + _SB_OPTIONAL,
    "device": _DEV_ATTRS,
    "single_mapping": _SINGLE_ATTRS,
    "range_mapping": _RANGE_ATTRS,
    "def": ("name",),
    "ref": ("name",),
}
_PARENTS = {
    "superblock": (None,),
    "device": ("superblock",),
    "def": ("superblock",),
    "single_mapping": ("device", "def"),
    "range_mapping": ("device", "def"),
    "ref": ("device",),
}


class _Fail(Exception):
    """Internal: a message to be prefixed with the parser position (the
    current one, or *position* where it was raised)."""

    def __init__(self, message: str, position: tuple[int, int] | None = None):
        super().__init__(message)
        self.position = position


def _attr_problem(tag: str, attrs: dict[str, str], required: Iterable[str]) -> str:
    allowed = _ALLOWED[tag]
    for k in attrs:
        if k not in allowed:
            return f"unknown attribute '{k}' on <{tag}>"
    for k in required:
        if k not in attrs:
            return f"missing attribute '{k}' on <{tag}>"
    return f"bad attributes on <{tag}>"


def _num(tag: str, key: str, s: str, limit: int) -> int:
    if not (s.isascii() and s.isdigit()):
        raise _Fail(f"<{tag}> {key}=\"{s}\" is not a non-negative decimal integer")
    n = int(s)
    if n > limit:
        raise _Fail(f"<{tag}> {key}={n} is out of range (maximum {limit})")
    return n


class _Reader:
    def __init__(self, visitor: MetadataVisitor, source: str, parser: expat.XMLParserType):
        self.v = visitor
        self.source = source
        self.stack: list[str] = []
        self.sb: Superblock | None = None
        self.nr_data_blocks = U64 + 1
        self.defs: set[str] = set()
        self.in_def = False
        self.done = False
        self.map_ok = False            # True: directly inside <device>/<def>
        self.data_limit = MAX_DATA_BLOCK + 1
        raw = getattr(visitor, "map_raw", None)
        if raw is None:
            vmap = visitor.map

            def raw(o: int, d: int, t: int, n: int) -> None:
                vmap(Map(o, d, t, n))
        self.map_raw: Callable[[int, int, int, int], None] = raw
        self.parser = parser

    # element handlers -------------------------------------------------------
    def start(self, tag: str, attrs: dict[str, str]) -> None:
        try:
            # Hot path: a well-formed mapping in range; anything else goes
            # through _map_slow, which gives the precise error.
            if tag == "single_mapping":
                if self.map_ok and len(attrs) == 3:
                    os_ = attrs.get("origin_block")
                    ds = attrs.get("data_block")
                    ts = attrs.get("time")
                    if (os_ is not None and ds is not None and ts is not None and os_.isdigit()
                            and ds.isdigit() and ts.isdigit() and os_.isascii() and ds.isascii()
                            and ts.isascii()):
                        o, d, t = int(os_), int(ds), int(ts)
                        if t <= MAX_TIME and d < self.data_limit and o <= U64:
                            self.map_ok = False
                            self.map_raw(o, d, t, 1)
                            return
                self._map_slow(tag, attrs)
            elif tag == "range_mapping":
                self._map_slow(tag, attrs)
            else:
                self._start(tag, attrs)
        except XmlError:
            raise
        except (_Fail, ValueError) as err:
            if isinstance(err, _Fail) and err.position is not None:
                raise
            raise _Fail(str(err), (self.parser.CurrentLineNumber,
                                   self.parser.CurrentColumnNumber + 1)) from err

    def _map_slow(self, tag: str, attrs: dict[str, str]) -> None:
        if not self.map_ok:
            if self.stack and self.stack[-1] in ("device", "def"):
                raise _Fail(f"<{tag}> is not allowed inside a mapping element")
            self._bad_parent(tag)
        self.map_ok = False
        if tag == "single_mapping":
            if len(attrs) != 3:
                raise _Fail(_attr_problem(tag, attrs, _SINGLE_ATTRS))
            try:
                os_, ds, ts = attrs["origin_block"], attrs["data_block"], attrs["time"]
            except KeyError:
                raise _Fail(_attr_problem(tag, attrs, _SINGLE_ATTRS)) from None
            n = 1
        else:
            if len(attrs) != 4:
                raise _Fail(_attr_problem(tag, attrs, _RANGE_ATTRS))
            try:
                os_, ds, ts, ns = (attrs["origin_begin"], attrs["data_begin"], attrs["time"],
                                   attrs["length"])
            except KeyError:
                raise _Fail(_attr_problem(tag, attrs, _RANGE_ATTRS)) from None
            n = _num(tag, "length", ns, U64)
            if n == 0:
                raise _Fail(f"<{tag}> length=0: a range must map at least one block")
        single = tag == "single_mapping"
        o = _num(tag, "origin_block" if single else "origin_begin", os_, U64)
        d = _num(tag, "data_block" if single else "data_begin", ds, U64)
        t = _num(tag, "time", ts, U32)
        if t > MAX_TIME:
            raise _Fail(f"<{tag}> time={t} does not fit the 24 bits a mapping stores "
                        f"(maximum {MAX_TIME})")
        if o + n - 1 > U64:
            raise _Fail(f"<{tag}> virtual blocks {o}..{o + n - 1} overflow 64 bits")
        if d + n > self.nr_data_blocks:
            last = d + n - 1
            raise _Fail(f"<{tag}> maps data block {last}, beyond the end of the data "
                        f"device (nr_data_blocks={self.nr_data_blocks})")
        if d + n - 1 > MAX_DATA_BLOCK:
            raise _Fail(f"<{tag}> data block {d + n - 1} does not fit 40 bits "
                        f"(maximum {MAX_DATA_BLOCK})")
        self.map_raw(o, d, t, n)

    def _start(self, tag: str, attrs: dict[str, str]) -> None:
        if not self.map_ok and self.stack and self.stack[-1] in ("device", "def"):
            raise _Fail(f"<{tag}> is not allowed inside a mapping element")
        parents = _PARENTS.get(tag)
        if parents is None:
            raise _Fail(f"unknown element <{tag}>")
        parent = self.stack[-1] if self.stack else None
        if parent not in parents:
            self._bad_parent(tag)
        self.stack.append(tag)
        self.map_ok = tag == "device" or tag == "def"
        if tag == "device":
            dev = self._device(attrs)
            self.v.device_b(dev)
        elif tag == "superblock":
            self.sb = self._superblock(attrs)
            self.v.superblock_b(self.sb)
            # A visitor may override the data size (restore --nr-data-blocks).
            self.nr_data_blocks = getattr(self.v, "nr_data_blocks", self.sb.nr_data_blocks)
            self.data_limit = min(self.nr_data_blocks, MAX_DATA_BLOCK + 1)
        elif tag == "def":
            name = self._name(tag, attrs)
            if name in self.defs:
                raise _Fail(f"<def name=\"{name}\"> is defined twice")
            self.defs.add(name)
            self.v.def_shared_b(name)
        else:   # ref
            name = self._name(tag, attrs)
            if name not in self.defs:
                raise _Fail(f"<ref name=\"{name}\"> refers to an undefined <def>")
            self.v.ref_shared(name)

    def end(self, tag: str) -> None:
        top = self.stack[-1]
        if (top == "device" or top == "def") and not self.map_ok:
            self.map_ok = True             # a mapping element closed
            return
        self.stack.pop()
        self.map_ok = bool(self.stack) and self.stack[-1] in ("device", "def")   # after <ref/>
        if tag == "device":
            self.v.device_e()
        elif tag == "def":
            self.v.def_shared_e()
        elif tag == "superblock":
            self.v.superblock_e()
            self.done = True

    # helpers --------------------------------------------------------------------
    def _bad_parent(self, tag: str) -> NoReturn:
        parent = self.stack[-1] if self.stack else None
        if parent is None:
            raise _Fail(f"<{tag}> must be inside <{_PARENTS[tag][0]}>, not at the top level")
        if tag == "superblock":
            raise _Fail(f"<superblock> must be the document element, not inside <{parent}>")
        want = " or ".join(f"<{p}>" for p in _PARENTS[tag])
        raise _Fail(f"<{tag}> is not allowed inside <{parent}> (it belongs in {want})")

    def _check_keys(self, tag: str, attrs: dict[str, str], required: Iterable[str]) -> None:
        allowed = _ALLOWED[tag]
        for k in attrs:
            if k not in allowed:
                raise _Fail(f"unknown attribute '{k}' on <{tag}>")
        for k in required:
            if k not in attrs:
                raise _Fail(f"missing attribute '{k}' on <{tag}>")

    def _superblock(self, a: dict[str, str]) -> Superblock:
        tag = "superblock"
        self._check_keys(tag, a, _SB_REQUIRED)

        def opt(key: str, limit: int) -> int | None:
            return _num(tag, key, a[key], limit) if key in a else None
        return Superblock(
            uuid=a["uuid"], time=_num(tag, "time", a["time"], U32),
            transaction=_num(tag, "transaction", a["transaction"], U64),
            flags=opt("flags", U32), version=opt("version", U32),
            data_block_sectors=_num(tag, "data_block_size", a["data_block_size"], U32),
            nr_data_blocks=_num(tag, "nr_data_blocks", a["nr_data_blocks"], U64),
            metadata_snap=opt("metadata_snap", U64))

    def _device(self, a: dict[str, str]) -> Device:
        tag = "device"
        self._check_keys(tag, a, _DEV_ATTRS)
        dev_id = _num(tag, "dev_id", a["dev_id"], U32)
        if dev_id > MAX_DEV_ID:
            raise _Fail(f"<device> dev_id={dev_id} is above the kernel's maximum "
                        f"{MAX_DEV_ID} (2^24-1)")
        return Device(dev_id, _num(tag, "mapped_blocks", a["mapped_blocks"], U64),
                      _num(tag, "transaction", a["transaction"], U64),
                      _num(tag, "creation_time", a["creation_time"], U32),
                      _num(tag, "snap_time", a["snap_time"], U32))

    def _name(self, tag: str, a: dict[str, str]) -> str:
        self._check_keys(tag, a, ("name",))
        return a["name"]


def _parse_scanned(source: IO[bytes], p: expat.XMLParserType, r: _Reader,
                   progress: Callable[[int], None] | None) -> None:
    """Feed *source* to *p* as :func:`read_xml` does, with the accelerator
    taking the mapping elements thin_dump writes (``dm_xml_maps``): they go
    to the visitor's ``map_records(records, k)`` if it has one (the
    scanner's *k* records of 6 words, see ``dm_xml_maps``: it takes as many
    leading ones as it can, as that many ``map_raw`` calls would, and returns
    how many), the rest to the reader's ``map_raw``, and expat sees spaces in their
    place, so every other element, every error and every position is
    expat's and the reader's as without it.  A mapping the scanner does not
    take (another spelling, a value out of range, a misplaced one) is left
    for expat and the reader's checks.  Raises what the reader raises;
    errors from ``map_raw`` carry the position of their element.  Runs of
    blanks and newlines reach expat squeezed (``dm_xml_squeeze``: the
    newlines and the blanks after the last one), so that it scans less."""
    out = ffi.new("uint64_t[]", _REC * _SCAN_BATCH)
    vals = ffi.buffer(out)
    stop, markup_stop, why = ffi.new("size_t *"), ffi.new("size_t *"), ffi.new("int *")
    raw = r.map_raw
    records = getattr(r.v, "map_records", None)
    buf = bytearray()
    total = 0
    scanning = True
    refused = 0

    def feed_plain(buf: bytearray, a: int, b: int) -> None:
        # text between markup, squeezed (same lines and columns after it)
        m = lib.dm_xml_squeeze(ffi.from_buffer(buf) + a, b - a)
        p.Parse(bytes(buf[a:a + m]), False)
    while True:
        chunk = source.read(READ_CHUNK)
        if not chunk or not scanning:
            p.Parse(bytes(buf) + chunk, not chunk)
            buf = bytearray()
            if not chunk:
                return
        else:
            buf += chunk
            pos = 0
            while True:
                k = lib.dm_xml_maps(ffi.from_buffer(buf), len(buf), pos, r.map_ok,
                                    r.data_limit, out, _SCAN_BATCH, stop, markup_stop, why)
                if k:
                    q = memoryview(vals).cast("Q")[:_REC * k]
                    done = 0
                    try:
                        if records is not None:
                            done = records(out, k)
                        for i in range(_REC * done, _REC * k, _REC):
                            raw(q[i], q[i + 1], q[i + 2], q[i + 3])
                            done += 1
                    except ValueError as err:
                        p.Parse(bytes(buf[pos:q[_REC * done + 5]]), False)
                        raise _Fail(str(err), (p.CurrentLineNumber,
                                               p.CurrentColumnNumber + 1)) from err
                s_ = stop[0]
                w = why[0]
                feed_plain(buf, pos, s_)
                if w == 1:
                    p.Parse(bytes(buf[s_:markup_stop[0]]), False)
                    pos = markup_stop[0]
                    refused = 0 if k else refused + 1
                    if refused > _MAX_REFUSED:
                        scanning = False
                        p.Parse(bytes(buf[pos:]), False)
                        buf = bytearray()
                        break
                    continue
                if w == 2:
                    pos = s_
                    continue
                del buf[:s_]
                if w == 4 or len(buf) > _MAX_CARRY:
                    scanning = False
                break
        total += len(chunk)
        if progress is not None:
            progress(total)


def _no_doctype(*_args: object) -> NoReturn:
    raise _Fail("DOCTYPE and entity declarations are not allowed in metadata XML")


def read_xml(source: str | os.PathLike[str] | IO[bytes], visitor: MetadataVisitor, *,
             name: str | None = None, progress: Callable[[int], None] | None = None,
             accelerated: bool = True) -> None:
    """Parse metadata XML from *source* (a path or a binary file object) and
    drive *visitor*.  *progress*, if given, is called with the number of
    bytes consumed so far.  Raises :class:`XmlError` (one line with line and
    column) for malformed XML, unknown elements or attributes, missing
    attributes and out-of-range values; errors raised by the visitor as
    ``ValueError`` (e.g. :class:`~dmthin.errors.InvalidArgument`) are
    re-raised as :class:`XmlError` with the position.  ``OSError`` if the
    file cannot be read.  *accelerated* False: expat alone, even when the
    accelerator is built (the tests compare both)."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return read_xml(f, visitor, name=name or os.fspath(source), progress=progress,
                            accelerated=accelerated)
    where = name or getattr(source, "name", "<xml>")
    p = expat.ParserCreate()
    r = _Reader(visitor, str(where), p)
    p.StartElementHandler = r.start
    p.EndElementHandler = r.end
    p.StartDoctypeDeclHandler = _no_doctype       # no entities: nothing to expand
    p.EntityDeclHandler = _no_doctype
    total = 0

    def fail(err: Exception) -> NoReturn:
        line, col = getattr(err, "position", None) or (p.CurrentLineNumber,
                                                        p.CurrentColumnNumber + 1)
        raise XmlError(f"{where}: line {line}, column {col}: {err}") from None

    try:
        if accelerated and lib is not None:
            _parse_scanned(source, p, r, progress)
        else:
            while True:
                chunk = source.read(READ_CHUNK)
                p.Parse(chunk, not chunk)
                if not chunk:
                    break
                total += len(chunk)
                if progress is not None:
                    progress(total)
    except expat.ExpatError as err:
        msg = expat.ErrorString(err.code) if err.code else str(err)
        raise XmlError(f"{where}: line {err.lineno}, column {err.offset + 1}: "
                       f"malformed XML: {msg}") from None
    except XmlError:
        raise
    except (_Fail, ValueError) as err:
        fail(err)
    if r.sb is None:
        raise XmlError(f"{where}: no <superblock> element: not thin metadata XML")
    if not r.done:
        raise XmlError(f"{where}: <superblock> is not closed")
    visitor.eof()
