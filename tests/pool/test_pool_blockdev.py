"""A pool whose data and metadata are block devices (LVM's ``_tdata`` and
``_tmeta`` components, loop devices): every size comes from the device,
never from ``st_size`` (0 for a block device).

Loop devices need root: ``real_dm``, run in the guest.  The files behind
them are checked byte for byte, so a read that wrote would show.
"""
from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmthin import InvalidArgument, Pool, ReadOnly
from dmthin.blockdev import fd_size, path_size
from dmthin.dm import loop

pytestmark = pytest.mark.real_dm

MiB = 1 << 20


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def devices(tmp_path: Path) -> Iterator[tuple[Path, str, str]]:
    """A pool made by dmthin (8 MiB of 128 KiB blocks, transaction 15,
    device 3 written, 4 a snapshot of it) whose files are then put behind
    loop devices: ``(files' directory, metadata device, data device)``."""
    made = tmp_path / "made"
    with Pool.create(made, data_size="8M", metadata_size="2M", block_size="128K") as pool:
        pool.create_thin(3, "2M").write(200_000, b"block device bytes")
        pool.create_snap(4, 3)
        pool.set_transaction_id(0, 15)
    meta = loop.attach(made / "metadata", autoclear=False, direct_io=False)
    try:
        data = loop.attach(made / "data", autoclear=False, direct_io=False)
        try:
            yield made, meta.path, data.path
        finally:
            data.detach()
    finally:
        meta.detach()


def test_sizes_of_a_block_device_come_from_the_device(devices: tuple[Path, str, str]) -> None:
    made, meta, data = devices
    assert os.stat(data).st_size == 0           # what the defect read
    assert path_size(data) == 8 * MiB and path_size(meta) == 2 * MiB
    fd = os.open(data, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.lseek(fd, 4096, os.SEEK_SET)
        assert fd_size(fd) == 8 * MiB
        assert os.lseek(fd, 0, os.SEEK_CUR) == 4096     # the offset is left alone
    finally:
        os.close(fd)
    assert path_size(made / "data") == 8 * MiB


@pytest.mark.parametrize("backend", ["sim", "kernel"])
def test_adopted_block_devices_read_only(devices: tuple[Path, str, str], tmp_path: Path,
                                         backend: str) -> None:
    made, meta, data = devices
    sums = {f: sha(made / f) for f in ("data", "metadata")}
    home = tmp_path / "home"
    with Pool.adopt(home, data=data, metadata=meta, backend=backend, readonly=True) as pool:
        assert pool.data_block_size == 128 << 10
        assert pool.thin_ids() == [3, 4]
        status = pool.status()
        assert status.transaction_id == 15
        assert status.total_data_blocks == 64           # 8 MiB of 128 KiB blocks
        assert pool.thin(4, size="2M").read(200_000, 18) == b"block device bytes"
        with pytest.raises(ReadOnly) as exc:
            pool.create_thin(5, "1M")
        assert exc.value.errno == errno.EROFS
    assert not home.exists()
    assert {f: sha(made / f) for f in ("data", "metadata")} == sums


def test_simulated_pool_on_block_devices_grows_only_with_the_device(
        devices: tuple[Path, str, str], tmp_path: Path) -> None:
    made, meta, data = devices
    home = tmp_path / "home"
    with Pool.adopt(home, data=data, metadata=meta, backend="sim") as pool:
        pool.create_thin(5, "1M").write(0, b"new on the device")
        with pytest.raises(InvalidArgument, match="grow the device itself"):
            pool.resize_data("16M")
        with pytest.raises(InvalidArgument, match="grow the device itself"):
            pool.resize_metadata("4M")
        assert pool.status().total_data_blocks == 64
        os.truncate(made / "data", 16 * MiB)            # the device grows (lvextend)
        loop.set_capacity(data)
        pool.resize_data("16M")
        assert pool.status().total_data_blocks == 128
    with Pool.open(home) as pool:
        assert pool.thin(5).read(0, 17) == b"new on the device"
        assert pool.status().total_data_blocks == 128
