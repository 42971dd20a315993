"""Reference counts computed from the trees, in bounded memory.

:class:`RefCounts` is the one counter restore and both checkers use: one
byte per block, saturating at 255 into a dict of exact counts (counts that
high are rare).  Up to :data:`FLAT_MAX` blocks the bytes are one flat
``bytearray`` (fastest); above that they are kept in chunks of one space-map
bitmap's worth of blocks (:data:`~dmthin.pdata.space_map.format.ENTRIES_PER_BITMAP`)
allocated on first use, so memory follows the blocks actually referenced,
not the size of the device (a superblock may claim 2^40 data blocks).
"""
from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence

from .accel import ffi as _ffi
from .accel import lib as _lib
from .space_map.format import CAP3, ENTRIES_PER_BITMAP

CHUNK = ENTRIES_PER_BITMAP
FLAT_MAX = 1 << 24                 # blocks counted in one bytearray (16 MiB at most)
SATURATED = 255                    # (the hot loops spell SATURATED - 1 as 254)
_ONES = b"\x01" * CHUNK
# count -> count + 1 below the saturation step (254 -> 255 needs the dict)
_PLUS_ONE = bytes(min(c + 1, SATURATED) for c in range(256))


class RefCounts:
    """Reference counts of blocks ``0 .. size-1``, all 0 at first.

    Every method raises ``IndexError`` for a block outside that range.
    """

    __slots__ = ("size", "_flat", "_chunks", "_big")

    def __init__(self, size: int):
        self.size = size
        self._flat = bytearray(size) if size <= FLAT_MAX else None
        self._chunks: dict[int, bytearray] = {}
        self._big: dict[int, int] = {}          # exact counts of the saturated blocks

    def __repr__(self) -> str:
        return f"<RefCounts of {self.size} blocks>"

    def _check(self, b: int) -> None:
        if not 0 <= b < self.size:
            raise IndexError(f"block {b} is outside 0..{self.size - 1}")

    def _chunk(self, i: int) -> bytearray:
        c = self._chunks.get(i)
        if c is None:
            c = self._chunks[i] = bytearray(CHUNK)
        return c

    def _locate(self, b: int) -> tuple[bytearray, int]:
        """The bytearray holding block *b*'s count and its index there."""
        self._check(b)
        if self._flat is not None:
            return self._flat, b
        i, off = divmod(b, CHUNK)
        return self._chunk(i), off

    # -- counting ----------------------------------------------------------------
    def inc(self, b: int, n: int = 1) -> None:
        """Add *n* (>= 0) to the count of block *b*."""
        flat = self._flat
        if flat is not None and 0 <= b < self.size:
            buf, j = flat, b
        else:
            buf, j = self._locate(b)
        c = buf[j]
        if c == SATURATED:
            self._big[b] += n
        elif c + n >= SATURATED:
            buf[j] = SATURATED
            self._big[b] = c + n
        else:
            buf[j] = c + n

    def inc_blocks(self, blocks: Sequence[int]) -> None:
        """Add 1 to the count of each block in *blocks* (a block may come
        more than once)."""
        if not blocks:
            return
        flat = self._flat
        if flat is not None:
            if min(blocks) < 0:
                raise IndexError(f"block {min(blocks)} is outside 0..{self.size - 1}")
            for b in blocks:                  # IndexError past the end
                c = flat[b]
                if c < 254:                   # below SATURATED - 1: no dict
                    flat[b] = c + 1
                else:
                    self.inc(b)
            return
        size = self.size
        lo = hi = 0
        chunk = bytearray()
        for b in blocks:
            if not lo <= b < hi:
                self._check(b)
                i = b // CHUNK
                lo = i * CHUNK
                hi = min(lo + CHUNK, size)
                chunk = self._chunk(i)
            j = b - lo
            c = chunk[j]
            if c < 254:                       # below SATURATED - 1: no dict
                chunk[j] = c + 1
            else:
                self.inc(b)

    @property
    def flat(self) -> bytearray | None:
        """The counts as one bytearray (one byte a block, 255: look in the
        dict of big counts), or None when they are kept in chunks."""
        return self._flat

    def inc_packed(self, values: Sequence[int], shift: int, accelerated: bool = True) -> None:
        """:meth:`inc_blocks` of ``v >> shift`` for each of *values* (e.g.
        the data blocks of a leaf of mapping values), without building the
        list of blocks.  *values* are unsigned, as a btree stores them.
        The loop is the accelerator's when it is built and *accelerated*.
        Raises ``IndexError`` for a block past the end (the blocks before it
        counted)."""
        flat = self._flat
        if flat is None:
            self.inc_blocks([v >> shift for v in values])
            return
        if _lib is not None and accelerated:
            n = len(values)
            if isinstance(values, array) and values.typecode == "Q":
                arr = _ffi.from_buffer("uint64_t[]", values)
            else:
                arr = _ffi.new("uint64_t[]", values if isinstance(values, (tuple, list))
                               else list(values))
            i = _lib.dm_inc_packed(_ffi.from_buffer(flat), len(flat), arr, n, shift)
            while i < n:                      # the slow case, then on
                b = values[i] >> shift
                c = flat[b]                   # IndexError past the end
                if c < 254:
                    flat[b] = c + 1
                else:
                    self.inc(b)
                i += 1
                i += _lib.dm_inc_packed(_ffi.from_buffer(flat), len(flat), arr + i, n - i, shift)
            return
        for v in values:                      # IndexError past the end
            b = v >> shift
            c = flat[b]
            if c < 254:                       # below SATURATED - 1: no dict
                flat[b] = c + 1
            else:
                self.inc(b)

    def inc_run(self, b: int, n: int) -> None:
        """Add 1 to the counts of blocks ``b .. b+n-1``."""
        if n <= 0:
            return
        self._check(b)
        self._check(b + n - 1)
        while n:
            buf, off = self._locate(b)
            k = min(n, len(buf) - off)
            run = buf[off:off + k]
            if run.count(0) == k:
                buf[off:off + k] = _ONES[:k] if k <= CHUNK else b"\x01" * k
            elif max(run) < SATURATED - 1:
                buf[off:off + k] = run.translate(_PLUS_ONE)
            else:
                self.inc_blocks(range(b, b + k))
            b += k
            n -= k

    # -- reading -------------------------------------------------------------------
    def get(self, b: int) -> int:
        """The count of block *b*."""
        self._check(b)
        if self._flat is not None:
            c = self._flat[b]
        else:
            chunk = self._chunks.get(b // CHUNK)
            if chunk is None:
                return 0
            c = chunk[b % CHUNK]
        return self._big[b] if c == SATURATED else c

    def bitmap(self, i: int) -> bytes | None:
        """The saturating counts (0..255) of blocks ``i*CHUNK ..
        (i+1)*CHUNK-1`` (CHUNK bytes; blocks past the end count 0), or None
        if none of them was counted."""
        if self._flat is None:
            chunk = self._chunks.get(i)
            return None if chunk is None else bytes(chunk)
        part = bytes(self._flat[i * CHUNK:(i + 1) * CHUNK])
        if part.count(0) == len(part):
            return None
        return part.ljust(CHUNK, b"\0")

    def bitmaps_in_use(self) -> list[int]:
        """Indexes of the chunks holding any count, ascending."""
        if self._flat is None:
            return sorted(self._chunks)
        return [i for i in range(-(-self.size // CHUNK)) if self.bitmap(i) is not None]

    def _buffers(self) -> Iterator[tuple[int, bytearray]]:
        """``(first block, counts)`` of every buffer in use, ascending."""
        if self._flat is not None:
            yield 0, self._flat
        else:
            for i in sorted(self._chunks):
                yield i * CHUNK, self._chunks[i]

    def nr_at_least_3(self) -> int:
        """How many blocks have a count of 3 or more (the entries of a space
        map's ref-count tree)."""
        return sum(buf.translate(CAP3).count(3) for _base, buf in self._buffers())

    def at_least_3(self) -> Iterator[tuple[int, int]]:
        """``(block, count)`` for every block counted 3 or more, ascending."""
        for base, buf in self._buffers():
            capped = buf.translate(CAP3)
            j = capped.find(3)
            while j >= 0:
                c = buf[j]
                yield base + j, self._big[base + j] if c == SATURATED else c
                j = capped.find(3, j + 1)
