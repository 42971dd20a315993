"""A write log of the devices under a pool, and the crash states it allows.

:class:`WriteLog` records what the kernel's dm-log-writes target records of
a block device: every write (offset and bytes), every discard (here: a
punched hole or a zeroed range, offset and length), every flush, in the
order they are issued, across several devices (a pool's ``metadata`` and
``data`` files share one log, so their relative order is kept), and marks
a caller puts between them.

Logging is off by default and costs one ``is None`` test per write when
off: a log is attached to a file's path with :func:`attach` before the
file is opened (by :class:`~dmthin.pdata.block.BlockManager` or the
simulator's data file), which then report to it.

:class:`Replayer` turns a log and the devices' contents before it into
crash states, as a power failure could leave them: after the first *n*
entries, every write followed by a flush of its device is on the device;
any subset of the later (unflushed) writes may be, in any order, and each
of those may be torn -- only some of the 512-byte sectors of each 4 KiB
block written.  Overlapping writes that both survive keep their issue order.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:               # the crash-state tests pass a random.Random
    import random

SECTOR = 512
TEAR_UNIT = 4096                 # a write is torn per 4 KiB block, sector by sector

WRITE, ZERO, FLUSH, MARK = "write", "zero", "flush", "mark"


class Entry(NamedTuple):
    """One log entry: *kind* on *device* at byte *offset*; *data* for a
    write, *length* for a write or a zeroed range, *label* and *payload* for
    a mark (whose device is '')."""
    kind: str
    device: str
    offset: int = 0
    length: int = 0
    data: bytes = b""
    label: str = ""
    payload: object = None


class WriteLog:
    """The entries issued so far, in order (:attr:`entries`)."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []

    def __len__(self) -> int:
        return len(self.entries)

    def write(self, device: str, offset: int, data: bytes | bytearray | memoryview) -> None:
        """*data* was written at *offset* of *device*."""
        raw = bytes(data)
        self.entries.append(Entry(WRITE, device, offset, len(raw), raw))

    def zero(self, device: str, offset: int, length: int) -> None:
        """``[offset, offset+length)`` of *device* was discarded or zeroed: it
        reads as zeros once the entry is on the device."""
        if length > 0:
            self.entries.append(Entry(ZERO, device, offset, length))

    def flush(self, device: str) -> None:
        """*device* was flushed: every earlier write to it is durable."""
        self.entries.append(Entry(FLUSH, device))

    def mark(self, label: str, payload: object = None) -> int:
        """Put a mark in the log; return its index."""
        self.entries.append(Entry(MARK, "", label=label, payload=payload))
        return len(self.entries) - 1

    def marks(self, label: str | None = None) -> list[tuple[int, Entry]]:
        """``(index, entry)`` of the marks (with *label*, if given)."""
        return [(i, e) for i, e in enumerate(self.entries)
                if e.kind == MARK and (label is None or e.label == label)]


# -- attaching a log to files ------------------------------------------------------------
_ATTACHED: dict[str, tuple[WriteLog, str]] = {}


def attach(path: str | os.PathLike[str], log: WriteLog, device: str) -> None:
    """Log the writes and flushes of the file *path*, as *device*, from the
    next time it is opened."""
    _ATTACHED[os.path.realpath(path)] = (log, device)


def detach(path: str | os.PathLike[str]) -> None:
    """Stop logging *path* (for files opened from now on)."""
    _ATTACHED.pop(os.path.realpath(path), None)


def log_for(path: str | os.PathLike[str]) -> tuple[WriteLog, str] | None:
    """The log and device name attached to *path*, if any (one dict lookup
    when nothing is attached)."""
    if not _ATTACHED:
        return None
    return _ATTACHED.get(os.path.realpath(path))


# -- crash states --------------------------------------------------------------------------
class CrashState(NamedTuple):
    """The devices after a crash: ``images[device]``; *cut* entries of the
    log were issued; *applied* lists the unflushed entries that made it
    (index, and the device's 512-byte sectors kept when torn, else None); *label*
    names the way they were chosen."""
    cut: int
    label: str
    images: dict[str, bytearray]
    applied: list[tuple[int, tuple[int, ...] | None]]


def _apply(image: bytearray, e: Entry, sectors: tuple[int, ...] | None = None) -> None:
    """Put entry *e* (a write or a zeroing) on *image*; only its parts in
    the given device sectors (512-byte sector numbers) if *sectors*."""
    end = e.offset + e.length
    if end > len(image):
        image.extend(bytes(end - len(image)))
    if sectors is None:
        if e.kind == WRITE:
            image[e.offset:end] = e.data
        else:
            image[e.offset:end] = bytes(e.length)
        return
    for s in sectors:
        lo = max(s * SECTOR, e.offset)
        hi = min((s + 1) * SECTOR, end)
        if e.kind == WRITE:
            image[lo:hi] = e.data[lo - e.offset:hi - e.offset]
        else:
            image[lo:hi] = bytes(hi - lo)


def torn_sectors(e: Entry, rng: random.Random) -> tuple[int, ...]:
    """A torn version of *e*: for each (aligned) 4 KiB block of the device it
    covers, a random subset of the 512-byte device sectors it touches
    there.  A sector is the unit a device writes whole (the page cache
    writes back whole pages, the disk whole sectors)."""
    first = e.offset // SECTOR
    last = (e.offset + e.length - 1) // SECTOR
    per = TEAR_UNIT // SECTOR
    kept: list[int] = []
    unit = first - first % per
    while unit <= last:
        touched = range(max(unit, first), min(unit + per, last + 1))
        keep = rng.randrange(len(touched) + 1)
        kept.extend(sorted(rng.sample(touched, keep)))
        unit += per
    return tuple(kept)


class Replayer:
    """Crash states of the devices whose contents before the log are
    *base* (device name -> bytes) and whose writes are *log*."""

    def __init__(self, log: WriteLog, base: dict[str, bytes]):
        self.log = log
        self.base = base

    def states(self, rng: random.Random, *, random_per_cut: int = 1,
               cuts: set[int] | None = None) -> Iterator[CrashState]:
        """Crash states after each prefix of the log (the cuts in *cuts*,
        default all): only the durable writes ("durable"), all unflushed
        writes in order ("all"), each unflushed write alone ("only N", a
        later write kept without the earlier ones), the unflushed writes but
        the last torn ("torn last"), and *random_per_cut* random choices
        (each unflushed write dropped, kept or torn).  States equal to one
        already given are skipped."""
        entries = self.log.entries
        durable = {d: bytearray(b) for d, b in self.base.items()}
        pending: dict[str, list[int]] = {d: [] for d in self.base}
        version = 0
        seen: set[tuple[object, ...]] = set()
        for cut in range(len(entries) + 1):
            if cut:
                e = entries[cut - 1]
                if e.kind == FLUSH:
                    for i in pending.get(e.device, ()):
                        _apply(durable[e.device], entries[i])
                    if pending.get(e.device):
                        version += 1
                    pending[e.device] = []
                elif e.kind in (WRITE, ZERO):
                    pending.setdefault(e.device, []).append(cut - 1)
                    durable.setdefault(e.device, bytearray())
            if cuts is not None and cut not in cuts:
                continue
            unflushed = sorted(i for lst in pending.values() for i in lst)
            choices: list[tuple[str, list[tuple[int, tuple[int, ...] | None]]]] = [
                ("durable", []), ("all", [(i, None) for i in unflushed])]
            if unflushed:
                choices.append(("torn last", [(i, None) for i in unflushed[:-1]]
                                + [(unflushed[-1], torn_sectors(entries[unflushed[-1]], rng))]))
                for i in unflushed[-3:]:
                    choices.append((f"only {i}", [(i, None)]))
                for _n in range(random_per_cut):
                    pick: list[tuple[int, tuple[int, ...] | None]] = []
                    for i in unflushed:
                        r = rng.randrange(3)
                        if r == 1:
                            pick.append((i, None))
                        elif r == 2:
                            pick.append((i, torn_sectors(entries[i], rng)))
                    choices.append(("random", pick))
            for label, applied in choices:
                key = (version, tuple(applied))
                if key in seen:
                    continue
                seen.add(key)
                images = {d: bytearray(b) for d, b in durable.items()}
                for i, sectors in applied:
                    _apply(images[entries[i].device], entries[i], sectors)
                yield CrashState(cut, label, images, applied)
