"""``thin_metadata_size``: how much metadata a pool needs.

:func:`run_thin_metadata_size` is thin_metadata_size 0.9.0 to the byte:
its argv (getopt_long's rules: bundled and abbreviated options, ``-nshort``
but not ``-n short``, stray arguments ignored), its unit letters and names
(``k`` kibibytes, ``K`` kilobytes, ...; a number without a unit is sectors,
or a count for ``-m``), its 64-bit arithmetic (units past exbibytes wrap
around, as in C) and its output and messages.  Its estimate is
``4 KiB * (1 + 2 * pool / block / 252 + max_thins)`` -- every data block
mapped once, leaves half full, one block per thin device.

``--exact`` (dmthin's) prints :func:`worst_case_blocks` instead: the blocks
the metadata of such a pool really takes at worst -- every data block
mapped once, spread evenly over ``max_thins`` devices, and every btree node
as empty as the kernel lets it get (a third of its entries, the fill below
which it merges nodes and the tools reject them), plus the details and
top-level trees, both space maps and the superblock.  It is computed with
the btree builder's own node sizes; the tests build such metadata and count
its blocks.  :func:`recommended_metadata_size` is what ``pool create``
takes when no metadata size is given.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import UsageError
from ..pdata.btree.node import calc_max_entries
from ..pdata.space_map.format import ENTRIES_PER_BITMAP
from ..units import MAX_METADATA_BLOCKS, METADATA_BLOCK_SIZE

PROG = "thin_metadata_size"
UNIT_CHARS = "bskKmMgGtTpPeEzZyY"
UNIT_NAMES = ("bytes", "sectors", "kibibytes", "kilobytes", "mebibytes", "megabytes",
              "gibibytes", "gigabytes", "tebibytes", "terabytes", "pebibytes", "petabytes",
              "ebibytes", "exabytes", "zebibytes", "zetabytes", "yobibytes", "yottabytes")
U64 = (1 << 64) - 1
LLONG_MAX = (1 << 63) - 1
SECTORS = 1                                   # index of "sectors"
MAPPINGS_PER_BLOCK = (4096 - 64) // 16        # the estimator's 252


def _factors() -> list[int]:
    f = [1, 512, 1024, 1000]
    for u in range(4, len(UNIT_NAMES), 2):    # unsigned long long: wraps past 2^64
        f.append(f[u - 2] * f[2] & U64)
        f.append(f[u - 1] * f[3] & U64)
    return f


FACTORS = _factors()


def unit_index(text: str) -> int:
    """0.9.0's ``unit_index``: one letter, or a prefix of a unit name; -1."""
    if len(text) == 1:
        i = UNIT_CHARS.find(text)
        return i
    for i, name in enumerate(UNIT_NAMES):
        if name.startswith(text):
            return i
    return -1


class Failure(Exception):
    """An error thin_metadata_size reports: ``message`` goes to stderr
    as is, exit status 1."""


@dataclass
class Request:
    """What was asked: sizes in sectors (``max_thins`` a count), the output
    unit, ``numeric`` 0 (full line), 1 (number), 2 (short unit), 3 (long)."""
    n: dict[str, int] = field(default_factory=lambda: {"b": 0, "s": 0, "m": 0})
    text: dict[str, str] = field(default_factory=dict)
    unit: int = SECTORS
    numeric: int = 0
    exact: bool = False


def _abort(msg: str) -> Failure:
    return Failure(f"{PROG} - {msg}\n")


def _atoll(digits: str) -> int:
    # atoll saturates; never convert more digits than can matter (int()
    # refuses more than 4300)
    digits = digits.lstrip("0")
    return LLONG_MAX if len(digits) > 19 else min(int(digits), LLONG_MAX) if digits else 0


def _size(req: Request, opt: str, arg: str) -> None:
    """0.9.0's ``check_size``/``to_bytes``."""
    if req.n[opt]:
        raise _abort("option already given!")
    digits = arg[:len(arg) - len(arg.lstrip("0123456789"))]
    unit = arg[len(digits):]
    if unit:
        idx = unit_index(unit)
        if idx < 0:
            raise _abort("Invalid unit specifier!")
        r = _atoll(digits) * FACTORS[idx] & U64
        value = r if opt == "m" else r // 512
        name_idx = idx
    else:
        value = _atoll(digits) * FACTORS[SECTORS] & U64
        value //= 512
        name_idx = -1
    req.n[opt] = value
    if opt != "m" or name_idx >= 0:
        req.text[opt] = digits + UNIT_NAMES[req.unit if name_idx < 0 else name_idx]
    else:
        req.text[opt] = digits


def _numeric(req: Request, arg: str | None) -> None:
    if req.numeric:
        raise _abort("-n already given!")
    req.numeric = 1
    if arg is not None:
        long = "long".startswith(arg)
        if not arg or (not "short".startswith(arg) and not long):
            raise _abort("-n invalid option argument")
        req.numeric = 3 if long else 2


_LONG = {"block-size": ("b", 1), "pool-size": ("s", 1), "max-thins": ("m", 1), "unit": ("u", 1),
         "numeric-only": ("n", 2), "help": ("h", 0), "version": ("V", 0), "exact": ("x", 0)}
_SHORT = {"b": 1, "s": 1, "m": 1, "u": 1, "n": 2, "h": 0, "V": 0}


def _getopt(argv: list[str]) -> Iterator[tuple[str, str | None]]:
    """getopt_long(argv, "b:s:m:u:n::hV", ...) as glibc does it: the options
    one at a time, in order (stray arguments are skipped); a bad one raises
    :class:`Failure` when it is reached."""
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a == "--":
            break
        if a.startswith("--"):
            name, eq, val = a[2:].partition("=")
            hits = [k for k in _LONG if k.startswith(name)]
            if name in _LONG:
                hits = [name]
            if not hits:
                raise Failure(f"{PROG}: unrecognized option '{a}'\n")
            if len(hits) > 1:
                poss = " ".join(f"'--{h}'" for h in hits)
                raise Failure(f"{PROG}: option '--{name}' is ambiguous; possibilities: {poss}\n")
            key, has = _LONG[hits[0]]
            if has == 0 and eq:
                raise Failure(f"{PROG}: option '--{hits[0]}' doesn't allow an argument\n")
            if has == 1 and not eq:
                if i >= len(argv):
                    raise Failure(f"{PROG}: option '--{hits[0]}' requires an argument\n")
                val, i = argv[i], i + 1
            yield key, (val if (eq or has == 1) else None)
        elif a.startswith("-") and len(a) > 1:
            j = 1
            while j < len(a):
                c = a[j]
                j += 1
                if c not in _SHORT:
                    raise Failure(f"{PROG}: invalid option -- '{c}'\n")
                has = _SHORT[c]
                if has == 0:
                    yield c, None
                    continue
                rest = a[j:]
                if has == 2:
                    yield c, (rest if rest else None)
                elif rest:
                    yield c, rest
                elif i < len(argv):
                    i += 1
                    yield c, argv[i - 1]
                else:
                    raise Failure(f"{PROG}: option requires an argument -- '{c}'\n")
                break


def help_text() -> str:
    """0.9.0's ``-h`` text (and ``--exact``)."""
    def row(a: str, b: str, c: str, units: bool, mandatory: bool) -> str:
        if units:
            b += ("{" if mandatory else "[") + UNIT_CHARS + ("}" if mandatory else "]")
        return f"\t{a:<4}{b:<44}{c}\n"
    return ("Thin Provisioning Metadata Device Size Calculator.\n"
            f"Usage: {PROG} [options]\n"
            + row("-b", "--block-size BLOCKSIZE", "Block size of thin provisioned devices.",
                  True, False)
            + row("-s", "--pool-size SIZE", "Size of pool device.", True, False)
            + row("-m", "--max-thins #MAXTHINS",
                  "Maximum sum of all thin devices and snapshots.", True, False)
            + row("-u", "--unit ", "Output unit specifier.", True, True)
            + row("-n", "--numeric-only [short|long]",
                  "Output numeric value only (optionally with short/long unit identifier).",
                  False, False)
            + row("-h", "--help", "This help.", False, False)
            + row("-V", "--version", "Print thin provisioning tools version.", False, False)
            + row("", "--exact", "Worst-case blocks the metadata really takes (dmthin).",
                  False, False))


def parse(argv: list[str], version: str) -> Request | str:
    """The request in *argv*, or the text to print for ``-h``/``-V``.
    Raises :class:`Failure` with 0.9.0's message."""
    req = Request()
    for key, val in _getopt(argv):
        if key in "bsm":
            _size(req, key, val or "")
        elif key == "u":
            idx = unit_index(val or "")
            if idx < 0:
                raise _abort("output unit specifier invalid!")
            req.unit = idx
        elif key == "n":
            _numeric(req, val)
        elif key == "h":
            return help_text()
        elif key == "V":
            return version + "\n"
        elif key == "x":
            req.exact = True
    n = req.n
    if not n["b"]:
        raise _abort("block size required!")
    if not n["s"]:
        raise _abort("pool size required!")
    if not n["m"]:
        raise _abort("max thins required!")
    if n["b"] & (n["b"] - 1):
        raise _abort("block size must be 2^^N")
    if n["s"] <= n["b"]:
        raise _abort("pool size must be larger than block size")
    return req


def estimate_blocks(block_sectors: int, pool_sectors: int, max_thins: int) -> float:
    """0.9.0's estimate in 4 KiB blocks (its unsigned 64-bit arithmetic,
    then a double)."""
    return 1.0 + float((2 * pool_sectors & U64) // block_sectors // MAPPINGS_PER_BLOCK
                       + max_thins & U64)


def _to_ull(r: float) -> int:
    """C's ``(unsigned long long) r`` on x86-64 (inf gives 0, as gcc's code does)."""
    if math.isnan(r):
        return 1 << 63
    if r < 2.0 ** 63:
        return int(r) & U64
    big = r - 2.0 ** 63
    return (1 << 63 if math.isinf(big) or big >= 2.0 ** 63 else int(big)) ^ (1 << 63)


def format_result(req: Request, blocks: float) -> str:
    """0.9.0's ``print_precision`` of *blocks* 4 KiB blocks in the unit asked."""
    factor = FACTORS[req.unit]
    r = float(blocks) * 8 * 512
    r = r / factor if factor else math.inf      # C: a positive number / 0.0
    trunc = r if math.isinf(r) else math.floor(r)
    num = str(_to_ull(r)) if r == trunc else ("%0.2e" if r - trunc < 0.01 else "%0.2f") % r
    if req.numeric == 0:
        what = ("needed in the worst case" if req.exact else "estimated metadata area size")
        t = req.text
        return (f"{PROG} - {num} {UNIT_NAMES[req.unit]} {what} for "
                f'"--block-size={t["b"]} --pool-size={t["s"]} --max-thins={t["m"]}"\n')
    if req.numeric == 2:
        return f"{num}{UNIT_CHARS[req.unit]}\n"
    if req.numeric == 3:
        return f"{num}{UNIT_NAMES[req.unit]}\n"
    return num + "\n"


def run_thin_metadata_size(argv: list[str], version: str) -> str:
    """The standard output of ``thin_metadata_size ARGV``.  Raises
    :class:`Failure` (print its message on stderr, exit 1)."""
    got = parse(argv, version)
    if isinstance(got, str):
        return got
    n = got.n
    if got.exact:
        return format_result(got, float(worst_case_blocks(n["s"] // n["b"], n["m"])))
    return format_result(got, estimate_blocks(n["b"], n["s"], n["m"]))


# -- the worst case --------------------------------------------------------------------------
def worst_btree_blocks(n: int, value_size: int) -> int:
    """Blocks of a btree of *n* entries whose every node but the root holds
    a third of its entries (the least the kernel keeps and the tools accept)."""
    total = 0
    level = n
    mx = calc_max_entries(value_size)
    while True:
        least = mx // 3
        nodes = level // least if level >= 2 * least else 1
        total += nodes
        if nodes == 1:
            return total
        level, mx = nodes, calc_max_entries(8)


def worst_case_blocks(nr_data_blocks: int, max_thins: int,
                      nr_metadata_blocks: int | None = None) -> int:
    """Metadata blocks of a pool of *nr_data_blocks* data blocks, every one
    mapped once, over *max_thins* devices, every node at its least fill
    (see the module docstring).  The metadata space map covers
    *nr_metadata_blocks* (default: the result itself)."""
    if nr_data_blocks < 0 or max_thins < 1:
        raise UsageError("the worst case needs a pool of at least one data block and one "
                         "thin device")
    q, r = divmod(nr_data_blocks, max_thins)
    mappings = (r * worst_btree_blocks(q + 1, 8) if r else 0) \
        + (max_thins - r) * worst_btree_blocks(q, 8)
    devices = worst_btree_blocks(max_thins, 8) + worst_btree_blocks(max_thins, 24)
    data_bitmaps = -(-nr_data_blocks // ENTRIES_PER_BITMAP)
    data_sm = data_bitmaps + worst_btree_blocks(data_bitmaps, 16) + 1   # + empty ref-count tree
    fixed = 1 + mappings + devices + data_sm + 1 + 1     # superblock .. index block, ref tree
    total = fixed
    for _ in range(8):           # the metadata bitmaps cover the result: a fixpoint
        cover = total if nr_metadata_blocks is None else nr_metadata_blocks
        new = fixed + -(-cover // ENTRIES_PER_BITMAP)
        if new == total:
            break
        total = new
    return total


MIN_METADATA_BYTES = 2 << 20                 # LVM's and thin-provisioning.rst's floor
HEADROOM = 1.25                              # shadow copies of a transaction, held snapshots


def recommended_metadata_size(data_bytes: int, block_bytes: int, max_thins: int = 1000) -> int:
    """A metadata size in bytes for a pool of *data_bytes* with blocks of
    *block_bytes* and up to *max_thins* thin devices and snapshots: the
    worst case (:func:`worst_case_blocks`) plus a quarter, in whole MiB, at
    least 2 MiB and at most the kernel's maximum.  Raises
    :class:`UsageError` for non-positive sizes."""
    if data_bytes <= 0 or block_bytes <= 0 or max_thins < 1:
        raise UsageError("sizes and the number of thin devices must be positive")
    blocks = worst_case_blocks(-(-data_bytes // block_bytes), max_thins)
    size = -(-int(blocks * METADATA_BLOCK_SIZE * HEADROOM) // (1 << 20)) << 20
    return max(MIN_METADATA_BYTES, min(size, MAX_METADATA_BLOCKS * METADATA_BLOCK_SIZE))

