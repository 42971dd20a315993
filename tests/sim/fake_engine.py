"""An in-memory stand-in for ThinMetadata with the same API and the
kernel's sharing semantics, for unit tests of the simulator's I/O logic that
must not depend on the on-disk engine (and to model corner cases cheaply:
tiny metadata, failures).  Committed state survives close/open within one
process (keyed by path).  It satisfies :class:`dmthin.sim.engine.MetadataEngine`
and is passed to the simulator as ``engine=FakeMetadata``."""
from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from dmthin.errors import Busy, DeviceExists, DeviceNotFound, InvalidArgument, NoSpace

#: committed state per metadata path
_STORE: dict[str, _State] = {}


@dataclass
class DeviceDetails:
    mapped_blocks: int
    transaction_id: int
    creation_time: int
    snapshotted_time: int


@dataclass
class _State:
    bs: int
    nr_data: int
    nr_meta: int
    time: int = 0
    tid: int = 0
    held: int = 0
    needs_check: bool = False
    #: dev_id -> {vblock: (data block, time)}
    devs: dict[int, dict[int, tuple[int, int]]] = field(default_factory=dict)
    #: dev_id -> [transaction id, creation time, snapshotted time]
    details: dict[int, list[int]] = field(default_factory=dict)
    counts: list[int] = field(default_factory=list)
    cursor: int = 0


class FakeMetadata:
    def __init__(self, path: str | os.PathLike[str], state: _State):
        self.path = os.fspath(path)
        self._s = copy.deepcopy(state)
        self.fail_after: int | None = None    # raise NoSpace after this many mutations

    @classmethod
    def format(cls, path: str | os.PathLike[str], data_block_sectors: int = 128,
               nr_data_blocks: int = 0, cache_blocks: int = 0) -> FakeMetadata:
        nr_meta = min(os.path.getsize(path) // 4096, 255 * 16320)
        state = _State(bs=data_block_sectors, nr_data=nr_data_blocks, nr_meta=nr_meta,
                       counts=[0] * nr_data_blocks)
        _STORE[os.fspath(path)] = copy.deepcopy(state)
        return cls(path, state)

    @classmethod
    def open(cls, path: str | os.PathLike[str], read_only: bool = False,
             cache_blocks: int = 0) -> FakeMetadata:
        return cls(path, _STORE[os.fspath(path)])

    # -- txn
    def commit(self) -> None:
        _STORE[self.path] = copy.deepcopy(self._s)

    def abort(self) -> None:
        self._s = copy.deepcopy(_STORE[self.path])

    def close(self) -> None:
        pass

    def _mut(self) -> None:
        if self.fail_after is not None:
            self.fail_after -= 1
            if self.fail_after < 0:
                raise NoSpace("fake: out of metadata space")

    @property
    def data_block_sectors(self) -> int:
        return self._s.bs

    @property
    def nr_data_blocks(self) -> int:
        return self._s.nr_data

    @property
    def nr_metadata_blocks(self) -> int:
        return self._s.nr_meta

    @property
    def time(self) -> int:
        return self._s.time

    @property
    def transaction_id(self) -> int:
        return self._s.tid

    @property
    def held_root(self) -> int:
        return self._s.held

    @property
    def needs_check(self) -> bool:
        return self._s.needs_check

    def has_device(self, dev: int) -> bool:
        return dev in self._s.devs

    def device_ids(self) -> list[int]:
        return sorted(self._s.devs)

    def details(self, dev: int) -> DeviceDetails:
        if dev not in self._s.details:
            raise DeviceNotFound(str(dev))
        tid, ctime, stime = self._s.details[dev]
        return DeviceDetails(len(self._s.devs[dev]), tid, ctime, stime)

    def snapshotted_time(self, dev: int) -> int:
        return self.details(dev).snapshotted_time

    def create_thin(self, dev: int) -> None:
        if dev in self._s.devs:
            raise DeviceExists(str(dev))
        self._mut()
        self._s.devs[dev] = {}
        self._s.details[dev] = [self._s.tid, self._s.time, self._s.time]

    def create_snap(self, dev: int, origin: int) -> None:
        if dev in self._s.devs:
            raise DeviceExists(str(dev))
        if origin not in self._s.devs:
            raise DeviceNotFound(str(origin))
        self._mut()
        self._s.time += 1
        t = self._s.time
        self._s.devs[dev] = dict(self._s.devs[origin])
        for b, _t in self._s.devs[dev].values():
            self._s.counts[b] += 1
        self._s.details[dev] = [self._s.tid, t, t]
        self._s.details[origin][2] = t

    def delete(self, dev: int) -> None:
        if dev not in self._s.devs:
            raise DeviceNotFound(str(dev))
        self._mut()
        for b, _t in self._s.devs.pop(dev).values():
            self._s.counts[b] -= 1
        del self._s.details[dev]

    def set_transaction_id(self, old: int, new: int) -> None:
        if old != self._s.tid:
            raise InvalidArgument("mismatched transaction id")
        self._s.tid = new

    def set_needs_check(self) -> None:
        self._s.needs_check = True

    def reserve_metadata_snap(self) -> int:
        if self._s.held:
            raise Busy("held")
        self._s.held = 7
        return self._s.held

    def release_metadata_snap(self) -> None:
        if not self._s.held:
            raise InvalidArgument("none")
        self._s.held = 0

    def lookup(self, dev: int, v: int) -> tuple[int, int, bool] | None:
        m = self._s.devs[dev].get(v)
        if m is None:
            return None
        return (m[0], m[1], self._s.details[dev][2] > m[1])

    def insert(self, dev: int, v: int, b: int) -> None:
        self._mut()
        old = self._s.devs[dev].get(v)
        self._s.devs[dev][v] = (b, self._s.time)
        if old is not None and old[0] != b:
            self._s.counts[old[0]] -= 1

    def remove(self, dev: int, v: int) -> bool:
        old = self._s.devs[dev].pop(v, None)
        if old is None:
            return False
        self._s.counts[old[0]] -= 1
        return True

    def remove_range(self, dev: int, begin: int, end: int) -> int:
        self._mut()
        keys = [v for v in self._s.devs[dev] if begin <= v < end]
        for v in keys:
            self.remove(dev, v)
        return len(keys)

    def mappings(self, dev: int, begin: int = 0, end: int | None = None
                 ) -> Iterator[tuple[int, int, int]]:
        for v in sorted(self._s.devs[dev]):
            if v >= begin and (end is None or v < end):
                b, t = self._s.devs[dev][v]
                yield v, b, t

    def highest_mapped_block(self, dev: int) -> int | None:
        return max(self._s.devs[dev], default=None)

    def _committed_counts(self) -> list[int]:
        return _STORE[self.path].counts

    def alloc_data_block(self) -> int:
        n = self._s.nr_data
        cc = self._committed_counts()
        for i in range(n):
            b = (self._s.cursor + i) % n
            if self._s.counts[b] == 0 and (b >= len(cc) or cc[b] == 0):
                self._s.counts[b] = 1
                self._s.cursor = b + 1
                return b
        raise NoSpace("fake: data full")

    def data_block_count(self, b: int) -> int:
        return self._s.counts[b]

    def nr_free_data_blocks(self) -> int:
        cc = self._committed_counts()
        return sum(1 for i, c in enumerate(self._s.counts)
                   if c == 0 and (i >= len(cc) or cc[i] == 0))

    def nr_free_metadata_blocks(self) -> int:
        used = 20 + sum(len(m) for m in self._s.devs.values()) // 100
        return max(0, self._s.nr_meta - used)

    def metadata_file_blocks(self) -> int:
        return self._s.nr_meta

    def resize_metadata(self, nr_blocks: int | None = None) -> int:
        if nr_blocks is not None and nr_blocks < self._s.nr_meta:
            raise InvalidArgument("fake: metadata too small")
        self._s.nr_meta = max(self._s.nr_meta, nr_blocks or 0)
        return self._s.nr_meta

    def resize_data(self, n: int) -> None:
        self._s.counts.extend([0] * (n - self._s.nr_data))
        self._s.nr_data = n
