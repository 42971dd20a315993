"""An in-memory stand-in for ThinMetadata with the same API and the
kernel's sharing semantics, for unit tests of the simulator's I/O logic that
must not depend on the on-disk engine (and to model corner cases cheaply:
tiny metadata, failures).  Committed state survives close/open within one
process (keyed by path)."""
from __future__ import annotations

import copy
from dataclasses import dataclass

from dmthin.errors import DeviceExists, DeviceNotFound, InvalidArgument, NoSpace, Busy

_STORE: dict[str, dict] = {}


@dataclass
class DeviceDetails:
    mapped_blocks: int
    transaction_id: int
    creation_time: int
    snapshotted_time: int


class FakeMetadata:
    def __init__(self, path, state):
        self.path = str(path)
        self._committed = state
        self._s = copy.deepcopy(state)
        self.fail_after = None        # raise NoSpace after this many mutations

    @classmethod
    def format(cls, path, data_block_size=128, nr_data_blocks=0, cache_blocks=0):
        import os
        nr_meta = min(os.path.getsize(path) // 4096, 255 * 16320)
        state = {"bs": data_block_size, "nr_data": nr_data_blocks, "nr_meta": nr_meta,
                 "time": 0, "tid": 0, "held": 0, "needs_check": False, "devs": {},
                 "details": {}, "counts": [0] * nr_data_blocks, "cursor": 0}
        _STORE[str(path)] = copy.deepcopy(state)
        return cls(path, state)

    @classmethod
    def open(cls, path, read_only=False, cache_blocks=0):
        return cls(path, copy.deepcopy(_STORE[str(path)]))

    # -- txn
    def commit(self):
        _STORE[self.path] = copy.deepcopy(self._s)
        self._freed = set()

    def abort(self):
        self._s = copy.deepcopy(_STORE[self.path])

    def close(self):
        pass

    def _mut(self):
        if self.fail_after is not None:
            self.fail_after -= 1
            if self.fail_after < 0:
                raise NoSpace("fake: out of metadata space")

    data_block_size = property(lambda self: self._s["bs"])
    nr_data_blocks = property(lambda self: self._s["nr_data"])
    nr_metadata_blocks = property(lambda self: self._s["nr_meta"])
    time = property(lambda self: self._s["time"])
    transaction_id = property(lambda self: self._s["tid"])
    held_root = property(lambda self: self._s["held"])
    needs_check = property(lambda self: self._s["needs_check"])

    def has_device(self, dev):
        return dev in self._s["devs"]

    def device_ids(self):
        return sorted(self._s["devs"])

    def details(self, dev):
        if dev not in self._s["details"]:
            raise DeviceNotFound(str(dev))
        d = self._s["details"][dev]
        return DeviceDetails(len(self._s["devs"][dev]), *d)

    def create_thin(self, dev):
        if dev in self._s["devs"]:
            raise DeviceExists(str(dev))
        self._mut()
        self._s["devs"][dev] = {}
        self._s["details"][dev] = [self._s["tid"], self._s["time"], self._s["time"]]

    def create_snap(self, dev, origin):
        if dev in self._s["devs"]:
            raise DeviceExists(str(dev))
        if origin not in self._s["devs"]:
            raise DeviceNotFound(str(origin))
        self._mut()
        self._s["time"] += 1
        t = self._s["time"]
        self._s["devs"][dev] = dict(self._s["devs"][origin])
        for b, _t in self._s["devs"][dev].values():
            self._s["counts"][b] += 1
        self._s["details"][dev] = [self._s["tid"], t, t]
        self._s["details"][origin][2] = t

    def delete(self, dev):
        if dev not in self._s["devs"]:
            raise DeviceNotFound(str(dev))
        self._mut()
        for b, _t in self._s["devs"].pop(dev).values():
            self._s["counts"][b] -= 1
        del self._s["details"][dev]

    def set_transaction_id(self, old, new):
        if old != self._s["tid"]:
            raise InvalidArgument("mismatched transaction id")
        self._s["tid"] = new

    def reserve_metadata_snap(self):
        if self._s["held"]:
            raise Busy("held")
        self._s["held"] = 7

    def release_metadata_snap(self):
        if not self._s["held"]:
            raise InvalidArgument("none")
        self._s["held"] = 0

    def lookup(self, dev, v):
        m = self._s["devs"][dev].get(v)
        if m is None:
            return None
        return (m[0], m[1], self._s["details"][dev][2] > m[1])

    def insert(self, dev, v, b):
        self._mut()
        old = self._s["devs"][dev].get(v)
        self._s["devs"][dev][v] = (b, self._s["time"])
        if old is not None and old[0] != b:
            self._s["counts"][old[0]] -= 1

    def remove(self, dev, v):
        old = self._s["devs"][dev].pop(v, None)
        if old is None:
            return False
        self._s["counts"][old[0]] -= 1
        return True

    def remove_range(self, dev, begin, end):
        self._mut()
        keys = [v for v in self._s["devs"][dev] if begin <= v < end]
        for v in keys:
            self.remove(dev, v)
        return len(keys)

    def mappings(self, dev, begin=0, end=None):
        for v in sorted(self._s["devs"][dev]):
            if v >= begin and (end is None or v < end):
                b, t = self._s["devs"][dev][v]
                yield v, b, t

    def highest_mapped_block(self, dev):
        return max(self._s["devs"][dev], default=None)

    def _committed_counts(self):
        return _STORE[self.path]["counts"]

    def alloc_data_block(self):
        n = self._s["nr_data"]
        cc = self._committed_counts()
        for i in range(n):
            b = (self._s["cursor"] + i) % n
            if self._s["counts"][b] == 0 and (b >= len(cc) or cc[b] == 0):
                self._s["counts"][b] = 1
                self._s["cursor"] = b + 1
                return b
        raise NoSpace("fake: data full")

    def data_block_count(self, b):
        return self._s["counts"][b]

    def nr_free_data_blocks(self):
        cc = self._committed_counts()
        return sum(1 for i, c in enumerate(self._s["counts"])
                   if c == 0 and (i >= len(cc) or cc[i] == 0))

    def nr_free_metadata_blocks(self):
        used = 20 + sum(len(m) for m in self._s["devs"].values()) // 100
        return max(0, self._s["nr_meta"] - used)

    def metadata_file_blocks(self):
        return self._s["nr_meta"]

    def resize_data(self, n):
        self._s["counts"].extend([0] * (n - self._s["nr_data"]))
        self._s["nr_data"] = n

    def set_needs_check(self):
        self._s["needs_check"] = True
