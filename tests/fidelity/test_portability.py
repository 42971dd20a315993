"""Pools move between backends (docs/fidelity.md): a pool written by the
simulator opens on the kernel and reads back byte for byte, the kernel keeps
writing into it, and the simulator reads that back; the same the other way
round, and for metadata written by ``dmthin restore`` over a data file laid
out to match.  Every device is checked against an independent byte model;
thin_check 0.9.0 checks the metadata after each backend.  Runs in the qemu
guest (tools/vmrun) as root."""
from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from dmthin import Pool
from dmthin.pooldir import PoolDir
from helpers import run_dmthin

pytestmark = pytest.mark.real_dm

BS = 64 << 10
SIZE = 2 << 20          # 32 blocks per device


class Model:
    """The bytes every thin device should hold."""

    def __init__(self):
        self.devs: dict[int, bytearray] = {}

    def create(self, dev: int, size: int = SIZE) -> None:
        self.devs[dev] = bytearray(size)

    def snap(self, dev: int, origin: int) -> None:
        self.devs[dev] = bytearray(self.devs[origin])

    def write(self, pool: Pool, dev: int, offset: int, data: bytes) -> None:
        pool.thin(dev).write(offset, data)
        self.devs[dev][offset:offset + len(data)] = data

    def discard(self, pool: Pool, dev: int, offset: int, length: int) -> None:
        pool.thin(dev).discard(offset, length)
        first, end = -(-offset // BS), (offset + length) // BS
        if end > first:
            self.devs[dev][first * BS:end * BS] = bytes((end - first) * BS)

    def check(self, pool: Pool) -> None:
        assert sorted(pool.thin_ids()) == sorted(self.devs)
        for dev, want in self.devs.items():
            got = pool.thin(dev).read(0, len(want))
            if got != want:
                bad = [b for b in range(len(want) // BS)
                       if got[b * BS:(b + 1) * BS] != want[b * BS:(b + 1) * BS]]
                pytest.fail(f"{pool.backend}: thin {dev} differs in blocks {bad}")


def workload(pool: Pool, model: Model, rng: random.Random, first_id: int) -> None:
    """Writes (whole, partial, unaligned), a snapshot, COW and a discard."""
    a, b = first_id, first_id + 1
    if a not in model.devs:
        pool.create_thin(a, SIZE)
        model.create(a)
    for _ in range(40):
        off = rng.randrange(SIZE - 1)
        length = min(rng.choice([BS, 4096, 777, 2 * BS + 3]), SIZE - off)
        model.write(pool, a, off, rng.randbytes(length))
    pool.create_snap(b, a)
    model.snap(b, a)
    for _ in range(20):
        off = rng.randrange(SIZE - 1)
        length = min(rng.choice([BS, 512, 1000]), SIZE - off)
        model.write(pool, rng.choice([a, b]), off, rng.randbytes(length))
    model.discard(pool, b, 3 * BS + 100, 4 * BS)
    pool.thin(b).flush()


def thin_check(pooldir: Path) -> None:
    """thin_check 0.9.0 on the closed pool's metadata (a read-only loop
    device: the tool opens with O_DIRECT, which tmpfs refuses)."""
    from dmthin.dm import loop
    with loop.attach(pooldir / "metadata", read_only=True) as dev:
        p = subprocess.run(["/usr/sbin/thin_check", dev.path], capture_output=True, text=True)
        dev.close()
        loop.detach(dev.path)
    assert p.returncode == 0, p.stderr


def round_trip(pooldir: Path, model: Model, first: str, second: str, seed: int) -> None:
    rng = random.Random(seed)
    with Pool.open(pooldir, backend=second) as pool:
        model.check(pool)
        workload(pool, model, rng, 11)
        model.check(pool)
    thin_check(pooldir)
    with Pool.open(pooldir, backend=first) as pool:
        model.check(pool)
        model.write(pool, 11, 5 * BS + 3, rng.randbytes(BS))
        pool.delete(1)
        del model.devs[1]
        model.check(pool)
    thin_check(pooldir)


@pytest.mark.parametrize(("first", "second"), [("sim", "kernel"), ("kernel", "sim")])
def test_pool_moves_between_backends(tmp_path, first, second):
    seed = 20240 + (first == "kernel")
    print(f"seed {seed}")
    rng = random.Random(seed)
    pooldir = tmp_path / "pool"
    model = Model()
    with Pool.create(pooldir, data_size="16M", metadata_size="4M", backend=first) as pool:
        workload(pool, model, rng, 1)
        model.check(pool)
        status = pool.status()
    thin_check(pooldir)
    round_trip(pooldir, model, first, second, seed + 100)
    assert status.used_data_blocks > 0


def test_restored_metadata_opens_on_both(tmp_path):
    """Metadata from ``dmthin restore`` plus a data file laid out to match:
    shared blocks, ranges, odd times, a transaction id."""
    pooldir = tmp_path / "pool"
    nr_blocks = 128
    with Pool.create(pooldir, data_size=nr_blocks * BS, metadata_size="4M", backend="sim"):
        pass
    rng = random.Random(7)
    # dev 1: vblocks 0-9 -> data 20-29 (time 0), vblock 15 -> data 3 (time 1)
    # dev 2: shares data 20-24 at vblocks 0-4 (time 0), vblock 31 -> data 40 (time 2)
    maps = {1: [(v, 20 + v, 0) for v in range(10)] + [(15, 3, 1)],
            2: [(v, 20 + v, 0) for v in range(5)] + [(31, 40, 2)]}
    xml = [f'<superblock uuid="" time="2" transaction="7" flags="0" version="2" '
           f'data_block_size="128" nr_data_blocks="{nr_blocks}">']
    for dev, rows in maps.items():
        snap_time = 1 if dev == 1 else 2
        xml.append(f'  <device dev_id="{dev}" mapped_blocks="{len(rows)}" transaction="0" '
                   f'creation_time="0" snap_time="{snap_time}">')
        xml += [f'    <single_mapping origin_block="{v}" data_block="{d}" time="{t}"/>'
                for v, d, t in rows]
        xml.append("  </device>")
    xml.append("</superblock>")
    (tmp_path / "md.xml").write_text("\n".join(xml) + "\n")
    p = run_dmthin("restore", "-q", "-i", tmp_path / "md.xml", "-o", pooldir / "metadata",
                   text=True)
    assert p.returncode == 0, p.stderr
    blocks = {d: rng.randbytes(BS) for rows in maps.values() for _v, d, _t in rows}
    with open(pooldir / "data", "r+b") as f:
        for d, data in blocks.items():
            f.seek(d * BS)
            f.write(data)
    pd = PoolDir(pooldir)
    config = pd.load_config()
    config.thins = {1: SIZE, 2: SIZE}
    pd.save_config(config)
    model = Model()
    for dev, rows in maps.items():
        model.create(dev)
        for v, d, _t in rows:
            model.devs[dev][v * BS:(v + 1) * BS] = blocks[d]
    for backend in ("kernel", "sim"):
        with Pool.open(pooldir, backend=backend) as pool:
            model.check(pool)
            assert pool.status().transaction_id == 7
    round_trip(pooldir, model, "sim", "kernel", 77)
