"""Out of data space (both policies), low water mark events, growing the
pool, and metadata exhaustion, as dm-thin.c handles them."""
from __future__ import annotations

import errno
import os
import subprocess
import threading
import time

import pytest

from dmthin import Pool
from dmthin.errors import IOFailure, NoSpace, NotSupported
from dmthin.sim.core import Mode
from fake_engine import FakeMetadata
from simhelpers import BS, check_tools, dump, new_pool, open_sim, pattern, sim_pool


def fill(thin, nblocks, start=0):
    for v in range(start, start + nblocks):
        thin.write(v * BS, pattern(v, BS))


def test_error_if_no_space_fails_at_once(tmp_path):
    with new_pool(tmp_path / "p", data_size="256K", features=["error_if_no_space"]) as pool:
        thin = pool.create_thin(1, "1M")
        other = pool.create_thin(2, "1M")
        fill(thin, 3)
        fill(other, 1)
        t0 = time.monotonic()
        with pytest.raises(NoSpace) as e:
            thin.write(4 * BS, b"x")
        assert e.value.errno == errno.ENOSPC
        assert time.monotonic() - t0 < 1
        f = pool.status_line().split()
        assert f[2] == "4/4" and f[4] == "out_of_data_space" and f[6] == "error_if_no_space"
        thin.write(0, b"in place still works")
        assert thin.read(0, 4) == b"in p"
        # deleting frees space: after the message's commit the pool is writable again
        pool.delete(2)
        assert pool.status_line().split()[4] == "rw"
        thin.write(4 * BS, b"x")
        assert pool.status_line().split()[2] == "4/4"


def test_queue_times_out_then_errors(tmp_path):
    pool, impl = sim_pool(tmp_path / "p", data_size="128K")
    with pool:
        impl.core.no_space_timeout = 0.4
        thin = pool.create_thin(1, "1M")
        fill(thin, 2)
        t0 = time.monotonic()
        with pytest.raises(NoSpace):
            thin.write(2 * BS, b"x")
        waited = time.monotonic() - t0
        assert 0.35 <= waited < 3, waited
        f = pool.status_line().split()
        assert f[4] == "out_of_data_space" and f[6] == "error_if_no_space"
        t0 = time.monotonic()
        with pytest.raises(NoSpace):                   # now it fails at once
            thin.write(3 * BS, b"x")
        assert time.monotonic() - t0 < 0.3
        reasons = [r for _n, r in impl.core.events]
        assert reasons == ["low_water_mark", "mode:out_of_data_space", "error_if_no_space"]


def test_queued_writer_resumes_when_space_appears(tmp_path):
    pool, impl = sim_pool(tmp_path / "p", data_size="256K")
    with pool:
        impl.core.no_space_timeout = 30
        a = pool.create_thin(1, "1M")
        b = pool.create_thin(2, "1M")
        fill(a, 2)
        fill(b, 2)
        done = {}

        def writer():
            try:
                a.write(2 * BS, pattern(77, BS))
                done["ok"] = True
            except Exception as err:       # noqa: BLE001 - reported below
                done["err"] = err

        t = threading.Thread(target=writer)
        t.start()
        deadline = time.monotonic() + 5
        while impl.mode != Mode.OUT_OF_DATA_SPACE and time.monotonic() < deadline:
            time.sleep(0.01)
        assert impl.mode == Mode.OUT_OF_DATA_SPACE
        time.sleep(0.1)
        assert t.is_alive()                            # queued, not failed
        assert pool.status_line().split()[6] == "queue_if_no_space"
        pool.delete(2)                                 # frees 2 blocks, commits
        t.join(10)
        assert done == {"ok": True}
        assert a.read(2 * BS, BS) == pattern(77, BS)
        assert pool.status_line().split()[4] == "rw"


def test_queued_writer_resumes_after_resize(tmp_path):
    d = tmp_path / "p"
    pool, impl = sim_pool(d, data_size="128K")
    with pool:
        impl.core.no_space_timeout = 30
        a = pool.create_thin(1, "1M")
        fill(a, 2)
        done = {}
        t = threading.Thread(target=lambda: done.setdefault("r", a.write(2 * BS, b"grown")))
        t.start()
        deadline = time.monotonic() + 5
        while impl.mode != Mode.OUT_OF_DATA_SPACE and time.monotonic() < deadline:
            time.sleep(0.01)
        impl.resize_data(512 << 10)
        t.join(10)
        assert done.get("r") == 5
        st = pool.status()
        assert st.total_data_blocks == 8 and st.used_data_blocks == 3
        assert st.mode.value == "rw"
    with Pool.open(d) as pool:                          # the growth was committed
        assert pool.status().total_data_blocks == 8
        assert pool.thin(1).read(2 * BS, 5) == b"grown"


def test_low_water_mark_fires_once_and_rearms_on_resume(tmp_path):
    pool, impl = sim_pool(tmp_path / "p", data_size="1M", low_water_mark=10)   # 16 blocks
    with pool:
        seen = []
        impl.core.add_event_listener(seen.append)
        thin = pool.create_thin(1, "2M")
        fill(thin, 6)                                  # free before each alloc: 16..11
        assert seen == []
        fill(thin, 1, start=6)                         # free before alloc = 10 <= 10
        assert seen == ["low_water_mark"]
        nr = impl.event_nr
        fill(thin, 3, start=7)
        assert seen == ["low_water_mark"]
        impl.resume()                                  # re-armed
        fill(thin, 1, start=10)
        assert seen == ["low_water_mark", "low_water_mark"]
        assert impl.wait_event(nr, timeout=0.1) == nr + 1


def test_out_of_metadata_space_goes_read_only(tmp_path, pdata_tools_110):
    d = tmp_path / "p"
    pool, impl = sim_pool(d, metadata_size="2M")      # 512 blocks, reserve 51
    with pool:
        thin = pool.create_thin(1, "1M")
        thin.write(0, b"kept")
        seen = []
        impl.core.add_event_listener(seen.append)
        created = 1
        with pytest.raises(NotSupported) as e:
            for i in range(2, 5000):
                pool.message(f"create_thin {i}")
                created = i
        assert e.value.errno == errno.EOPNOTSUPP
        assert 100 < created < 5000
        st = pool.status()
        assert st.mode.value == "ro" and not st.needs_check
        assert st.used_metadata_blocks == st.total_metadata_blocks
        assert "metadata_low_water_mark" in seen and "mode:ro" in seen
        assert thin.read(0, 4) == b"kept"
        thin.write(0, b"KEPT")                         # mapped, unshared: allowed
        with pytest.raises(IOFailure) as e:            # needs a new block: EIO
            thin.write(BS, b"x")
        assert e.value.errno == errno.EIO
        thin.discard(0, BS)                            # read-only: success, no effect
        assert thin.read(0, 4) == b"KEPT"
    check_tools(d / "metadata", pdata_tools_110)
    _, devs = dump(d / "metadata")
    assert len(devs) == created
    with Pool.open(d) as pool:       # the kernel would stay out of space too
        assert pool.status().mode.value == "ro"


def test_engine_nospace_aborts_sets_needs_check(tmp_path):
    """metadata_operation_failed: NoSpace from the engine mid-transaction
    rolls back to the last commit, sets needs_check, goes read-only."""
    d = tmp_path / "p"
    pool, impl = sim_pool(d, engine=FakeMetadata)
    with pool:
        a = pool.create_thin(1, "1M")
        a.write(0, b"committed")
        a.flush()
        a.write(BS, b"lost")                           # uncommitted mapping
        impl.metadata.fail_after = 0
        with pytest.raises(IOFailure):
            a.write(2 * BS, b"boom")
        st = pool.status()
        assert st.mode.value == "ro" and st.needs_check
        assert a.read(0, 9) == b"committed"
        assert a.read(BS, 4) == bytes(4)               # rolled back
        with pytest.raises(NotSupported):
            pool.message("create_thin 5")
    pool, _impl = open_sim(d, engine=FakeMetadata)
    with pool:                                         # needs_check: opens read-only
        assert pool.status().mode.value == "ro"
        with pytest.raises(NotSupported):
            pool.message("create_thin 5")


def test_commit_period_commits_without_flush(tmp_path):
    d = tmp_path / "p"
    pool, impl = sim_pool(d)
    with pool:
        thin = pool.create_thin(1, "1M")
        thin.write(0, b"first")                        # not committed yet
        _, devs = dump(d / "metadata")
        assert devs[1]["map"] == {}
        impl.core.commit_period = 0.05
        time.sleep(0.1)
        thin.write(BS, b"second")                      # commits the first before it
        _, devs = dump(d / "metadata")
        assert sorted(devs[1]["map"]) == [0]


def test_open_takes_up_a_grown_data_file(tmp_path):
    d = tmp_path / "p"
    with new_pool(d, data_size="1M") as pool:
        pool.create_thin(1, "4M").write(0, b"x")
    os.truncate(d / "data", 3 << 20)                   # Docker grows the loop file
    with Pool.open(d) as pool:
        assert pool.status().total_data_blocks == 48
        fill(pool.thin(1), 40)
    _, devs = dump(d / "metadata")
    assert len(devs[1]["map"]) == 40
    check_tools(d / "metadata")


def test_suspended_thin_io_waits_for_resume(tmp_path):
    pool, impl = sim_pool(tmp_path / "p")
    with pool:
        thin = pool.create_thin(1, "1M")
        impl.suspend_thin(1)
        done = threading.Event()
        t = threading.Thread(target=lambda: (thin.write(0, b"later"), done.set()))
        t.start()
        assert not done.wait(0.2)                      # held while suspended
        impl.resume_thin(1)
        assert done.wait(5)
        t.join()
        assert thin.read(0, 5) == b"later"


def test_grown_metadata_file_is_taken_up_on_reopen(tmp_path):
    """As maybe_resize_metadata_dev: a bigger metadata file grows the
    metadata space map at the next resume (here: the next open)."""
    pool = Pool.create(tmp_path / "p", data_size="64M", metadata_size="2M")
    total = pool.status().total_metadata_blocks
    pool.close()
    os.truncate(tmp_path / "p" / "metadata", 8 << 20)
    with Pool.open(tmp_path / "p") as pool:
        assert total == 512 and pool.status().total_metadata_blocks == 2048
    subprocess.run(["thin_check", str(tmp_path / "p" / "metadata")], check=True,
                   capture_output=True)
