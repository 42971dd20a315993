"""The simulator's I/O semantics against the real kernel's, scenario by
scenario: each runs on ``backend="kernel"`` and on ``backend="sim"`` in the
qemu guest (tools/test, tools/vmrun), and what they report must agree:
reads, thin and pool status lines, thin_dump mappings (data block numbers
and times included), events where the kernel has them.

This is where the simulator's claims that come from reading dm-thin.c are
checked: partial-block discards leave the edges mapped, new blocks are
zeroed unless skip_block_zeroing, a partial write to a shared block copies
it, data blocks are handed out in write order, status counts metadata with
the kernel's reserve.
"""
from __future__ import annotations

import errno

import pytest

from dmthin import Pool
from simhelpers import BS, dump, pattern

pytestmark = pytest.mark.real_dm


def run_both(tmp_path, scenario, **pool_kw):
    """Run *scenario(pool)* on both backends; return their observations."""
    out = {}
    for backend in ("kernel", "sim"):
        d = tmp_path / f"deleteme-{backend}" / "pool"
        kw = {"data_size": "16M", "metadata_size": "4M", "backend": backend}
        kw.update(pool_kw)
        with Pool.create(d, **kw) as pool:
            obs = scenario(pool)
            obs["pool_status"] = pool.status_line()
        sb, devs = dump_file(d / "metadata")
        obs["dump"] = {k: v["map"] for k, v in devs.items()}
        obs["details"] = {k: v["attrs"] for k, v in devs.items()}
        obs["time"] = sb["time"]
        out[backend] = obs
    return out["kernel"], out["sim"]


def dump_file(path):
    # thin_dump opens with O_DIRECT, which tmpfs refuses: go through a loop device
    from dmthin.dm import loop
    try:
        return dump(path)
    except AssertionError:
        with loop.attach(str(path), read_only=True) as dev:
            return dump(dev.path)


def assert_same(k, s):
    for key in k:
        a, b = k[key], s[key]
        if isinstance(a, bytes) and a != b:
            first = next(i for i in range(min(len(a), len(b))) if a[i] != b[i])
            raise AssertionError(f"{key}: kernel and sim bytes differ from offset {first}: "
                                 f"kernel {a[first:first + 16].hex()} sim "
                                 f"{b[first:first + 16].hex()}")
        assert a == b, f"{key}: kernel {a!r} != sim {b!r}"


def test_partial_discard_unmaps_whole_blocks_only(tmp_path):
    def scenario(pool):
        t = pool.create_thin(1, "1M")
        t.write(0, pattern(1, 6 * BS))
        t.flush()
        t.discard(BS // 2, 3 * BS)             # whole: blocks 1, 2; partial: 0 and 3
        t.discard(5 * BS + 512, 1024)          # inside one block: nothing
        t.flush()
        return {"read": t.read(0, 6 * BS), "thin": t.status_line()}
    k, s = run_both(tmp_path, scenario)
    assert_same(k, s)
    assert sorted(k["dump"][1]) == [0, 3, 4, 5]


def test_allocation_order_zeroing_and_cow(tmp_path):
    def scenario(pool):
        a = pool.create_thin(1, "4M")
        for v in (7, 3, 50, 0):
            a.write(v * BS + 100, b"x" * 10)    # partial: zeroed new blocks
        a.write(9 * BS, pattern(2, 2 * BS))    # whole blocks
        b = pool.create_snap(2, 1)
        a.write(3 * BS + 5, b"cow")            # partial write to a shared block
        b.write(9 * BS, pattern(3, BS))        # whole-block write to a shared block
        a.flush()
        return {"a": a.read(0, 11 * BS), "b": b.read(0, 11 * BS),
                "thins": (a.status_line(), b.status_line())}
    k, s = run_both(tmp_path, scenario)
    assert_same(k, s)


def test_skip_block_zeroing_shows_stale_bytes_alike(tmp_path):
    def scenario(pool):
        a = pool.create_thin(1, "1M")
        a.write(0, pattern(5, 2 * BS))
        a.flush()
        pool.delete(1)
        b = pool.create_thin(2, "1M")
        b.write(10, b"new")
        b.flush()
        return {"read": b.read(0, BS)}
    k, s = run_both(tmp_path, scenario, data_size="128K", features=("skip_block_zeroing",))
    assert_same(k, s)


def test_out_of_data_space_error_policy(tmp_path):
    def scenario(pool):
        a = pool.create_thin(1, "1M")
        a.write(0, pattern(1, 4 * BS))
        errno_seen = None
        try:
            a.write(4 * BS, b"x")
        except OSError as err:
            errno_seen = err.errno
        return {"errno": errno_seen, "status": pool.status_line()}
    k, s = run_both(tmp_path, scenario, data_size="256K", low_water_mark=1,
                    features=("error_if_no_space",))
    assert_same(k, s)


def test_status_lines_after_a_workload(tmp_path):
    def scenario(pool):
        lines = [pool.status_line()]
        a = pool.create_thin(1, "8M")
        a.write(0, pattern(1, 40 * BS))
        lines.append(pool.status_line())
        pool.create_snap(2, 1)
        a.write(BS, b"y")
        lines.append(pool.status_line())
        pool.set_transaction_id(0, 3)
        pool.reserve_metadata_snap()
        lines.append(pool.status_line())
        pool.release_metadata_snap()
        lines.append(pool.status_line())
        return {"lines": lines}
    k, s = run_both(tmp_path, scenario)
    assert_same(k, s)



def events(pool) -> int:
    """The pool's event counter; on the kernel, as ``dmsetup info`` reads it."""
    if pool.backend == "sim":
        return pool.event_nr
    from dmthin.dm import task  # the binding: only where the kernel backend runs
    return task.info(pool.device_name).event_nr


def test_low_water_mark_and_mode_events(tmp_path):
    def scenario(pool):
        base = events(pool)
        t = pool.create_thin(1, "2M")
        seen = []
        for v in range(17):
            try:
                t.write(v * BS, pattern(v, BS))
            except OSError as err:
                seen.append(("errno", err.errno))
            seen.append(events(pool) - base)
        return {"events": seen, "status": pool.status_line()}
    k, s = run_both(tmp_path, scenario, data_size="1M", low_water_mark=10,
                    features=("error_if_no_space",))
    assert_same(k, s)
    assert ("errno", errno.ENOSPC) in k["events"] and k["events"][-1] >= 2


NO_SPACE_PARAM = "/sys/module/dm_thin_pool/parameters/no_space_timeout"


def test_queue_if_no_space_times_out_into_error(tmp_path, monkeypatch):
    import time
    monkeypatch.setenv("DMTHIN_SIM_NO_SPACE_TIMEOUT", "2")
    with open(NO_SPACE_PARAM) as f:
        saved = f.read()
    with open(NO_SPACE_PARAM, "w") as f:
        f.write("2\n")
    try:
        def scenario(pool):
            t = pool.create_thin(1, "1M")
            t.write(0, pattern(1, 2 * BS))
            t0 = time.monotonic()
            try:
                t.write(2 * BS, b"x")
                code = None
            except OSError as err:
                code = err.errno
            waited = time.monotonic() - t0
            return {"errno": code, "waited_about_2s": 1.0 < waited < 10,
                    "status": pool.status_line()}
        k, s = run_both(tmp_path, scenario, data_size="128K", low_water_mark=0)
        assert_same(k, s)
        assert k["errno"] == errno.ENOSPC and k["waited_about_2s"]
        assert k["status"].split()[4:7] == ["out_of_data_space", "discard_passdown",
                                            "error_if_no_space"]
    finally:
        with open(NO_SPACE_PARAM, "w") as f:
            f.write(saved)


def test_metadata_exhaustion_goes_read_only_alike(tmp_path):
    def scenario(pool):
        created = 0
        code = None
        for i in range(1, 3000):
            try:
                pool.message(f"create_thin {i}")
            except OSError as err:
                code = err.errno
                break
            created = i
        return {"created": created, "errno": code, "status": pool.status_line()}
    k, s = run_both(tmp_path, scenario, metadata_size="2M")
    assert_same(k, s)
    assert k["errno"] == errno.EOPNOTSUPP and 100 < k["created"] < 2999
    assert k["status"].split()[4] == "ro"


def test_pools_move_between_kernel_and_sim(tmp_path):
    """A kernel-made pool opens in the simulator and the reverse, with the
    data where the other left it (data block N at N * block size)."""
    d = tmp_path / "deleteme-move" / "pool"
    with Pool.create(d, data_size="16M", metadata_size="4M", backend="kernel") as pool:
        a = pool.create_thin(1, "2M")
        a.write(3 * BS + 11, b"from the kernel")
        pool.create_snap(2, 1)
        a.write(3 * BS, b"K")
    with Pool.open(d, backend="sim") as pool:
        assert pool.thin(2).read(3 * BS + 11, 15) == b"from the kernel"
        assert pool.thin(1).read(3 * BS, 1) == b"K"
        pool.thin(2).write(5 * BS, pattern(8, BS))
        pool.create_snap(3, 2)
        pool.thin(3).discard(3 * BS, BS)
        sim_status = pool.status_line()
    with Pool.open(d, backend="kernel") as pool:
        assert pool.status_line() == sim_status
        assert pool.thin(2).read(5 * BS, BS) == pattern(8, BS)
        assert pool.thin(3).read(3 * BS, BS) == bytes(BS)
        assert pool.thin(2).read(3 * BS + 11, 15) == b"from the kernel"
    dump_file(d / "metadata")
