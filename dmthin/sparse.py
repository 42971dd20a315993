"""Sparse files: where their data lies and whether a filesystem tells.

The graph layer's image mirror and :func:`dmthin.extfs.mkfs` copy only the
data regions of a scratch image into a thin device, so that a hole never
provisions a block.  That only works on a filesystem that reports holes
(``SEEK_DATA``/``SEEK_HOLE``); :func:`holes_reported` probes one.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator


def data_regions(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` byte ranges of *fd* below *size* holding data."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:       # ENXIO: nothing after pos
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        pos = end


def holes_reported(directory: str | os.PathLike[str]) -> bool:
    """True if the filesystem of *directory* reports holes: a probe file
    with one written block in the middle shows data only there."""
    fd, name = tempfile.mkstemp(prefix=".holecheck", dir=directory)
    try:
        os.ftruncate(fd, 1 << 20)
        os.pwrite(fd, b"x" * 4096, 512 << 10)
        try:
            return os.lseek(fd, 0, os.SEEK_DATA) > 0
        except OSError:
            return False
    finally:
        os.close(fd)
        os.unlink(name)
