"""Reference counts computed from the trees, in bounded memory.

:class:`RefCounts` is the one counter restore and both checkers use: one
byte per block, saturating at 255 into a dict of exact counts (counts that
high are rare), kept in chunks of one space-map bitmap's worth of blocks
(:data:`~dmthin.pdata.space_map.format.ENTRIES_PER_BITMAP`) allocated on
first use.  So memory follows the blocks actually referenced, not the size
of the device (a superblock may claim 2^40 data blocks), and a chunk lines
up with the bitmap it is compared with or written to.
"""
from __future__ import annotations

from typing import Iterable, Iterator

from .space_map.format import CAP3, ENTRIES_PER_BITMAP

CHUNK = ENTRIES_PER_BITMAP
SATURATED = 255
_ONES = b"\x01" * CHUNK


class RefCounts:
    """Reference counts of blocks ``0 .. size-1``, all 0 at first.

    Every method raises ``IndexError`` for a block outside that range.
    """

    __slots__ = ("size", "_chunks", "_big")

    def __init__(self, size: int):
        self.size = size
        self._chunks: dict[int, bytearray] = {}
        self._big: dict[int, int] = {}          # exact counts of the saturated blocks

    def __repr__(self) -> str:
        return f"<RefCounts of {self.size} blocks, {len(self._chunks)} chunks in use>"

    def _check(self, b: int) -> None:
        if not 0 <= b < self.size:
            raise IndexError(f"block {b} is outside 0..{self.size - 1}")

    def _chunk(self, i: int) -> bytearray:
        c = self._chunks.get(i)
        if c is None:
            c = self._chunks[i] = bytearray(CHUNK)
        return c

    # -- counting ----------------------------------------------------------------
    def inc(self, b: int, n: int = 1) -> None:
        """Add *n* (>= 0) to the count of block *b*."""
        self._check(b)
        i, off = divmod(b, CHUNK)
        chunk = self._chunk(i)
        c = chunk[off]
        if c == SATURATED:
            self._big[b] += n
        elif c + n >= SATURATED:
            chunk[off] = SATURATED
            self._big[b] = c + n
        else:
            chunk[off] = c + n

    def inc_blocks(self, blocks: Iterable[int]) -> None:
        """Add 1 to the count of each block in *blocks* (a block may come
        more than once).  Fast for blocks that come close together."""
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
            if c < SATURATED - 1:
                chunk[j] = c + 1
            else:
                self.inc(b)

    def inc_run(self, b: int, n: int) -> None:
        """Add 1 to the counts of blocks ``b .. b+n-1``."""
        if n <= 0:
            return
        self._check(b)
        self._check(b + n - 1)
        while n:
            i, off = divmod(b, CHUNK)
            k = min(n, CHUNK - off)
            chunk = self._chunk(i)
            if chunk.count(0, off, off + k) == k:
                chunk[off:off + k] = _ONES[:k]
            else:
                self.inc_blocks(range(b, b + k))
            b += k
            n -= k

    # -- reading -------------------------------------------------------------------
    def get(self, b: int) -> int:
        """The count of block *b*."""
        self._check(b)
        chunk = self._chunks.get(b // CHUNK)
        if chunk is None:
            return 0
        c = chunk[b % CHUNK]
        return self._big[b] if c == SATURATED else c

    def bitmap(self, i: int) -> bytes | None:
        """The saturating counts (0..255) of blocks ``i*CHUNK ..
        (i+1)*CHUNK-1`` (CHUNK bytes; blocks past the end count 0), or None
        if none of them was counted."""
        chunk = self._chunks.get(i)
        return None if chunk is None else bytes(chunk)

    def bitmaps_in_use(self) -> list[int]:
        """Indexes of the chunks holding any count, ascending."""
        return sorted(self._chunks)

    def nr_at_least_3(self) -> int:
        """How many blocks have a count of 3 or more (the entries of a space
        map's ref-count tree)."""
        return sum(c.translate(CAP3).count(3) for c in self._chunks.values())

    def at_least_3(self) -> Iterator[tuple[int, int]]:
        """``(block, count)`` for every block counted 3 or more, ascending."""
        for i in sorted(self._chunks):
            chunk = self._chunks[i]
            if not chunk.translate(CAP3).count(3):
                continue
            base = i * CHUNK
            for j, c in enumerate(chunk):
                if c >= 3:
                    yield base + j, self._big[base + j] if c == SATURATED else c
