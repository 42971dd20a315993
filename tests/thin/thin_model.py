"""An independent in-memory model of thin metadata semantics, for tests.

It knows nothing of btrees or space maps: devices are dicts of
vblock -> (data_block, time); data block reference counts are derived from
the devices' mappings as the kernel's sharing rules imply them after a
commit (see ``data_counts``)."""
from __future__ import annotations


class ModelDevice:
    def __init__(self, mappings=None, transaction_id=0, creation_time=0, snapshotted_time=0):
        self.mappings: dict[int, tuple[int, int]] = dict(mappings or {})
        self.transaction_id = transaction_id
        self.creation_time = creation_time
        self.snapshotted_time = snapshotted_time


class ThinModel:
    def __init__(self, nr_data_blocks: int):
        self.nr_data_blocks = nr_data_blocks
        self.devices: dict[int, ModelDevice] = {}
        self.time = 0
        self.trans_id = 0

    def create_thin(self, dev_id):
        assert dev_id not in self.devices
        self.devices[dev_id] = ModelDevice({}, self.trans_id, self.time, self.time)

    def create_snap(self, dev_id, origin):
        assert dev_id not in self.devices
        self.time += 1
        o = self.devices[origin]
        o.snapshotted_time = self.time
        self.devices[dev_id] = ModelDevice(o.mappings, self.trans_id, self.time, self.time)

    def delete(self, dev_id):
        del self.devices[dev_id]

    def insert(self, dev_id, vblock, data_block):
        self.devices[dev_id].mappings[vblock] = (data_block, self.time)

    def remove(self, dev_id, vblock):
        return self.devices[dev_id].mappings.pop(vblock, None) is not None

    def used_data_blocks(self) -> set[int]:
        return {b for d in self.devices.values() for b, _t in d.mappings.values()}
