"""Running out of space (issue 10 item 9).

* Metadata exhaustion leaked a data block: the kernel's alloc_data_block
  commits "before we use up the metadata reserve", after allocating the
  block and before its mapping is inserted; the pool then stays out of
  metadata space, the mapping is never committed, and thin_check 1.1.0
  finds the block leaked.  The simulator commits once the mapping is in.
  A snapshot-churn workload runs each seed to exhaustion; both thin_checks
  and ``dmthin check`` must pass.
* A no-space timeout of 0 means "queue for ever" (the kernel's module
  parameter).  The library keeps that (another thread may add space), but a
  command-line writer holds the pool's lock, so nothing can add space: it
  gives up after the kernel's default 60 s (CLI_NO_SPACE_TIMEOUT, shortened
  here) with one ENOSPC line, and the lock is released.
"""
from __future__ import annotations

import random
import subprocess
import threading
import time

import pytest

from dmthin import Pool
from dmthin.cli import thin_io
from dmthin.errors import DmThinError, IOFailure, NoSpace, NotSupported
from dmthin.sim.params import NO_SPACE_TIMEOUT_ENV
from helpers import run_dmthin as dmthin


def churn_to_exhaustion(path, seed: int) -> int:
    """Snapshots of a half-mapped origin, each rewriting a few blocks, until
    the 2 MiB metadata is exhausted; returns the snapshots made."""
    rnd = random.Random(seed)
    with Pool.create(path, data_size="1G", metadata_size="2M", backend="sim",
                     features=["error_if_no_space"]) as pool:
        t = pool.create_thin(0, "1G")
        for i in range(0, 16384, 4):
            t.write(i * 65536, b"o")
        t.flush()
        i = 1
        try:
            while i < 10_000:
                s = pool.create_snap(i, 0)
                for _k in range(rnd.randrange(1, 6)):
                    s.write(rnd.randrange(4096) * 4 * 65536, b"x")
                i += 1
        except (IOFailure, NotSupported, NoSpace):
            pass
        assert pool.status().mode.value == "ro"
    return i


@pytest.mark.parametrize("seed", [1, 2, 5])
def test_metadata_exhaustion_leaks_no_data_block(tmp_path, seed, thin_tools_090,
                                                 pdata_tools_110):
    d = tmp_path / "pool"
    assert churn_to_exhaustion(d, seed) > 50
    meta = d / "metadata"
    for argv in ([thin_tools_090["thin_check"], meta], [pdata_tools_110, "thin_check", meta]):
        p = subprocess.run(argv, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
    assert dmthin("check", d).returncode == 0


def full_pool(path) -> None:
    with Pool.create(path, data_size="256K", metadata_size="4M", backend="sim") as pool:
        t = pool.create_thin(1, "1M")
        t.write(0, b"f" * (256 << 10))
        t.flush()


def test_cli_writer_does_not_wait_for_ever(tmp_path, monkeypatch):
    d = tmp_path / "pool"
    full_pool(d)
    monkeypatch.setenv(NO_SPACE_TIMEOUT_ENV, "0")
    monkeypatch.setattr(thin_io, "CLI_NO_SPACE_TIMEOUT", 1.0)
    t = time.monotonic()
    p = dmthin("thin", "write", d, "1", "--offset", "512K", input=b"z" * 4096)
    took = time.monotonic() - t
    assert p.returncode == 1 and p.stderr.count(b"\n") == 1, p.stderr
    assert b"No space" in p.stderr or b"out of data space" in p.stderr, p.stderr
    assert 0.9 < took < 30
    # the lock was released: the next command opens the pool
    assert dmthin("thin", "status", d, "1").returncode == 0


def test_library_queues_for_ever_until_space_appears(tmp_path, monkeypatch):
    """Timeout 0 in the library: the writer waits until another thread grows
    the pool, then completes (the kernel's queue_if_no_space)."""
    d = tmp_path / "pool"
    full_pool(d)
    monkeypatch.setenv(NO_SPACE_TIMEOUT_ENV, "0")
    with Pool.open(d) as pool:
        thin = pool.thin(1)
        done: list[object] = []

        def writer() -> None:
            try:
                done.append(thin.write(512 << 10, b"z" * 4096))
            except DmThinError as e:
                done.append(e)
        w = threading.Thread(target=writer)
        w.start()
        time.sleep(1.5)
        assert not done                          # still queued
        pool.resize_data(1 << 20)
        w.join(10)
        assert done == [4096]
        assert thin.read(512 << 10, 4) == b"zzzz"


@pytest.mark.parametrize("value", ["nan", "inf", "1e9", "-1", "١", "9" * 400, "0x10"])  # noqa: RUF001 - non-ASCII digits on purpose
def test_bad_timeout_is_one_line(tmp_path, monkeypatch, value):
    d = tmp_path / "pool"
    full_pool(d)
    monkeypatch.setenv(NO_SPACE_TIMEOUT_ENV, value)
    p = dmthin("thin", "write", d, "1", input=b"x")
    assert p.returncode == 1 and p.stderr.count(b"\n") == 1
    assert NO_SPACE_TIMEOUT_ENV.encode() in p.stderr
