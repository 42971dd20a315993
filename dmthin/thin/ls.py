"""``thin_ls`` (0.9.0): per-device mapped / exclusive / shared block counts.

How 0.9.0 counts (thin-provisioning/thin_ls.cc): pass 1 walks the mapping
tree of every device in the details tree and marks each data block seen
once ("exclusive") or more than once ("shared") - so a block is shared when
it appears in more than one mapping across all devices (a snapshot's shared
subtree is walked once per device), *not* by reading the data space map's
reference counts.  Pass 2 counts, per device, the mappings whose block is
exclusive.  ``SHARED_* = mapped_blocks (from the details) - exclusive``.

Damage (as 0.9.0): the details tree must be readable; a damaged mapping
tree fails the listing only when exclusive or shared counts are asked for
(the other columns come from the details).

Memory follows the metadata, never a number read from it: the marks of
pass 1 live in chunks allocated on first use, covering at most the data
blocks a data space map in this metadata file could address; mappings to
blocks beyond that (or beyond ``nr_data_blocks``: damage, which 0.9.0
counts too) are marked in a dict, one entry per such mapping.

Output: a grid whose columns are right-justified to the widest cell (header
included), every cell followed by one space, a newline per row.
"""
from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from itertools import repeat
from operator import rshift
from typing import Any

from ..errors import MetadataError, UsageError
from ..pdata.block import BlockManager
from ..pdata.btree.node import HEADER_SIZE
from ..pdata.btree.walk import lookup
from ..pdata.space_map.format import ENTRIES_PER_BITMAP
from ..units import SECTOR_SIZE
from .accel import ffi, lib
from .format import MAPPING_VALUE_SIZE, TIME_BITS, Superblock
from .reader import (
    iter_mapping_leaf_nodes,
    iter_mapping_leaves,
    mapping_leaf_batches,
    read_details,
    select_superblock,
)

FIELDS = ("DEV", "MAPPED_BLOCKS", "EXCLUSIVE_BLOCKS", "SHARED_BLOCKS",
          "MAPPED_SECTORS", "EXCLUSIVE_SECTORS", "SHARED_SECTORS",
          "MAPPED_BYTES", "EXCLUSIVE_BYTES", "SHARED_BYTES",
          "MAPPED", "EXCLUSIVE", "SHARED",
          "TRANSACTION", "CREATE_TIME", "SNAP_TIME")
DEFAULT_FIELDS = ("DEV", "MAPPED", "CREATE_TIME", "SNAP_TIME")
_NEEDS_EXCLUSIVE = {f for f in FIELDS if f.startswith(("EXCLUSIVE", "SHARED"))}


def parse_fields(text: str) -> list[str]:
    """Split a comma-separated field list like thin_ls (a trailing comma is
    ignored).  Raises :class:`UsageError` naming an unknown field."""
    parts = text.split(",")
    if parts and parts[-1] == "":
        parts.pop()
    for p in parts:
        if p not in FIELDS:
            raise UsageError(f"unknown field {p!r} (known: {', '.join(FIELDS)})")
    return parts


def format_disk_unit(sectors: int) -> str:
    """0.9.0 ``format_disk_unit(n, UNIT_SECTOR)``: bytes, divided by 1024
    (truncating) while above 1 MiB, then once more rounded to nearest if
    still above 8 KiB; with a binary suffix."""
    n = sectors * SECTOR_SIZE
    i = 0
    while n > 1024 * 1024:
        n //= 1024
        i += 1
    if n > 8 * 1024:
        n = (n + 512) // 1024        # C round() of n / 1024.0: half away from zero
        i += 1
    return f"{n}{('', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB')[i]}"


CACHE_ENTRIES = 1 << 20      # keep up to 1M data block numbers (8 MiB) between passes
_DATA_BLOCK_SHIFT = repeat(TIME_BITS)
_CHUNK = ENTRIES_PER_BITMAP
_LEAF_ENTRIES = 254          # the most a leaf of 8-byte values holds


class _Marks:
    """Pass 1's mark per data block: seen once (1) or more (2).  Blocks
    below *limit* are marked in chunks of one bitmap's worth, allocated on
    first use; others in a dict."""

    def __init__(self, limit: int, accelerated: bool = True):
        self.limit = limit
        self.chunks: dict[int, bytearray] = {}
        self.other: dict[int, int] = {}
        self.accelerated = accelerated and lib is not None
        # the accelerator's view of the chunks: their pointers, kept alive
        self._ctable: Any = None
        self._pinned: list[Any] = []

    def _chunk(self, b: int) -> tuple[bytearray, int, int]:
        """The chunk of block *b* (< limit), created if new, and its bounds."""
        i = b // _CHUNK
        got = self.chunks.get(i)
        if got is None:
            got = self.chunks[i] = bytearray(_CHUNK)
        return got, i * _CHUNK, min((i + 1) * _CHUNK, self.limit)

    def mark(self, blocks: array[int]) -> None:
        if self.accelerated:
            self._mark_accelerated(blocks)
            return
        chunks, limit = self.chunks, self.limit
        lo = hi = 0
        chunk = bytearray()
        for b in blocks:
            if not lo <= b < hi:
                if b >= limit:
                    self.other[b] = min(2, self.other.get(b, 0) + 1)
                    continue
                i = b // _CHUNK
                lo, hi = i * _CHUNK, min((i + 1) * _CHUNK, limit)
                got = chunks.get(i)
                if got is None:
                    got = chunks[i] = bytearray(_CHUNK)
                chunk = got
            s = chunk[b - lo]
            if s < 2:
                chunk[b - lo] = s + 1

    def _mark_accelerated(self, blocks: array[int]) -> None:
        """:meth:`mark` with the accelerator's loop (``dm_mark``), which
        stops at a block past *limit* or in a chunk not allocated yet."""
        table = self._table()
        arr = ffi.from_buffer("uint64_t[]", blocks)
        i, n = 0, len(blocks)
        while True:
            i += lib.dm_mark(table, self.limit, _CHUNK, arr + i, n - i)
            if i == n:
                return
            b = blocks[i]
            if b >= self.limit:
                self.other[b] = min(2, self.other.get(b, 0) + 1)
                i += 1
            else:
                chunk = self._chunk(b)[0]
                self._pinned.append(ffi.from_buffer(chunk))
                table[b // _CHUNK] = self._pinned[-1]

    def _table(self) -> Any:
        """The accelerator's table of chunk pointers (NULL: not allocated)."""
        if self._ctable is None:
            self._ctable = ffi.new("uint8_t *[]", self.limit // _CHUNK + 1)
            for i, chunk in self.chunks.items():
                self._pinned.append(ffi.from_buffer(chunk))
                self._ctable[i] = self._pinned[-1]
        return self._ctable

    def exclusive(self, blocks: array[int]) -> int:
        """How many of *blocks* were seen once."""
        if self.accelerated:
            return self._exclusive_accelerated(blocks)
        chunks, other, limit = self.chunks, self.other, self.limit
        n = 0
        empty = bytes(_CHUNK)
        for b in blocks:
            if b >= limit:
                n += other.get(b) == 1
            else:
                n += chunks.get(b // _CHUNK, empty)[b % _CHUNK] == 1
        return n


    def _exclusive_accelerated(self, blocks: array[int]) -> int:
        """:meth:`exclusive` with the accelerator's loop (``dm_count_once``),
        which stops at a block past *limit*."""
        table = self._table()
        arr = ffi.from_buffer("uint64_t[]", blocks)
        once = ffi.new("uint64_t *")
        i, n = 0, len(blocks)
        while True:
            i += lib.dm_count_once(table, self.limit, _CHUNK, arr + i, n - i, once)
            if i == n:
                return int(once[0])
            once[0] += self.other.get(blocks[i]) == 1
            i += 1


def _subtree_root(bm: BlockManager, sb: Superblock, dev_id: int) -> int:
    root: int | None = lookup(bm, sb.data_mapping_root, dev_id, MAPPING_VALUE_SIZE)
    if root is None:
        raise MetadataError(f"device {dev_id} is in the details tree but has no mapping tree "
                            "root")
    return root


def _block_batches(bm: BlockManager, root: int, accelerated: bool = True
                   ) -> Iterator[array[int]]:
    """The data block of every mapping under *root*, in vblock order, a
    batch at a time (a leaf, or the accelerator's batch of leaves: each
    leaf's values copied as they are, then shifted in one call), so that
    memory does not grow with the device."""
    walk = mapping_leaf_batches(bm, root) if accelerated else None
    skip = 0
    if walk is not None:
        values = ffi.new("uint64_t[]", walk.batch * _LEAF_ENTRIES)
        for blocks, n in walk:
            k = lib.dm_leaf_blocks_values(blocks, n, TIME_BITS, values)
            out = array("Q")
            out.frombytes(ffi.buffer(values, 8 * k))
            yield out
        if not walk.failed:
            return
        skip = walk.handed       # Python reports the problem
    if accelerated and lib is not None:
        for keys, buf, mx in iter_mapping_leaf_nodes(bm, root, skip=skip):
            off = HEADER_SIZE + 8 * mx
            out = array("Q")
            out.frombytes(buf[off:off + 8 * len(keys)])
            if out:
                lib.dm_shift(ffi.from_buffer("uint64_t[]", out), len(out), TIME_BITS)
            yield out
        return
    for _keys, values in iter_mapping_leaves(bm, root, accelerated=False):
        yield array("Q", map(rshift, values, _DATA_BLOCK_SHIFT))


def thin_ls(bm: BlockManager, fields: Sequence[str] = DEFAULT_FIELDS, *, headers: bool = True,
            metadata_snap: bool | int | None = None) -> str:
    """Return thin_ls output for the metadata behind *bm*.  Raises
    :class:`~dmthin.errors.MetadataError` (a damaged details tree, a
    damaged mapping tree when exclusive or shared counts are asked for, no
    metadata snapshot)."""
    sb = select_superblock(bm, metadata_snap)
    bs = sb.data_block_size
    devs = read_details(bm, sb.device_details_root)
    ids = sorted(devs)
    need_excl = bool(_NEEDS_EXCLUSIVE.intersection(fields))
    roots = {}
    cache: dict[int, list[array[int]]] = {}       # devices walked once, bounded
    cached = 0
    marks = _Marks(min(sb.data_sm.nr_blocks, ENTRIES_PER_BITMAP * bm.file_blocks))
    # Pass 1 only matters for the exclusive and shared counts.
    for dev_id in ids if need_excl else ():
        try:
            roots[dev_id] = root = _subtree_root(bm, sb, dev_id)
            kept: list[array[int]] | None = []
            n = 0
            for batch in _block_batches(bm, root):
                marks.mark(batch)
                n += len(batch)
                if kept is not None:
                    if cached + n <= CACHE_ENTRIES:
                        kept.append(batch)
                    else:
                        kept = None
        except MetadataError as e:
            raise MetadataError(f"metadata contains errors (the mapping tree of device "
                                f"{dev_id}: {e}); run 'dmthin check' for details") from e
        if kept is not None:
            cache[dev_id] = kept
            cached += n
    rows: list[list[str]] = []
    if headers and fields:
        rows.append(list(fields))
    for dev_id in ids:
        d = devs[dev_id]
        excl = 0
        if need_excl:
            batches = cache.pop(dev_id, None)
            for batch in batches if batches is not None else _block_batches(bm, roots[dev_id]):
                excl += marks.exclusive(batch)
        shared = d.mapped_blocks - excl
        values = {
            "DEV": dev_id, "MAPPED_BLOCKS": d.mapped_blocks,
            "EXCLUSIVE_BLOCKS": excl, "SHARED_BLOCKS": shared,
            "MAPPED_SECTORS": d.mapped_blocks * bs, "EXCLUSIVE_SECTORS": excl * bs,
            "SHARED_SECTORS": shared * bs,
            "MAPPED_BYTES": d.mapped_blocks * bs * SECTOR_SIZE,
            "EXCLUSIVE_BYTES": excl * bs * SECTOR_SIZE,
            "SHARED_BYTES": shared * bs * SECTOR_SIZE,
            "TRANSACTION": d.transaction, "CREATE_TIME": d.creation_time,
            "SNAP_TIME": d.snap_time,
        }
        row = []
        for f in fields:
            if f == "MAPPED":
                row.append(format_disk_unit(d.mapped_blocks * bs))
            elif f == "EXCLUSIVE":
                row.append(format_disk_unit(excl * bs))
            elif f == "SHARED":
                row.append(format_disk_unit(shared * bs))
            else:
                row.append(str(values[f]))
        if row:
            rows.append(row)
    return render_grid(rows)


def render_grid(rows: list[list[str]]) -> str:
    """thin_ls's grid: right-justify each column, a space after every cell."""
    if not rows:
        return ""
    widths = [0] * max(len(r) for r in rows)
    for r in rows:
        for i, c in enumerate(r):
            if len(c) > widths[i]:
                widths[i] = len(c)
    return "".join("".join(c.rjust(widths[i]) + " " for i, c in enumerate(r)) + "\n"
                   for r in rows)
