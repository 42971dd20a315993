"""Kernel state that outlives the process, pools made by others, read-only
opening and live growth -- on the real kernel (qemu guest).

Pools made by plain ``losetup``/``dmsetup``/``thin_restore`` stand in for
Docker's and LVM's: dmthin must attach to them, list their devices from
the metadata, and leave them as it found them."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dmthin import Pool, ReadOnly, UsageError
from dmthin.dm import loop, task
from dmthin.pooldir import device_prefix

pytestmark = pytest.mark.real_dm
MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pooldir(real_dm, tmp_path, tag):
    return tmp_path / tag / "pool"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(*argv: str) -> str:
    r = subprocess.run(list(argv), capture_output=True, text=True)
    assert r.returncode == 0, f"{argv}: {r.stderr}"
    return r.stdout.strip()


def python(code: str, *args: str) -> str:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_pool_and_thin_stay_active_after_the_process_exits(pooldir):
    python("import sys; from dmthin import Pool\n"
           "p = Pool.create(sys.argv[1], data_size='64M', metadata_size='4M', backend='kernel')\n"
           "p.create_thin(1, '8M').write(0, b'outlives me')\n"
           "p.close(keep_active=True)\n", str(pooldir))
    prefix = device_prefix(pooldir)
    assert task.exists(f"{prefix}-pool") and task.exists(f"{prefix}-1")
    with Pool.open(pooldir) as pool:            # a new process attaches, makes nothing
        thin = pool.thin(1)
        assert not thin.activated and thin.read(0, 11) == b"outlives me"
        pool.create_thin(2, "4M")                 # made here: removed on close
        assert thin.name == f"{prefix}-1" and pool.info().device_name == f"{prefix}-pool"
    assert task.exists(f"{prefix}-1") and not task.exists(f"{prefix}-2")
    with Pool.open(pooldir) as pool:
        pool.thin(1).deactivate()
        assert not task.exists(f"{prefix}-1")
        assert pool.thin_ids() == [1, 2]
    assert task.exists(f"{prefix}-pool")          # attached to: left active
    pool = Pool.open(pooldir)
    pool.deactivate()
    assert not task.exists(f"{prefix}-pool")
    assert not [n for n, b in loop.list_attached() if str(pooldir) in b]


def test_attach_by_device_path_and_names_given_by_the_caller(pooldir):
    docker = "docker-7:0-42-pool"                 # names as Docker's driver makes them
    with Pool.create(pooldir, data_size="64M", metadata_size="4M", backend="kernel",
                     name=f"{pooldir.parent.name}-{docker}") as made:
        made.close(keep_active=True)
    name = f"{pooldir.parent.name}-{docker}"
    with Pool.open(f"/dev/mapper/{name}") as pool:   # Docker's dm.thinpooldev
        assert pool.info().device_name == name and pool.config.data_block_sectors == 128
        thin = pool.create_thin(4, "4M", name=f"{pooldir.parent.name}-docker-7:0-42-abc")
        assert thin.name == f"{pooldir.parent.name}-docker-7:0-42-abc"
        thin.write(0, b"layer")
        pool.close(keep_active=True)
    with Pool.open(f"/dev/mapper/{name}", readonly=True) as pool:
        assert pool.thin_ids() == [4]
        assert pool.thin(4).read(0, 5) == b"layer"
    with Pool.open(pooldir) as pool:              # the same pool, by its directory
        assert pool.info().device_name == name
        assert pool.thin(4).read(0, 5) == b"layer"
        pool.deactivate()
    assert not task.exists(name)


def test_adopt_a_live_pool_made_by_dmsetup(real_dm, tmp_path, tag):
    d = tmp_path / tag
    d.mkdir()
    for f, size in (("data", 64 * MiB), ("metadata", 4 * MiB)):
        with open(d / f, "wb") as fh:
            fh.truncate(size)
    meta = run("losetup", "-f", "--show", str(d / "metadata"))
    data = run("losetup", "-f", "--show", str(d / "data"))
    pool_name, thin_name = f"{tag}-pool", f"{tag}-t3"
    try:
        run("dmsetup", "create", pool_name, "--table",
            f"0 {64 * MiB // 512} thin-pool {meta} {data} 128 32768 1 skip_block_zeroing")
        run("dmsetup", "message", pool_name, "0", "create_thin 3")
        run("dmsetup", "message", pool_name, "0", "create_thin 5")
        pool_dev = run("dmsetup", "info", "-c", "--noheadings", "-o", "major,minor",
                       pool_name).replace(" ", "")
        run("dmsetup", "create", thin_name, "--table", f"0 16384 thin {pool_dev} 3")
        with open(f"/dev/mapper/{thin_name}", "r+b", buffering=0) as f:
            f.write(b"made by dmsetup".ljust(4096, b"\0"))
            os.fsync(f.fileno())
        before = sorted(os.listdir(d))
        with Pool.adopt(d, backend="kernel", name=pool_name) as pool:
            assert pool.info().device_name == pool_name
            assert pool.thin_ids() == [3, 5]           # from the metadata, not pool.json
            assert pool.table_line().endswith("128 32768 1 skip_block_zeroing ")
            t3 = pool.thin(3)                          # already active: attached
            assert t3.name == thin_name and not t3.activated
            assert t3.read(0, 15) == b"made by dmsetup"
            with pytest.raises(UsageError, match="no recorded size"):
                pool.thin(5)
        assert sorted(os.listdir(d)) == before         # nothing written: no pool.json, .lock
        assert task.exists(pool_name) and task.exists(thin_name)
    finally:
        for name in (thin_name, pool_name):
            subprocess.run(["dmsetup", "remove", name], capture_output=True)
        for dev in (meta, data):
            subprocess.run(["losetup", "-d", dev], capture_output=True)


XML = """<superblock uuid="" time="1" transaction="7" flags="0" version="2" \
data_block_size="128" nr_data_blocks="256">
  <device dev_id="5" mapped_blocks="1" transaction="6" creation_time="0" snap_time="1">
    <single_mapping origin_block="0" data_block="2" time="0"/>
  </device>
</superblock>
"""


@pytest.mark.parametrize("backend", ["kernel", "sim"])
def test_adopt_read_only_an_inactive_pool_made_by_thin_restore(real_dm, tmp_path, tag, backend):
    d = tmp_path / tag
    d.mkdir()
    (d / "in.xml").write_text(XML)
    with open(d / "metadata", "wb") as f:
        f.truncate(4 * MiB)
    with open(d / "data", "wb") as f:
        f.truncate(16 * MiB)
        f.seek(2 * 65536)
        f.write(b"restored block")
    with loop.attach(d / "metadata") as dev:      # thin_restore wants O_DIRECT: not on tmpfs
        run("thin_restore", "-i", str(d / "in.xml"), "-o", dev.path)
    sums = {f: sha(d / f) for f in ("metadata", "data")}
    with Pool.adopt(d, backend=backend, readonly=True) as pool:
        assert pool.thin_ids() == [5]
        assert pool.status().transaction_id == 7
        thin = pool.thin(5, size="1M")
        assert thin.read(0, 14) == b"restored block"
        with pytest.raises(ReadOnly):
            thin.write(0, b"x")
        with pytest.raises(ReadOnly):
            pool.create_thin(6, "1M")
    assert {f: sha(d / f) for f in ("metadata", "data")} == sums
    assert sorted(os.listdir(d)) == ["data", "in.xml", "metadata"]


def test_read_only_open_of_a_dmthin_pool_changes_nothing(pooldir):
    with Pool.create(pooldir, data_size="32M", metadata_size="4M", backend="sim") as pool:
        pool.create_thin(1, "4M").write(100, b"sim wrote this")
    sums = {f: sha(pooldir / f) for f in ("metadata", "data", "pool.json")}
    with Pool.open(pooldir, backend="kernel", readonly=True) as pool:
        assert pool.status().mode.value == "ro"
        assert pool.thin(1).read(100, 14) == b"sim wrote this"
        assert pool.thin_ids() == [1]
    assert {f: sha(pooldir / f) for f in ("metadata", "data", "pool.json")} == sums


def test_thin_ids_come_from_the_metadata(pooldir):
    with Pool.create(pooldir, data_size="32M", metadata_size="4M", backend="kernel") as pool:
        task.message(pool.info().device_name or "", "create_thin 9")   # behind our back
        assert pool.thin_ids() == [9]
        assert pool.status().held_root is None       # the snapshot was released
        pool.message("create_thin 7")
        assert pool.thin_ids() == [7, 9]
        with pytest.raises(UsageError, match="no recorded size"):
            pool.thin(7)
        assert pool.thin(7, size="1M").size == MiB


def test_resize_data_and_metadata_live(pooldir):
    with Pool.create(pooldir, data_size="16M", metadata_size="4M", backend="kernel") as pool:
        thin = pool.create_thin(1, "64M")
        thin.write(0, b"a" * (8 * MiB))
        assert pool.status().total_data_blocks == 256
        pool.resize_data("32M")
        st = pool.status()
        assert st.total_data_blocks == 512 and st.used_data_blocks == 128
        thin.write(20 * MiB, b"b" * (12 * MiB))           # needs the new space
        assert thin.read(8 * MiB - 1, 2) == b"a\0"
        pool.resize_metadata("8M")
        assert pool.status().total_metadata_blocks == 2048
        assert os.path.getsize(pooldir / "data") == 32 * MiB
