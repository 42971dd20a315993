"""A tiny in-memory model of a thin pool, for graph-layer development only.

Registered as backend ``"graphfake"`` when DMTHIN_GRAPH_BACKEND=graphfake;
the real tests run on the simulator.  Semantics are the kernel's at the
level the graph layer sees: EEXIST/ENODATA/EINVAL from messages, block
sharing on snapshots, copy-on-write, discards unmapping whole blocks.
State persists in ``graphfake.pickle`` so restarts can be tested.
"""
from __future__ import annotations

import os
import pickle

from dmthin.errors import DeviceExists, DeviceNotFound, InvalidArgument, NoSpace
from dmthin.target import (DiscardMode, NoSpacePolicy, PoolMode, PoolStatus, ThinStatus,
                           parse_message)
from dmthin.units import DataBlocks, MetaBlocks


class FakeThin:
    def __init__(self, pool, dev_id, size):
        self.pool, self.dev_id, self.size, self.path = pool, dev_id, size, None

    @property
    def map(self):
        return self.pool.st["thins"][self.dev_id]

    def read(self, offset, length):
        bs = self.pool.bs
        out = bytearray()
        pos = offset
        while pos < offset + length:
            vb, off = divmod(pos, bs)
            n = min(bs - off, offset + length - pos)
            pb = self.map.get(vb)
            if pb is None:
                out += bytes(n)
            else:
                out += os.pread(self.pool.fd, n, pb * bs + off).ljust(n, b"\0")
            pos += n
        return bytes(out)

    def write(self, offset, data):
        bs, st = self.pool.bs, self.pool.st
        pos = 0
        while pos < len(data):
            vb, off = divmod(offset + pos, bs)
            n = min(bs - off, len(data) - pos)
            pb = self.map.get(vb)
            if pb is None or st["refs"][pb] > 1:
                new = self.pool.alloc()
                old = b"" if pb is None else os.pread(self.pool.fd, bs, pb * bs)
                os.pwrite(self.pool.fd, old.ljust(bs, b"\0"), new * bs)
                if pb is not None:
                    st["refs"][pb] -= 1
                self.map[vb] = pb = new
            os.pwrite(self.pool.fd, data[pos:pos + n], pb * bs + off)
            pos += n
        return len(data)

    def discard(self, offset, length):
        bs = self.pool.bs
        first = (offset + bs - 1) // bs
        for vb in range(first, (offset + length) // bs):
            pb = self.map.pop(vb, None)
            if pb is not None:
                self.pool.st["refs"][pb] -= 1

    def flush(self):
        self.pool.save()

    def status(self):
        m = self.map
        return ThinStatus.from_blocks(len(m), max(m) if m else None, self.pool.sectors)

    def deactivate(self):
        self.pool.active.discard(self.dev_id)

    def in_use(self):
        return self.dev_id in self.pool.busy


class FakePoolBackend:
    name = "graphfake"
    busy: set = set()

    def __init__(self, pooldir, config, st):
        self.pooldir, self.config, self.st = pooldir, config, st
        self.sectors = config.data_block_sectors
        self.bs = self.sectors * 512
        self.fd = os.open(pooldir.data_path, os.O_RDWR)
        self.nr_blocks = os.fstat(self.fd).st_size // self.bs
        self.nr_meta = os.path.getsize(pooldir.metadata_path) // 4096
        st["refs"] += [0] * (self.nr_blocks - len(st["refs"]))
        self.active = set()

    @classmethod
    def create(cls, pooldir, config):
        return cls(pooldir, config, {"tid": 0, "thins": {}, "refs": []})

    @classmethod
    def open(cls, pooldir, config):
        with open(pooldir.path / "graphfake.pickle", "rb") as f:
            return cls(pooldir, config, pickle.load(f))

    def save(self):
        with open(self.pooldir.path / "graphfake.pickle", "wb") as f:
            pickle.dump(self.st, f)

    def alloc(self):
        for i, r in enumerate(self.st["refs"]):
            if r == 0:
                self.st["refs"][i] = 1
                return i
        raise NoSpace("out of data space")

    def message(self, text):
        m = parse_message(text)
        thins = self.st["thins"]
        if m.command == "create_thin":
            if m.args[0] in thins:
                raise DeviceExists()
            thins[m.args[0]] = {}
        elif m.command == "create_snap":
            if m.args[0] in thins:
                raise DeviceExists()
            if m.args[1] not in thins:
                raise DeviceNotFound()
            thins[m.args[0]] = dict(thins[m.args[1]])
            for pb in thins[m.args[0]].values():
                self.st["refs"][pb] += 1
        elif m.command == "delete":
            if m.args[0] not in thins:
                raise DeviceNotFound()
            if m.args[0] in self.busy:
                from dmthin.errors import Busy
                raise Busy()
            for pb in thins.pop(m.args[0]).values():
                self.st["refs"][pb] -= 1
        elif m.command == "set_transaction_id":
            if m.args[0] != self.st["tid"]:
                raise InvalidArgument("mismatch")
            self.st["tid"] = m.args[1]
        self.save()
        return None

    def status(self):
        used = sum(1 for r in self.st["refs"] if r)
        maps = sum(len(t) for t in self.st["thins"].values())
        return PoolStatus(self.st["tid"], MetaBlocks(10 + maps // 100), MetaBlocks(self.nr_meta),
                          DataBlocks(used), DataBlocks(self.nr_blocks), None, PoolMode.RW,
                          DiscardMode.PASSDOWN, NoSpacePolicy.QUEUE, False, 0)

    def table_line(self):
        return "fake"

    def thin_ids(self):
        return list(self.st["thins"])

    def activate_thin(self, dev_id, size):
        if dev_id not in self.st["thins"]:
            raise DeviceNotFound()
        self.active.add(dev_id)
        return FakeThin(self, dev_id, size)

    def suspend_thin(self, dev_id):
        pass

    def resume_thin(self, dev_id):
        pass

    def close(self):
        self.save()
        os.close(self.fd)


def register():
    from dmthin.backend import BACKENDS
    BACKENDS["graphfake"] = "fakepool:FakePoolBackend"
