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

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from .format import TIME_BITS, TIME_MASK


class Superblock(NamedTuple):
    """The ``<superblock>`` element.  ``flags``/``version``/``metadata_snap``
    are optional in XML (None when absent)."""
    uuid: str
    time: int
    transaction: int
    flags: int | None
    version: int | None
    data_block_sectors: int       # the XML's data_block_size, in sectors
    nr_data_blocks: int
    metadata_snap: int | None = None


class Device(NamedTuple):
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


_NEXT = 1 << TIME_BITS      # the packed value of the next data block, same time


class RunBuilder:
    """Groups ``(vblock, packed block_time)`` mappings, given in vblock order,
    into runs exactly as ``thin_dump`` does: a run continues while both the
    virtual and the data block advance by one and the time is equal (i.e.
    the packed value advances by exactly ``1 << TIME_BITS``).  Runs span btree
    leaves.

    :meth:`add_leaf` returns the runs completed so far as raw
    ``(thin_begin, packed_first_value, length)`` tuples (fast path for
    writers with ``map_runs``); :func:`to_map` converts one to a :class:`Map`.
    """

    __slots__ = ("t0", "v0", "nk", "nv")

    def __init__(self) -> None:
        self.t0 = -1                 # -1: no pending run
        self.nk = -1                 # next key that would extend the run: none
        self.v0 = self.nv = 0

    def add_leaf(self, keys: Sequence[int],
                 values: Sequence[int]) -> list[tuple[int, int, int]]:
        out: list[tuple[int, int, int]] = []
        append = out.append
        t0, v0, nk, nv = self.t0, self.v0, self.nk, self.nv
        for k, v in zip(keys, values, strict=True):
            if k == nk and v == nv:
                nk += 1
                nv += _NEXT
            else:
                if t0 >= 0:
                    append((t0, v0, nk - t0))
                t0, v0, nk, nv = k, v, k + 1, v + _NEXT
        self.t0, self.v0, self.nk, self.nv = t0, v0, nk, nv
        return out

    def finish(self) -> list[tuple[int, int, int]]:
        """The pending run, if any, as a list."""
        if self.t0 < 0:
            return []
        run = (self.t0, self.v0, self.nk - self.t0)
        self.t0 = self.nk = -1
        return [run]


def to_map(run: tuple[int, int, int]) -> Map:
    """A raw ``(thin_begin, packed_value, length)`` run as a :class:`Map`."""
    t, v, n = run
    return Map(t, v >> TIME_BITS, v & TIME_MASK, n)
