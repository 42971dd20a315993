"""Never format over a pool; adopt foreign pools; the metadata is the truth
about which devices exist; read-only pools refuse every change (EROFS)."""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from dmthin import DeviceNotFound, InvalidArgument, Pool, ReadOnly, UsageError

MiB = 1 << 20


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def foreign(tmp_path: Path) -> Path:
    """A pool made elsewhere: data + metadata, no pool.json (as in Docker's
    devicemapper/devicemapper/), with devices 3 (written) and 4 (snapshot)."""
    d = tmp_path / "made"
    with Pool.create(d, data_size="8M", metadata_size="2M", block_size="128K") as pool:
        pool.create_thin(3, "2M").write(200_000, b"foreign bytes")
        pool.create_snap(4, 3)
        pool.set_transaction_id(0, 15)
    src = tmp_path / "devicemapper"
    src.mkdir(mode=0o700)
    for f in ("data", "metadata"):
        shutil.copy(d / f, src / f)
    return src


def test_create_refuses_to_format_over_a_pool(foreign):
    sums = {f: sha(foreign / f) for f in ("data", "metadata")}
    with pytest.raises(UsageError) as exc:
        Pool.create(foreign, data_size="8M", metadata_size="2M")
    msg = str(exc.value)
    assert "Pool.adopt" in msg and "dmthin pool adopt" in msg and "--force" in msg
    assert "\n" not in msg
    assert {f: sha(foreign / f) for f in ("data", "metadata")} == sums
    assert sorted(os.listdir(foreign)) == ["data", "metadata"]
    with pytest.raises(UsageError, match=r"Pool.adopt"):
        Pool.open(foreign)


def test_create_refuses_over_a_dmthin_pool_and_force_formats(tmp_path):
    d = tmp_path / "pool"
    with Pool.create(d, data_size="4M", metadata_size="2M") as pool:
        pool.create_thin(1, "1M")
    with pytest.raises(UsageError, match="already holds a pool"):
        Pool.create(d, data_size="4M", metadata_size="2M")
    with Pool.create(d, data_size="4M", metadata_size="2M", force=True) as pool:
        assert pool.thin_ids() == [] and pool.config.thins == {}


def test_adopt_reads_block_size_from_the_superblock_and_writes_nothing(foreign):
    sums = {f: sha(foreign / f) for f in ("data", "metadata")}
    with Pool.adopt(foreign, readonly=True) as pool:
        assert pool.data_block_size == 128 << 10
        assert pool.thin_ids() == [3, 4]
        assert pool.status().transaction_id == 15
        with pytest.raises(UsageError, match="thin device 3 has no recorded size"):
            pool.thin(3)
        assert pool.thin(4, size="2M").read(200_000, 13) == b"foreign bytes"
        for change in (lambda: pool.create_thin(5, "1M"), lambda: pool.delete(3),
                       lambda: pool.message("create_thin 9"), lambda: pool.resize_data("16M"),
                       lambda: pool.thin(4).write(0, b"x"), lambda: pool.resize_thin(4, "4M")):
            with pytest.raises(ReadOnly) as exc:
                change()
            assert exc.value.errno == errno.EROFS
    assert {f: sha(foreign / f) for f in ("data", "metadata")} == sums
    assert sorted(os.listdir(foreign)) == ["data", "metadata"]


def test_adopt_writes_pool_json_on_the_first_change_only(foreign):
    with Pool.adopt(foreign) as pool:
        pool.thin(3, size="2M")
        assert not (foreign / "pool.json").exists()
        pool.create_thin(5, "1M", name="docker-7:0-42-abc", activate=False)
        assert (foreign / "pool.json").exists()
    with Pool.open(foreign) as pool:                 # now a dmthin pool directory
        assert pool.thin_ids() == [3, 4, 5]
        assert pool.config.thins == {5: MiB}
        assert pool.config.names == {5: "docker-7:0-42-abc"}
    with Pool.adopt(foreign) as pool:                # a directory with pool.json: opened
        assert pool.config.thins == {5: MiB}


def test_adopt_files_elsewhere_records_their_paths(foreign, tmp_path):
    home = tmp_path / "home"
    with Pool.adopt(home, data=foreign / "data", metadata=foreign / "metadata") as pool:
        assert pool.thin_ids() == [3, 4]
        assert not home.exists()
        pool.resize_thin(3, "2M")
    assert sorted(os.listdir(home)) == ["pool.json"]
    with Pool.open(home) as pool:
        assert pool.thin(3).read(200_000, 13) == b"foreign bytes"
    with pytest.raises(UsageError, match="records"):
        Pool.adopt(home, data=foreign / "metadata", metadata=foreign / "data")


def test_adopt_refuses_what_is_not_a_pool(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "data").write_bytes(bytes(MiB))
    (d / "metadata").write_bytes(bytes(MiB))
    with pytest.raises(UsageError, match=r"no usable thin pool metadata.*Pool.create"):
        Pool.adopt(d)
    with pytest.raises(UsageError, match="no such file"):
        Pool.adopt(tmp_path / "nowhere", data=d / "data", metadata=d / "missing")


def test_thin_ids_come_from_the_metadata_and_messages_record_no_size(tmp_path):
    d = tmp_path / "pool"
    with Pool.create(d, data_size="4M", metadata_size="2M") as pool:
        pool.message("create_thin 7")
        assert pool.thin_ids() == [7] and pool.config.thins == {}
        with pytest.raises(UsageError, match="no recorded size; give size="):
            pool.thin(7)
        t = pool.thin(7, size="1M")
        t.write(0, b"seven")
        pool.message("create_snap 8 7")               # the active origin's size
        assert pool.config.thins == {8: MiB}
        pool.message("delete 7")
        assert not t.active and pool.thin_ids() == [8]
        with pytest.raises(DeviceNotFound):
            pool.thin(7, size="1M")
    with Pool.open(d) as pool:
        assert pool.thin(8).read(0, 5) == b"seven"


def test_bad_arguments_never_poison_the_pool(tmp_path):
    d = tmp_path / "pool"
    with Pool.create(d, data_size="4M", metadata_size="2M") as pool:
        t = pool.create_thin(1, "1M")
        t.write(0, b"kept")
        for call in (lambda: t.write(327680.5, b"x"), lambda: t.write(None, b"x"),
                     lambda: t.read(0.5, 3), lambda: t.discard(0, None),
                     lambda: t.write(0, "text"), lambda: pool.message(5),
                     lambda: pool.message(None), lambda: pool.thin(1.0),
                     lambda: pool.create_thin("2", "1M"), lambda: pool.delete(True),
                     lambda: pool.set_transaction_id(0.0, 1), lambda: t.read(-1, 2)):
            with pytest.raises(InvalidArgument) as exc:
                call()
            assert exc.value.errno == errno.EINVAL and "\n" not in str(exc.value)
        with pytest.raises(UsageError):
            pool.create_thin(2, 1.5)
        t.write(327680, b"x")
        t.flush()
        assert pool.status().transaction_id == 0
    with Pool.open(d) as pool:
        assert pool.thin(1).read(0, 4) == b"kept" and pool.thin(1).read(327680, 1) == b"x"


def test_resize_data_and_metadata_through_the_facade(tmp_path):
    d = tmp_path / "pool"
    with Pool.create(d, data_size="4M", metadata_size="2M") as pool:
        pool.resize_data("8M")
        pool.resize_metadata("4M")
        st = pool.status()
        assert st.total_data_blocks == 128 and st.total_metadata_blocks == 1024
        with pytest.raises(InvalidArgument, match="shrink"):
            pool.resize_data("4M")
        with pytest.raises(UsageError, match="maximum"):
            pool.resize_metadata("17G")


def test_close_keep_active_and_active_thins(tmp_path):
    with Pool.create(tmp_path / "p", data_size="4M", metadata_size="2M") as pool:
        a = pool.create_thin(1, "1M")
        b = pool.create_thin(2, "1M", activate=False)
        assert not b.active and [t.dev_id for t in pool.active_thins()] == [1]
        assert b.activate() is b and b.active
        a.deactivate()
        assert [t.dev_id for t in pool.active_thins()] == [2]
        assert a.activate() is a
        info = pool.info()
        assert info.pool_dev is None and not info.udev_sync_supported
    assert not a.active and not b.active
