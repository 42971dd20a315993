"""The simulator's core pieces on their own: the engine protocol, the write
queue, a SimCore driven without a pool backend, typed messages."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from dmthin.backend import PoolBackend, ThinBackend
from dmthin.errors import InvalidArgument, NoSpace
from dmthin.sim.core import Mode, SimCore
from dmthin.sim.datafile import Chunk, DataFile
from dmthin.sim.engine import MetadataEngine, MetadataEngineFactory
from dmthin.sim.writes import WRITE_RUN_MAX, WriteQueue
from dmthin.target import Message
from dmthin.thin.metadata import ThinMetadata
from fake_engine import FakeMetadata
from simhelpers import BS, sim_pool

ENGINES: list[MetadataEngineFactory] = [ThinMetadata, FakeMetadata]


@pytest.mark.parametrize("engine", ENGINES, ids=lambda e: e.__name__)
def test_engines_satisfy_the_protocol(tmp_path: Path, engine: MetadataEngineFactory) -> None:
    path = tmp_path / "metadata"
    path.write_bytes(b"")
    os.truncate(path, 4 << 20)
    md = engine.format(path, data_block_sectors=128, nr_data_blocks=8)
    try:
        assert isinstance(md, MetadataEngine)
        md.create_thin(1)
        md.insert(1, 5, md.alloc_data_block())
        md.commit()
        assert md.lookup(1, 5) == (0, 0, False)
        assert list(md.mappings(1)) == [(5, 0, 0)]
        assert md.nr_free_data_blocks() == 7 and md.data_block_sectors == 128
    finally:
        md.close()


class RecordingFile(DataFile):
    def __init__(self, path: Path) -> None:
        super().__init__(path, BS)
        self.calls: list[tuple[int, int]] = []

    def write(self, block: int, offset: int, parts: Sequence[Chunk]) -> None:
        self.calls.append((block * BS + offset, sum(len(p) for p in parts)))
        super().write(block, offset, parts)


def test_write_queue_coalesces_adjacent_runs(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(bytes(32 << 20))
    data = RecordingFile(path)
    q = WriteQueue(data)
    q.queue(0, b"a" * 100)
    q.queue(100, b"b" * 50)              # continues the run
    q.queue(4096, b"c")                  # a gap: the first run is written
    assert data.calls == [(0, 150)]
    q.flush()
    assert data.calls[-1] == (4096, 1)
    big = bytes(1 << 20)
    for i in range(WRITE_RUN_MAX // len(big) + 1):
        q.queue((i + 1) << 20, big)      # a run stops growing at WRITE_RUN_MAX
    q.flush()
    assert data.calls[2:] == [(1 << 20, WRITE_RUN_MAX), ((1 << 20) + WRITE_RUN_MAX, 1 << 20)]
    q.queue(0, b"dropped")
    q.drop()
    q.flush()
    assert len(data.calls) == 4
    data.close()
    with open(path, "rb") as f:
        assert f.read(151) == b"a" * 100 + b"b" * 50 + b"\0"


def make_core(tmp_path: Path, nr_blocks: int, features: Sequence[str] = ()) -> SimCore:
    for name, size in (("metadata", 4 << 20), ("data", nr_blocks * BS)):
        (tmp_path / name).write_bytes(b"")
        os.truncate(tmp_path / name, size)
    md = FakeMetadata.format(tmp_path / "metadata", data_block_sectors=BS // 512,
                             nr_data_blocks=nr_blocks)
    return SimCore("core-test", md, DataFile(tmp_path / "data", BS), features,
                   low_water_blocks=0, threshold=0)


def test_core_provisions_until_out_of_data_space(tmp_path: Path) -> None:
    core = make_core(tmp_path, 2, ["error_if_no_space"])
    with core.lock:
        core.metadata.create_thin(1)
        for v in range(2):
            block = core.provision("test write")
            assert block is not None
            core.queue_write(block, 0, bytes([v + 1]) * BS)
            core.insert_mapping(1, v, block)
        core.flush_thin(1)                           # commits
        assert core.metadata.nr_free_data_blocks() == 0
        with pytest.raises(NoSpace):
            core.provision("test write")
        assert core.mode == Mode.OUT_OF_DATA_SPACE
        core.flush_thin(1)                           # block 0 is mapped: no refusal
        core.close()
    # free was 0 <= the low water mark of 0 before the failed allocation
    assert core.events == [(1, "low_water_mark"), (2, "mode:out_of_data_space")]


def test_messages_arrive_parsed_or_as_text(tmp_path: Path) -> None:
    pool, impl = sim_pool(tmp_path / "p")
    with pool:
        impl.message(Message("create_thin", (3,)))
        impl.message("create_snap 4 3")
        assert pool.thin_ids() == [3, 4]
        for bad in (Message("trim", (1,)), Message("delete", ())):
            with pytest.raises(InvalidArgument):       # a hand-built message the kernel refuses
                impl.message(bad)
        assert pool.status().mode.value == "rw"


def test_backend_satisfies_the_backend_protocols(tmp_path: Path) -> None:
    pool, impl = sim_pool(tmp_path / "p")
    with pool:
        backend: PoolBackend = impl              # checked by mypy, like the engines above
        pool.create_thin(1, "1M")
        thin: ThinBackend = backend.activate_thin(1, 1 << 20)
        assert thin.path is None and not thin.in_use()
        thin.deactivate()
