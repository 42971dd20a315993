"""The simulated pool's I/O semantics against the kernel's (dm-thin.c) rules,
checked through the data file, thin_dump 0.9.0 and thin_check."""
from __future__ import annotations

import errno
import os
import stat

import pytest

from dmthin import Pool
from dmthin.errors import (
    Busy,
    DeviceExists,
    DeviceNotFound,
    InvalidArgument,
    NoSpace,
    NotSupported,
    UsageError,
)
from simhelpers import BS, check_tools, du_bytes, dump, new_pool, pattern, sim_pool


def test_files_modes_and_layout(tmp_path):
    d = tmp_path / "pool"
    with new_pool(d, data_size="100G", metadata_size="2G") as pool:
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
        for name in ("data", "metadata", "pool.json"):
            assert stat.S_IMODE(os.stat(d / name).st_mode) == 0o600, name
        assert os.path.getsize(d / "data") == 100 << 30
        assert os.path.getsize(d / "metadata") == 2 << 30
        assert du_bytes(d / "data") < 1 << 20            # sparse
        thin = pool.create_thin(1, "1G")
        thin.write(5 * BS + 3, b"abc")
        st = pool.status()
        assert st.total_data_blocks == (100 << 30) // BS
        assert st.total_metadata_blocks == (2 << 30) // 4096
    # data block 0 (the first allocation) holds virtual block 5, zero-filled around
    with open(d / "data", "rb") as f:
        blk = f.read(BS)
    assert blk[3:6] == b"abc" and blk.count(0) == BS - 3


def test_unmapped_reads_zero_and_partial_writes(tmp_path):
    with new_pool(tmp_path / "p") as pool:
        thin = pool.create_thin(1, "1M")
        assert thin.read(0, 3 * BS) == bytes(3 * BS)
        thin.write(BS - 2, b"wxyz")                      # straddles blocks 0 and 1
        assert thin.read(BS - 4, 8) == b"\0\0wxyz\0\0"
        thin.write(BS, b"Q")
        assert thin.read(BS - 2, 4) == b"wxQz"
        assert thin.status_line() == f"256 {2 * 128 - 1}"
        assert pool.status().used_data_blocks == 2


def test_allocation_order_is_write_order(tmp_path):
    d = tmp_path / "p"
    with new_pool(d) as pool:
        thin = pool.create_thin(1, "4M")
        for v in (7, 3, 50, 0, 4):
            thin.write(v * BS + 100, b"x")
    _, devs = dump(d / "metadata")
    assert {v: db for v, (db, _t) in devs[1]["map"].items()} == {7: 0, 3: 1, 50: 2, 0: 3, 4: 4}


def test_zeroing_and_skip_block_zeroing(tmp_path):
    # A freed block is reused after a commit; with zeroing it reads back zeros,
    # with skip_block_zeroing the old bytes show through (as the kernel).
    for feats, expect_stale in (((), False), (("skip_block_zeroing",), True)):
        d = tmp_path / ("p" + "".join(feats))
        with new_pool(d, data_size="128K", features=feats) as pool:   # 2 blocks
            a = pool.create_thin(1, "1M")
            a.write(0, pattern(1, 2 * BS))
            pool.delete(1)
            b = pool.create_thin(2, "1M")
            b.write(10, b"new")
            got = b.read(0, BS)
            assert got[:512] == bytes(10) + b"new" + bytes(499)   # the sector written
            if expect_stale:                  # (read-modify-write of a zero sector)
                old = pattern(1, 2 * BS)
                assert got[512:] in (old[512:BS], old[BS + 512:])
            else:
                assert got[512:] == bytes(BS - 512)


def test_snapshot_cow_partial_and_whole(tmp_path):
    d = tmp_path / "p"
    with new_pool(d) as pool:
        a = pool.create_thin(1, "1M")
        a.write(0, pattern(1, 3 * BS))
        s = pool.create_snap(2, 1)
        a.write(10, b"PARTIAL")                     # copy then overwrite
        a.write(BS, pattern(9, BS))                 # whole block: no copy needed
        s.write(2 * BS + 5, b"snap")
        assert s.read(0, 3 * BS)[:2 * BS] == pattern(1, 3 * BS)[:2 * BS]
        exp_a = bytearray(pattern(1, 3 * BS))
        exp_a[10:17] = b"PARTIAL"
        exp_a[BS:2 * BS] = pattern(9, BS)
        assert a.read(0, 3 * BS) == bytes(exp_a)
        exp_s = bytearray(pattern(1, 3 * BS))
        exp_s[2 * BS + 5:2 * BS + 9] = b"snap"
        assert s.read(0, 3 * BS) == bytes(exp_s)
        # a write to a block mapped after the snapshot is in place: no new block
        used = pool.status().used_data_blocks
        a.write(20, b"again")
        assert pool.status().used_data_blocks == used
    sb, devs = dump(d / "metadata")
    assert sb["time"] == "1"
    m1, m2 = devs[1]["map"], devs[2]["map"]
    assert m2[0] == (0, 0) and m2[1] == (1, 0)      # the snapshot keeps the old blocks
    assert m1[0] == (3, 1) and m1[1] == (4, 1)      # the origin got new ones (time 1)
    assert m1[2] == (2, 0) and m2[2] == (5, 1)      # the snapshot broke sharing of block 2
    check_tools(d / "metadata")


def test_discard_whole_blocks_and_passdown(tmp_path):
    d = tmp_path / "p"
    with new_pool(d) as pool:
        a = pool.create_thin(1, "2M")
        a.write(0, pattern(3, 8 * BS))
        a.flush()
        before = du_bytes(d / "data")
        a.discard(BS // 2, 3 * BS)                  # covers blocks 1 and 2 wholly
        assert a.read(0, BS) == pattern(3, BS)      # partial edges left alone
        assert a.read(BS, 2 * BS) == bytes(2 * BS)
        assert a.read(3 * BS, BS) == pattern(3, 8 * BS)[3 * BS:4 * BS]
        assert a.status().mapped_sectors == 6 * 128
        a.flush()                                   # holes are punched at the commit
        assert du_bytes(d / "data") <= before - 2 * BS
        # a shared block is unmapped but not released
        s = pool.create_snap(2, 1)
        a.discard(4 * BS, BS)
        a.flush()
        assert s.read(4 * BS, BS) == pattern(3, 8 * BS)[4 * BS:5 * BS]
    check_tools(d / "metadata")


def test_no_discard_passdown_and_ignore_discard(tmp_path):
    d = tmp_path / "nd"
    with new_pool(d, features=["no_discard_passdown"]) as pool:
        a = pool.create_thin(1, "1M")
        a.write(0, pattern(2, 2 * BS))
        a.flush()
        before = du_bytes(d / "data")
        a.discard(0, 2 * BS)
        a.flush()
        assert a.read(0, 2 * BS) == bytes(2 * BS)
        assert du_bytes(d / "data") == before
        assert pool.status_line().split()[5] == "no_discard_passdown"
    with new_pool(tmp_path / "ig", features=["ignore_discard"]) as pool:
        a = pool.create_thin(1, "1M")
        a.write(0, b"x")
        with pytest.raises(NotSupported) as e:
            a.discard(0, BS)
        assert e.value.errno == errno.EOPNOTSUPP
        assert pool.status_line().split()[5] == "ignore_discard"


def test_messages_and_errors(tmp_path):
    d = tmp_path / "p"
    pool, impl = sim_pool(d)
    with pool:
        pool.create_thin(1, "1M")
        with pytest.raises(DeviceExists) as e:
            pool.message("create_thin 1")
        assert e.value.errno == errno.EEXIST
        with pytest.raises(DeviceNotFound) as e:
            pool.message("create_snap 2 9")
        assert e.value.errno == errno.ENODATA
        with pytest.raises(InvalidArgument):
            pool.message("create_thin 16777216")
        with pytest.raises(InvalidArgument):
            pool.message("trim 0 10")
        with pytest.raises(InvalidArgument):
            pool.set_transaction_id(5, 6)
        pool.set_transaction_id(0, 6)
        with pytest.raises(Busy):
            impl.message("delete 1")                # active in this pool
        pool.reserve_metadata_snap()
        held = pool.status().held_root
        assert held
        with pytest.raises(Busy):
            pool.reserve_metadata_snap()
        pool.release_metadata_snap()
        with pytest.raises(InvalidArgument):
            pool.release_metadata_snap()
        st = pool.status()
        assert st.transaction_id == 6 and st.held_root is None
        line = pool.status_line()
        assert line.endswith(" ") and line.split()[4:] == [
            "rw", "discard_passdown", "queue_if_no_space", "-", "256"]
        assert pool.table_line().startswith(f"0 {(8 << 20) // 512} thin-pool /")
        assert pool.table_line().endswith(" 128 12 0 ")
    check_tools(d / "metadata")


def test_metadata_reserve_in_used_count(tmp_path):
    # used = total - max(0, free - min(4096, total/10)) (__set_metadata_reserve)
    pool, impl = sim_pool(tmp_path / "p", metadata_size="64M")
    with pool:
        st = pool.status()
        md = impl.metadata
        reserve = min(4096, 16384 // 10)
        assert st.total_metadata_blocks == 16384
        assert st.used_metadata_blocks == 16384 - (md.nr_free_metadata_blocks() - reserve)
        assert st.metadata_low_watermark == 1024
    with new_pool(tmp_path / "q", metadata_size="2M") as pool:
        assert pool.status().metadata_low_watermark == 128    # 512 blocks / 4


def test_reopen_persists_and_lock(tmp_path):
    d = tmp_path / "p"
    with new_pool(d) as pool:
        a = pool.create_thin(1, "1M")
        a.write(123, b"persist")
        with pytest.raises(Exception, match="in use by pid"):
            Pool.open(d)
    with Pool.open(d) as pool:
        assert pool.thin(1).read(123, 7) == b"persist"
        assert pool.thin_ids() == [1]


def test_bad_inputs_one_line_errors(tmp_path):
    for kw in ({"block_size": "96K"}, {"block_size": "2G"}, {"data_size": "1K"},
               {"metadata_size": "1M"}, {"data_size": "lots"}):
        with pytest.raises(UsageError) as e:
            new_pool(tmp_path / "bad", **kw)
        assert "\n" not in str(e.value)
    with new_pool(tmp_path / "p") as pool:
        thin = pool.create_thin(1, "1M")
        with pytest.raises(NoSpace):
            thin.write((1 << 20) - 1, b"xy")
        with pytest.raises(InvalidArgument):
            thin.read(-1, 4)
        with pytest.raises(InvalidArgument):
            pool.create_thin(1 << 24, "1M")
    with pytest.raises(InvalidArgument):
        new_pool(tmp_path / "ro", features=["read_only"])


def test_data_file_interchange_layout(tmp_path):
    # Data block N is at byte N * block size: write through the pool, find the
    # bytes where thin_dump says they are.
    d = tmp_path / "p"
    with new_pool(d, block_size="128K") as pool:
        a = pool.create_thin(1, "4M")
        for v in (9, 2, 20):
            a.write(v * (128 << 10), pattern(v, 128 << 10))
    _, devs = dump(d / "metadata")
    with open(d / "data", "rb") as f:
        for v, (db, _t) in devs[1]["map"].items():
            f.seek(db * (128 << 10))
            assert f.read(128 << 10) == pattern(v, 128 << 10)
