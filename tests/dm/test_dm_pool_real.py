"""The pool lifecycle through ``dmthin.Pool(backend="kernel")`` on the real
kernel, checked with the kernel's own status, mkfs/mount, and
thin-provisioning-tools.  Runs in the qemu guest (tools/vmrun)."""
from __future__ import annotations

import errno
import os
import re
import subprocess

import pytest

from dmthin import Pool, errors
from dmthin.dm import loop, task
from dmthin.dm.pool import device_prefix

pytestmark = pytest.mark.real_dm
MiB = 1 << 20


@pytest.fixture
def pooldir(real_dm, tmp_path, tag):
    """A pool directory whose files carry the delete-me tag."""
    return tmp_path / tag / "pool"


def run(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, **kw)


def thin_check_file(path: str) -> subprocess.CompletedProcess:
    """thin_check 0.9.0 on a metadata file (via a read-only loop device:
    it opens with O_DIRECT, which tmpfs refuses)."""
    with loop.attach(path, read_only=True) as dev:
        return run("thin_check", dev.path)


def _backing_files() -> list[str]:
    out = []
    for name in sorted(os.listdir("/sys/block")):
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as f:
                out.append(f"{name} {f.read().strip()}")
        except OSError:
            pass
    return out


def test_names_status_and_table_follow_the_kernel(pooldir):
    dm_before = run("dmsetup", "ls").stdout
    loops_before = _backing_files()
    with Pool.create(pooldir, data_size="256M", metadata_size="8M", backend="kernel") as pool:
        prefix = device_prefix(pooldir)
        assert re.fullmatch(r"dmthin-\d+:\d+-\d+", prefix)
        info = task.info(f"{prefix}-pool")
        assert info.exists
        assert pool.backend == "kernel"
        meta, data = loop.find(pooldir / "metadata"), loop.find(pooldir / "data")
        # Docker's table: <meta> <data> <block sectors> <low water mark> <features>
        assert pool.table_line() == (f"0 {256 * MiB // 512} thin-pool {meta.dev} {data.dev} "
                                     f"128 {pool.config.low_water_mark} 0 ")
        out = run("dmsetup", "status", f"{prefix}-pool").stdout.rstrip("\n")
        assert out == f"0 {256 * MiB // 512} thin-pool {pool.status_line()}"
        st = pool.status()
        assert st.transaction_id == 0 and st.total_data_blocks == 256 * MiB // (64 << 10)
        assert st.total_metadata_blocks == 8 * MiB // 4096 and st.used_data_blocks == 0
        assert f"{prefix}-pool" in run("dmsetup", "ls").stdout
        assert any(str(pooldir / "data") in b for b in _backing_files())
    # teardown, seen by dmsetup and sysfs rather than by the binding
    assert run("dmsetup", "ls").stdout == dm_before
    assert _backing_files() == loops_before


def test_thin_io_status_discard_and_errnos(pooldir):
    with Pool.create(pooldir, data_size="64M", metadata_size="4M", backend="kernel") as pool:
        thin = pool.create_thin(1, "32M")
        assert thin.path == task.node_path(f"{device_prefix(pooldir)}-1")
        assert thin.status_line() == "0 -"
        assert thin.table_line() == run("dmsetup", "table", os.path.basename(thin.path)) \
            .stdout.strip()
        payload = os.urandom(200_000)
        thin.write(70_000, payload)                  # unaligned both ends
        thin.flush()
        assert thin.read(70_000, len(payload)) == payload
        assert thin.read(0, 100) == bytes(100)
        bs = 128
        assert thin.status().mapped_sectors == 4 * bs      # 64K blocks 1..4
        assert thin.status().highest_mapped_sector == 5 * bs - 1
        assert pool.status().used_data_blocks == 4
        thin.discard(0, 32 * MiB)
        thin.flush()
        assert thin.status_line() == "0 -"
        assert thin.read(70_000, 100) == bytes(100)
        with pytest.raises(errors.DeviceExists) as e1:
            pool.create_thin(1, "1M")
        with pytest.raises(errors.DeviceNotFound) as e2:
            pool.message("delete 99")
        assert (e1.value.errno, e2.value.errno) == (errno.EEXIST, errno.ENODATA)
        fd = os.open(thin.path, os.O_RDONLY)
        try:
            with pytest.raises(errors.Busy):
                pool.delete(1)
        finally:
            os.close(fd)
        path = thin.path
        pool.delete(1)
        assert not os.path.exists(path)
        assert pool.thin_ids() == []


def test_ext4_snapshot_and_read_back(pooldir, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    content = os.urandom(3 * MiB)
    with Pool.create(pooldir, data_size="512M", metadata_size="16M", backend="kernel") as pool:
        origin = pool.create_thin(1, "128M")
        assert run("mkfs.ext4", "-q", "-E", "nodiscard", origin.path).returncode == 0
        subprocess.run(["mount", origin.path, str(mnt)], check=True)
        try:
            (mnt / "file").write_bytes(content)
            os.sync()
            snap = pool.create_snap(2, 1)                # origin mounted: suspended around it
            (mnt / "file").write_bytes(b"changed after the snapshot")
            with pytest.raises(errors.Busy, match=f"mounted on {mnt}"):
                origin.deactivate()
            assert origin.active            # a refused deactivation keeps it active
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
        subprocess.run(["mount", "-o", "ro", snap.path, str(mnt)], check=True)
        try:
            assert (mnt / "file").read_bytes() == content
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
        assert run("fsck.ext4", "-n", "-f", snap.path).returncode == 0
        s1, s2 = origin.status(), snap.status()
        assert s1.mapped_sectors > 0 and s2.mapped_sectors > 0
        assert pool.status().transaction_id == 0


def test_metadata_snapshot_and_thin_dump_of_the_live_pool(pooldir):
    with Pool.create(pooldir, data_size="128M", metadata_size="8M", backend="kernel") as pool:
        thin = pool.create_thin(5, "16M")
        thin.write(0, b"x" * (256 << 10))
        thin.flush()
        pool.create_snap(6, 5)
        pool.set_transaction_id(0, 1)
        pool.reserve_metadata_snap()
        held = pool.status().held_root
        assert held is not None
        meta = loop.find(pooldir / "metadata")
        dump = run("thin_dump", "-m", meta.path)
        assert dump.returncode == 0, dump.stderr
        assert 'transaction="1"' in dump.stdout
        assert '<device dev_id="5" mapped_blocks="4"' in dump.stdout
        assert '<device dev_id="6" mapped_blocks="4"' in dump.stdout
        explicit = run("thin_dump", f"--metadata-snap={held}", meta.path)
        assert explicit.stdout == dump.stdout
        with pytest.raises(errors.Busy):
            pool.reserve_metadata_snap()
        pool.release_metadata_snap()
        assert pool.status().held_root is None
    check = thin_check_file(str(pooldir / "metadata"))
    assert check.returncode == 0, check.stdout + check.stderr


def test_reopen_keeps_data_and_attaches_to_a_live_pool(pooldir):
    pool = Pool.create(pooldir, data_size="64M", metadata_size="4M", backend="kernel")
    pool.create_thin(1, "8M").write(4096, b"persist me")
    pool.close()
    assert not task.exists(f"{device_prefix(pooldir)}-pool")
    with Pool.open(pooldir) as pool:
        assert pool.backend == "kernel" and pool.thin_ids() == [1]
        assert pool.thin(1).read(4096, 10) == b"persist me"
        pool.close(keep_active=True)              # as if the process went away
    name = f"{device_prefix(pooldir)}-pool"
    assert task.exists(name) and task.exists(f"{device_prefix(pooldir)}-1")
    with Pool.open(pooldir) as pool:                  # attaches to pool and thin
        assert [t.dev_id for t in pool.active_thins()] == [1]
        assert not pool.thin(1).activated
        assert pool.thin(1).read(4096, 10) == b"persist me"
    # what this object did not make, it leaves active
    assert task.exists(name) and task.exists(f"{device_prefix(pooldir)}-1")
    Pool.open(pooldir).deactivate()
    assert not task.exists(name) and not task.exists(f"{device_prefix(pooldir)}-1")


def test_create_fails_cleanly_part_way(pooldir):
    """A pool table the kernel refuses: nothing stays behind (the fixture
    compares dm and loop devices before and after)."""
    with pytest.raises(errors.ThinOSError) as exc:
        # a read_only pool never formats metadata: the kernel says EPERM
        Pool.create(pooldir, data_size="64M", metadata_size="2M", block_size="64K",
                    features=("read_only",), backend="kernel")
    assert exc.value.errno == errno.EPERM
    assert "\n" not in str(exc.value) and "dmesg" in str(exc.value)


def test_out_of_data_space_is_enospc(pooldir):
    with Pool.create(pooldir, data_size="1M", metadata_size="4M", backend="kernel",
                     low_water_mark=0, features=("error_if_no_space",)) as pool:
        thin = pool.create_thin(1, "4M")
        thin.write(0, b"a" * MiB)                     # exactly the 16 blocks
        with pytest.raises(errors.NoSpace) as exc:
            thin.write(MiB, b"b" * (64 << 10))
        assert exc.value.errno == errno.ENOSPC
        assert pool.status().mode.value == "out_of_data_space"


def test_sim_pool_opens_on_the_kernel(pooldir):
    with Pool.create(pooldir, data_size="64M", metadata_size="4M", backend="sim") as pool:
        pool.create_thin(3, "8M").write(65536 * 2 + 7, b"from the simulator")
        pool.create_snap(4, 3)
    with Pool.open(pooldir, backend="kernel") as pool:
        assert pool.thin(4).read(65536 * 2 + 7, 18) == b"from the simulator"
        assert pool.thin(3).status().mapped_sectors == 128
        pool.thin(4).write(0, b"kernel")
    check = thin_check_file(str(pooldir / "metadata"))
    assert check.returncode == 0, check.stdout + check.stderr
