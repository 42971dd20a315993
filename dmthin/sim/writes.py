"""Coalesced data writes: one vectored write per run of adjacent buffers.

A write of many blocks that the pool placed side by side in the data file
(consecutive allocations, or a mapped range written in place) becomes one
``pwritev`` instead of one per block.  The queue holds at most one run; a
buffer that does not continue it, or that would make it longer than
:data:`WRITE_RUN_MAX`, flushes it first.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .datafile import Chunk, DataFile

#: the longest run queued before it is written (bytes)
WRITE_RUN_MAX = 8 << 20


@dataclass(slots=True)
class WriteRun:
    """Buffers to be written back to back over ``[pos, end)`` of the data file."""

    pos: int
    end: int
    parts: list[Chunk] = field(default_factory=list)


class WriteQueue:
    """The pending run of a pool's data file (use with the pool lock held)."""

    def __init__(self, data: DataFile):
        self._data = data
        self._run: WriteRun | None = None

    def queue(self, pos: int, part: Chunk) -> None:
        """Queue *part* for data file offset *pos*."""
        run = self._run
        if run is not None and run.end == pos and run.end - run.pos < WRITE_RUN_MAX:
            run.parts.append(part)
            run.end += len(part)
            return
        self.flush()
        self._run = WriteRun(pos, pos + len(part), [part])

    def flush(self) -> None:
        """Write the pending run.  It is dropped even if the write fails
        (:class:`~dmthin.errors.IOFailure`)."""
        run, self._run = self._run, None
        if run is not None:
            self._data.write(0, run.pos, run.parts)

    def drop(self) -> None:
        """Forget the pending run without writing it (a failed transaction)."""
        self._run = None
