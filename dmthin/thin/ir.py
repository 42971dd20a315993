"""The metadata IR shared by dump, restore and the text formats.

As in thin-provisioning-tools (``src/thin/ir.rs``): a producer (the metadata
walker in :mod:`dmthin.thin.dump`, or the XML reader in
:mod:`dmthin.thin.xml`) drives a :class:`MetadataVisitor` with events::

    superblock_b (def_shared_b map* def_shared_e)*
                 (device_b (map | ref_shared)* device_e)*
    superblock_e eof

Consumers are the XML and human-readable writers and the restorer, so any
producer can feed any consumer and dump/restore round-trips are testable
without a disk.  ``def``/``ref`` (shared subtrees) only come from 1.x XML.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol


@dataclass(frozen=True)
class Superblock:
    """The ``<superblock>`` element.  ``flags``/``version``/``metadata_snap``
    are optional in XML (None when absent)."""
    uuid: str
    time: int
    transaction: int
    flags: int | None
    version: int | None
    data_block_size: int          # sectors
    nr_data_blocks: int
    metadata_snap: int | None = None


@dataclass(frozen=True)
class Device:
    """The ``<device>`` element: one thin device's details."""
    dev_id: int
    mapped_blocks: int
    transaction: int
    creation_time: int
    snap_time: int


class Map(NamedTuple):
    """A run of ``len`` consecutive virtual blocks mapped to consecutive data
    blocks with one time (``len == 1``: a single mapping)."""
    thin_begin: int
    data_begin: int
    time: int
    len: int


class MetadataVisitor(Protocol):
    """Receiver of IR events (see the module docstring for the order)."""

    def superblock_b(self, sb: Superblock) -> None: ...
    def superblock_e(self) -> None: ...
    def def_shared_b(self, name: str) -> None: ...
    def def_shared_e(self) -> None: ...
    def device_b(self, dev: Device) -> None: ...
    def device_e(self) -> None: ...
    def map(self, m: Map) -> None: ...
    def ref_shared(self, name: str) -> None: ...
    def eof(self) -> None: ...


class RunBuilder:
    """Groups ``(vblock, data_block, time)`` mappings, given in vblock order,
    into :class:`Map` runs exactly as ``thin_dump`` does: a run continues while
    both blocks advance by one and the time is equal.  Runs span btree leaves.
    """

    __slots__ = ("emit", "thin", "data", "time", "len")

    def __init__(self, emit):
        self.emit = emit            # called with each finished Map
        self.len = 0
        self.thin = self.data = self.time = 0

    def add_leaf(self, keys, values) -> None:
        """Add one leaf: ``keys`` are vblocks, ``values`` packed block_time
        (``data << 24 | time``)."""
        emit = self.emit
        n = self.len
        t0, d0, tm = self.thin, self.data, self.time
        for k, v in zip(keys, values):
            d = v >> 24
            t = v & 0xFFFFFF
            if n and k == t0 + n and d == d0 + n and t == tm:
                n += 1
                continue
            if n:
                emit(Map(t0, d0, tm, n))
            t0, d0, tm, n = k, d, t, 1
        self.thin, self.data, self.time, self.len = t0, d0, tm, n

    def finish(self) -> None:
        """Emit the pending run, if any."""
        if self.len:
            self.emit(Map(self.thin, self.data, self.time, self.len))
            self.len = 0
