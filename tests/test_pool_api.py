"""The public Pool / ThinDevice facade, on the simulator and (real_dm) on
the kernel: the same calls, the same results."""
from __future__ import annotations

import errno
import os
import stat

import pytest

from dmthin import DeviceExists, DeviceNotFound, NoSpace, Pool, UsageError


def make_pool(tmp_path, backend):
    return Pool.create(tmp_path / "pool", data_size="256M", metadata_size="8M",
                       backend=backend)


BACKENDS = [pytest.param("sim"), pytest.param("kernel", marks=pytest.mark.real_dm)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_lifecycle_resize_and_errors(tmp_path, backend):
    with make_pool(tmp_path, backend) as pool:
        assert pool.backend == backend
        thin = pool.create_thin(1, "4M")
        assert thin.active and thin.size == 4 << 20
        thin.write(0, b"a" * 65536)
        with pytest.raises(NoSpace):
            thin.write(6 << 20, b"x")                 # past the end
        pool.resize_thin(1, "8M")
        assert thin.size == 8 << 20
        thin.write(6 << 20, b"b" * 512)
        assert thin.read(6 << 20, 512) == b"b" * 512
        assert thin.status_line() == "256 12415"      # blocks 0 and 96 of 64K
        with pytest.raises(DeviceExists) as e:
            pool.create_thin(1, "1M")
        assert e.value.errno == errno.EEXIST
        with pytest.raises(DeviceNotFound):
            pool.resize_thin(9, "1M")
        with pytest.raises(UsageError):
            pool.resize_thin(1, "1000")               # not a multiple of 512
        snap = pool.create_snap(2, 1)
        assert snap.size == 8 << 20
        assert snap.read(0, 4) == b"aaaa"
        pool.delete(1)
        assert pool.thin_ids() == [2]
        assert not thin.active
        with pytest.raises(DeviceExists):     # the kernel's order: EEXIST before no origin
            pool.create_snap(2, 1)
        with pytest.raises(DeviceNotFound):
            pool.create_snap(3, 1)
    with Pool.open(tmp_path / "pool") as pool:
        assert pool.thin(2).read(6 << 20, 3) == b"bbb"
        assert pool.config.thins == {2: 8 << 20}


def test_pool_directory_modes_and_refusals(tmp_path):
    pool = make_pool(tmp_path, "sim")
    pool.close()
    d = tmp_path / "pool"
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for f in ("data", "metadata", "pool.json"):
        assert stat.S_IMODE(os.stat(d / f).st_mode) == 0o600
    with pytest.raises(UsageError, match="already holds a pool"):
        make_pool(tmp_path, "sim")
    with pytest.raises(UsageError, match="not a dmthin pool"):
        Pool.open(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="block size"):
        Pool.create(tmp_path / "p2", block_size="96K")
    with pytest.raises(UsageError, match="unknown backend"):
        Pool.create(tmp_path / "p3", backend="xen")


def test_failed_create_leaves_nothing_behind(tmp_path, monkeypatch):
    from dmthin.sim.pool import SimPoolBackend

    def boom(*a):
        raise OSError(5, "injected failure")
    monkeypatch.setattr(SimPoolBackend, "create", classmethod(boom))
    with pytest.raises(OSError, match="injected"):
        Pool.create(tmp_path / "p" / "pool", data_size="64M", metadata_size="4M")
    assert list(tmp_path.iterdir()) == []          # the parent it made is gone too


@pytest.mark.parametrize("backend", BACKENDS)
def test_low_water_mark_raises_a_pool_event(tmp_path, backend):
    from dmthin.errors import TimedOut
    with Pool.create(tmp_path / "pool", data_size="16M", metadata_size="4M",
                     low_water_mark=200, backend=backend) as pool:   # 256 blocks
        thin = pool.create_thin(1, "16M")
        before = pool.event_nr
        with pytest.raises(TimedOut):
            pool.wait_event(before, timeout=0.2)
        for vb in range(50):                                       # free 206 > 200
            thin.write(vb * 65536, b"x" * 65536)
        assert pool.event_nr == before
        for vb in range(50, 60):                                   # free 196 <= 200
            thin.write(vb * 65536, b"x" * 65536)
        thin.flush()
        assert pool.wait_event(before, timeout=10) == before + 1
