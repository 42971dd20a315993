"""Units, limits, ids and size parsing.

Constants cite their kernel source.  Quantities are typed (:class:`Bytes`,
:class:`Sectors`, :class:`DataBlocks`, :class:`MetaBlocks`: ints that keep
their unit through arithmetic, with explicit conversions), thin device ids
are :class:`ThinId` (validated once).  Sizes given by users accept ints
(bytes) or strings with binary units: ``"64K"``, ``"10G"``, ``"512"``,
``"2GiB"``, ``"128s"`` (sectors).
"""
from __future__ import annotations

import re
from typing import Any, Self

from .errors import InvalidArgument, UsageError

SECTOR_SIZE = 512                        # SECTOR_SHIFT = 9
METADATA_BLOCK_SIZE = 4096               # THIN_METADATA_BLOCK_SIZE (8 sectors)
METADATA_BLOCK_SECTORS = METADATA_BLOCK_SIZE // SECTOR_SIZE
MAX_METADATA_BITMAPS = 255               # dm-space-map-metadata.h: one index block's entries
MAX_METADATA_BLOCKS = MAX_METADATA_BITMAPS * ((1 << 14) - 64)  # DM_SM_METADATA_MAX_BLOCKS
MAX_METADATA_SECTORS = MAX_METADATA_BLOCKS * METADATA_BLOCK_SECTORS  # THIN_METADATA_MAX_SECTORS
MAX_DEV_ID = (1 << 24) - 1               # dm-thin.c MAX_DEV_ID
DATA_BLOCK_SIZE_MIN_SECTORS = 128        # DATA_DEV_BLOCK_SIZE_MIN_SECTORS (64 KiB)
DATA_BLOCK_SIZE_MAX_SECTORS = 2097152    # DATA_DEV_BLOCK_SIZE_MAX_SECTORS (1 GiB)
MAX_NAME_LEN = 127                       # DM_NAME_LEN - 1
# A mapping holds a 40-bit data block number (thin.format.TIME_BITS):
MAX_DATA_BLOCKS = 1 << 40                # the most data blocks a pool can address (a count)
MAX_DATA_BLOCK = MAX_DATA_BLOCKS - 1     # the highest data block number (an index)


class _Unit(int):
    """An ``int`` that keeps its unit through arithmetic, as devicemapper-rs's
    ``range!`` types: ``+``/``-`` with the same unit or a plain int keep the
    unit, as do ``*`` by a plain int and ``//``/``%`` by a plain int; the
    ratio of two quantities of one unit (``//``) is a plain int.  Mixing two
    different units raises ``TypeError``; conversions are explicit methods
    (:meth:`Sectors.bytes`, :meth:`MetaBlocks.bytes`, ...).  ``str()`` is the
    bare number, ``repr()`` names the unit."""

    __slots__ = ()

    def __str__(self) -> str:
        return int.__repr__(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({int.__repr__(self)})"

    def _other(self, other: object) -> int | None:
        """*other* as a plain int if it may combine with this unit, else None."""
        if isinstance(other, _Unit):
            return int(other) if type(other) is type(self) else None
        return other if isinstance(other, int) else None

    def __add__(self, other: object) -> Self:
        o = self._other(other)
        return NotImplemented if o is None else type(self)(int(self) + o)

    __radd__ = __add__

    def __sub__(self, other: object) -> Self:
        o = self._other(other)
        return NotImplemented if o is None else type(self)(int(self) - o)

    def __rsub__(self, other: object) -> Self:
        o = self._other(other)
        return NotImplemented if o is None else type(self)(o - int(self))

    def __mul__(self, other: object) -> Self:
        if isinstance(other, _Unit) or not isinstance(other, int):
            return NotImplemented
        return type(self)(int(self) * other)

    __rmul__ = __mul__

    def __floordiv__(self, other: object) -> Any:
        if type(other) is type(self):
            return int(self) // int(other)          # a ratio: a plain number
        if isinstance(other, _Unit) or not isinstance(other, int):
            return NotImplemented
        return type(self)(int(self) // other)

    def __rfloordiv__(self, other: object) -> Any:
        if isinstance(other, _Unit) or not isinstance(other, int):
            return NotImplemented
        return other // int(self)

    def __mod__(self, other: object) -> Self:
        o = self._other(other)
        return NotImplemented if o is None else type(self)(int(self) % o)

    def __rmod__(self, other: object) -> Any:
        if isinstance(other, _Unit) or not isinstance(other, int):
            return NotImplemented
        return other % int(self)

    def __neg__(self) -> Self:
        return type(self)(-int(self))

    def __abs__(self) -> Self:
        return type(self)(abs(int(self)))


class Bytes(_Unit):
    """A count of bytes."""

    __slots__ = ()

    def sectors(self) -> Sectors:
        """Whole sectors, rounding down."""
        return Sectors(int(self) // SECTOR_SIZE)

    def metablocks(self) -> MetaBlocks:
        """Whole 4 KiB metadata blocks, rounding down."""
        return MetaBlocks(int(self) // METADATA_BLOCK_SIZE)


class Sectors(_Unit):
    """A count (or index) of 512-byte sectors."""

    __slots__ = ()

    def bytes(self) -> Bytes:
        return Bytes(int(self) * SECTOR_SIZE)

    def data_blocks(self, block_sectors: int) -> DataBlocks:
        """Whole data blocks of *block_sectors* sectors, rounding down."""
        return DataBlocks(int(self) // int(block_sectors))


class DataBlocks(_Unit):
    """A count (or index) of data blocks."""

    __slots__ = ()

    def sectors(self, block_sectors: int) -> Sectors:
        """In sectors, for data blocks of *block_sectors* sectors."""
        return Sectors(int(self) * int(block_sectors))

    def bytes(self, block_sectors: int) -> Bytes:
        """In bytes, for data blocks of *block_sectors* sectors."""
        return Bytes(int(self) * int(block_sectors) * SECTOR_SIZE)


class MetaBlocks(_Unit):
    """A count (or index) of 4 KiB metadata blocks."""

    __slots__ = ()

    def bytes(self) -> Bytes:
        return Bytes(int(self) * METADATA_BLOCK_SIZE)

    def sectors(self) -> Sectors:
        return Sectors(int(self) * METADATA_BLOCK_SECTORS)


class ThinId(int):
    """A thin device id, validated once when made: ``ThinId(5)``.

    Raises :class:`~dmthin.errors.InvalidArgument` (EINVAL) unless the value
    is an integer (not a bool) from 0 to :data:`MAX_DEV_ID` (2^24-1, the
    kernel's limit).  A ``ThinId`` passes through ``ThinId()`` unchecked."""

    __slots__ = ()

    def __new__(cls, dev_id: object) -> ThinId:
        if type(dev_id) is cls:
            return dev_id
        if isinstance(dev_id, bool) or not isinstance(dev_id, int) \
                or not 0 <= dev_id <= MAX_DEV_ID:
            raise InvalidArgument(f"invalid thin device id {dev_id!r}: "
                                  f"use an integer from 0 to {MAX_DEV_ID}")
        return super().__new__(cls, dev_id)

    def __str__(self) -> str:
        return int.__repr__(self)

    def __repr__(self) -> str:
        return f"ThinId({int.__repr__(self)})"


#: the largest size of a file or block device (``loff_t``, LLONG_MAX bytes:
#: also the kernel's cap on a dm table's length, ``LLONG_MAX >> SECTOR_SHIFT``)
MAX_BYTES = (1 << 63) - 1
#: the largest 64-bit number (transaction ids, block numbers in the metadata)
MAX_U64 = (1 << 64) - 1
#: the most digits a number may have: 2^64 has 20; longer input is refused
#: before any conversion (Python's int() refuses more than 4300 digits)
MAX_DIGITS = 40

_SUFFIX = {"": 1, "B": 1, "S": SECTOR_SIZE, "K": 1 << 10, "M": 1 << 20,
           "G": 1 << 30, "T": 1 << 40, "P": 1 << 50, "E": 1 << 60}
# ASCII only: \d would take any Unicode digit ("\u0661\u0662\u0663M" is not 123M)
_SIZE_RE = re.compile(r"[ \t]*([0-9]+)(?:\.([0-9]+))?[ \t]*([a-zA-Z]*)[ \t]*")
_SIZE_HINT = "give bytes or a size like 64K, 10G"


def _shown(value: object) -> str:
    """*value* for an error message: repr, cut short if long (an int of
    more than 4300 digits has no repr)."""
    if isinstance(value, int) and value.bit_length() > 200:
        return f"<a number of {value.bit_length()} bits>"
    text = repr(value)
    return text if len(text) <= 60 else text[:40] + "..." + text[-12:]


def _digits(text: str, what: str) -> int:
    """The value of a string of ASCII digits (already matched), refusing
    absurd lengths before converting."""
    significant = text.lstrip("0")
    if len(significant) > MAX_DIGITS:
        raise UsageError(f"invalid {what}: a number of {len(significant)} digits is far "
                         "beyond any limit")
    return int(significant or "0")


def scale_decimal(whole: str, frac: str, mult: int, what: str, *,
                  truncate: bool = False) -> int:
    """``whole.frac * mult`` computed exactly from ASCII digit strings (no
    float: ``"1.5"`` K is 1536, a 400-digit number is refused, not rounded).
    A result that is not whole is refused unless *truncate* (then rounded
    down, as Go's ``int64(float * mult)`` does for Docker's sizes).

    Raises :class:`~dmthin.errors.UsageError` naming *what*.
    """
    if not (whole.isascii() and whole.isdigit()) or (frac and not (frac.isascii()
                                                                   and frac.isdigit())):
        raise UsageError(f"invalid {what}: not a decimal number")
    value = _digits(whole, what) * mult
    frac = frac.rstrip("0")
    if frac:
        if len(frac) > MAX_DIGITS:
            raise UsageError(f"invalid {what}: more than {MAX_DIGITS} decimals")
        scaled, rest = divmod(int(frac) * mult, 10 ** len(frac))
        if rest and not truncate:
            raise UsageError(f"invalid {what}: not a whole number of bytes")
        value += scaled
    return value


def parse_int(value: object, what: str, *, minimum: int = 0, maximum: int = MAX_U64,
              limit_note: str = "") -> int:
    """The one parser of counts, ids and block numbers given by users.

    *value* is an int (not a bool) or a string of ASCII decimal digits
    (``"١٢٣"``, ``"²"``, signs, spaces and fractions are refused).  The result
    must lie in ``[minimum, maximum]``; *limit_note* names what fixes the
    maximum (e.g. "the kernel's MAX_DEV_ID").

    Raises :class:`~dmthin.errors.UsageError`: one line naming *what*.
    """
    if isinstance(value, str):
        if not value or not value.isascii() or not value.isdigit():
            raise UsageError(f"invalid {what} {_shown(value)}: give a decimal number "
                             f"from {minimum} to {maximum}")
        number = _digits(value, what)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = int(value)
    else:
        raise UsageError(f"invalid {what} {_shown(value)}: give a whole number, "
                         f"not {type(value).__name__}")
    if not minimum <= number <= maximum:
        note = f" ({limit_note})" if limit_note else ""
        raise UsageError(f"invalid {what} {_shown(number)}: use a number from {minimum} to "
                         f"{maximum}{note}")
    return number


def parse_size(value: object, what: str = "size", *, maximum: int = MAX_BYTES,
               limit_note: str = "") -> int:
    """Return *value* in bytes.

    Accepts an int, or a string: an ASCII decimal number (a fraction only if
    the result is a whole number of bytes: ``"1.5G"``), then an optional binary
    unit (``K``, ``M``, ``G``, ``T``, ``P``, ``E``, also ``KiB``/``KB`` spelled
    out; ``s`` for 512-byte sectors; ``B`` for bytes).  The arithmetic is
    exact (no floats).  The result is at most *maximum*: by default
    :data:`MAX_BYTES`, the largest file or device Linux addresses.

    Raises :class:`~dmthin.errors.UsageError` on anything else.
    """
    if isinstance(value, bool):
        raise UsageError(f"invalid {what} {value!r}: {_SIZE_HINT}")
    if isinstance(value, int):
        nbytes = int(value)
        if nbytes < 0:
            raise UsageError(f"invalid {what} {nbytes}: it must not be negative")
    elif isinstance(value, str):
        m = _SIZE_RE.fullmatch(value) if value.isascii() else None
        if not m:
            raise UsageError(f"invalid {what} {_shown(value)}: {_SIZE_HINT}")
        whole, frac, unit_text = m.group(1), m.group(2) or "", m.group(3)
        unit = unit_text.upper()
        if len(unit) == 3 and unit.endswith("IB"):
            unit = unit[:-2]
        elif len(unit) == 2 and unit.endswith("B"):
            unit = unit[:-1]
        if unit not in _SUFFIX or (len(unit_text) > 1 and unit in ("", "B", "S")):
            raise UsageError(f"invalid {what} {_shown(value)}: unknown unit {unit_text!r} "
                             "(use K, M, G, T, P, E, or s for sectors)")
        nbytes = scale_decimal(whole, frac, _SUFFIX[unit], f"{what} {_shown(value)}")
    else:
        raise UsageError(f"invalid {what} {_shown(value)}: {_SIZE_HINT}")
    if nbytes > maximum:
        note = limit_note or ("the largest file or device Linux addresses"
                              if maximum == MAX_BYTES else "")
        shown = f" ({format_size(nbytes)})" if nbytes.bit_length() <= 80 else ""
        raise UsageError(f"invalid {what} {_shown(value)}{shown}: at most "
                         f"{format_size(maximum)} ({maximum} bytes)"
                         + (f", {note}" if note else ""))
    return nbytes


def parse_dev_id(value: object) -> ThinId:
    """A thin device id given by a user: :func:`parse_int` from 0 to
    :data:`MAX_DEV_ID`.  Raises :class:`~dmthin.errors.UsageError`."""
    return ThinId(parse_int(value, "thin device id", maximum=MAX_DEV_ID,
                            limit_note="the kernel's MAX_DEV_ID, 2^24-1"))


def parse_data_blocks(value: object, what: str = "number of data blocks") -> int:
    """A count of data blocks given by a user: :func:`parse_int` up to
    :data:`MAX_DATA_BLOCKS`.  Raises :class:`~dmthin.errors.UsageError`."""
    return parse_int(value, what, maximum=MAX_DATA_BLOCKS,
                     limit_note="a mapping holds a 40-bit data block number")


def format_size(nbytes: int) -> str:
    """Format bytes with binary units, as ``ls -h``/``du -h`` do: ``64K``,
    ``1.5G``, ``100G``."""
    n = float(nbytes)
    for unit in ("B", "K", "M", "G", "T", "P"):
        if n < 1024 or unit == "P":
            if unit == "B":
                return f"{int(n)}B"
            text = f"{n:.1f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_size_decimal(nbytes: float) -> str:
    """Docker's ``units.HumanSize``: decimal units, ``%.4g``, e.g.
    ``65.54kB``, ``10.74GB``, ``107.4GB``."""
    units = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"]
    i = 0
    size = float(nbytes)
    while size >= 1000 and i < len(units) - 1:
        size /= 1000
        i += 1
    return f"{size:.4g}{units[i]}"


def is_valid_data_block_sectors(sectors: int) -> bool:
    """The kernel's rule for a data block size (``pool_ctr``): 64 KiB to
    1 GiB in multiples of 64 KiB, i.e. 128 to 2097152 sectors in multiples
    of 128."""
    return (DATA_BLOCK_SIZE_MIN_SECTORS <= sectors <= DATA_BLOCK_SIZE_MAX_SECTORS
            and sectors % DATA_BLOCK_SIZE_MIN_SECTORS == 0)


def check_data_block_sectors(sectors: int) -> int:
    """Validate a data block size in sectors; return it.  Raises
    :class:`~dmthin.errors.InvalidArgument` (EINVAL) for sizes the kernel
    refuses (see :func:`is_valid_data_block_sectors`)."""
    if not is_valid_data_block_sectors(sectors):
        lo, hi = DATA_BLOCK_SIZE_MIN_SECTORS, DATA_BLOCK_SIZE_MAX_SECTORS
        raise InvalidArgument(f"invalid data block size {sectors} sectors: "
                              f"use a multiple of {lo} between {lo} and {hi}")
    return sectors


def check_data_block_size(nbytes: int) -> int:
    """Validate a data block size in bytes; return it in sectors.

    The kernel accepts 64 KiB to 1 GiB in multiples of 64 KiB (``pool_ctr``).
    """
    if nbytes % SECTOR_SIZE or not is_valid_data_block_sectors(nbytes // SECTOR_SIZE):
        raise UsageError(f"invalid data block size {format_size(nbytes)}: "
                         "use a multiple of 64K between 64K and 1G")
    return nbytes // SECTOR_SIZE


def check_dev_id(dev_id: object) -> ThinId:
    """``ThinId(dev_id)``: validate a thin device id (0 .. 2^24-1); raise
    :class:`~dmthin.errors.InvalidArgument` (EINVAL) otherwise."""
    return ThinId(dev_id)


def check_name(name: str) -> str:
    """Validate a device-mapper device name: non-empty, no ``/``, at most
    127 bytes, printable ASCII without spaces."""
    raw = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else b""
    if not raw or len(raw) > MAX_NAME_LEN or b"/" in raw or name in (".", "..") \
            or any(c < 0x21 or c > 0x7e for c in raw):
        raise UsageError(f"invalid device name {name!r}: use 1-{MAX_NAME_LEN} printable "
                         "ASCII characters without '/' or spaces")
    return name
