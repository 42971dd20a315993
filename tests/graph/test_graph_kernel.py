"""The graph driver on real device-mapper (root + dm-thin; run in the qemu
guest: tools/vmrun -- python3 -m pytest -m real_dm tests/graph).

Docker's graphtest cases (CreateEmpty, CreateBase, CreateSnap,
DeepLayerRead(128), DiffApply, Changes, SetQuota) on mounted rootfs
directories, plus restart with an open transaction, id collision retry,
busy remove with deferred deletion, loop file growth on restart, and a
shutdown that leaves no dm or loop device behind.
"""
import errno
import os
import stat
import subprocess
import sys
import tarfile
import textwrap

import pytest

from dmthin import Pool
from dmthin.graph import Driver
from dmthin.graph.differ import ADD, DELETE, MODIFY, Change

pytestmark = pytest.mark.real_dm

MB = 1 << 20
OPTS = ("dm.loopdatasize=300M", "dm.loopmetadatasize=200M", "dm.basesize=64M", "dm.fs=ext4")


@pytest.fixture
def driver(tmp_path):
    d = Driver(tmp_path / "root", OPTS, backend="kernel", cleanup_interval=None)
    yield d
    d.cleanup()


def dm_names():
    out = subprocess.run(["dmsetup", "ls"], capture_output=True, text=True).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.strip() and "No devices" not in ln]


def loops_on(path):
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if str(path) in ln]


def read_dir(path):
    return sorted(n for n in os.listdir(path) if n != "lost+found")


def create_base(driver, name):
    old = os.umask(0)
    try:
        driver.create_read_write(name, "")
        d = driver.get(name)
        try:
            sub = os.path.join(d, "a subdir")
            os.mkdir(sub, 0o705 | stat.S_ISVTX)
            os.chmod(sub, 0o705 | stat.S_ISVTX)
            os.chown(sub, 1, 2)
            f = os.path.join(d, "a file")
            with open(f, "wb") as fh:
                fh.write(b"Some data")
            os.chmod(f, 0o222 | stat.S_ISUID)
        finally:
            driver.put(name)
    finally:
        os.umask(old)


def verify_base(driver, name):
    d = driver.get(name)
    try:
        st = os.lstat(os.path.join(d, "a subdir"))
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o705 | stat.S_ISVTX, 1, 2)
        assert stat.S_ISDIR(st.st_mode)
        st = os.lstat(os.path.join(d, "a file"))
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o222 | stat.S_ISUID, 0, 0)
        assert read_dir(d) == ["a file", "a subdir"]
    finally:
        driver.put(name)


def test_create_empty(driver):
    driver.create("empty", "")
    assert driver.exists("empty")
    d = driver.get("empty")
    st = os.stat(d)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o755, 0, 0)
    assert read_dir(d) == []
    assert open(os.path.join(os.path.dirname(d), "id")).read() == "empty"
    assert driver.get("empty") == d                       # refcount 2
    driver.put("empty")
    assert os.path.ismount(os.path.dirname(d))
    driver.put("empty")
    assert not os.path.exists(os.path.dirname(d))        # unmounted, mount point removed
    driver.remove("empty")
    assert not driver.exists("empty")


def test_create_base_and_snap(driver):
    create_base(driver, "Base")
    verify_base(driver, "Base")
    driver.create("Snap", "Base")
    verify_base(driver, "Snap")


@pytest.mark.slow
def test_deep_layer_read_128(driver):
    n = 128
    driver.create("layer-0", "")
    d = driver.get("layer-0")
    with open(os.path.join(d, "testfile.txt"), "w") as f:
        f.write("base")
    driver.put("layer-0")
    for i in range(1, n + 1):
        driver.create(f"layer-{i}", f"layer-{i-1}")
        d = driver.get(f"layer-{i}")
        with open(os.path.join(d, "top-id"), "w") as f:
            f.write(f"layer-{i}")
        os.mkdir(os.path.join(d, f"layer-{i}"))
        for name, val in (("layer-id", f"layer-{i}"), ("parent-id", f"layer-{i-1}")):
            with open(os.path.join(d, f"layer-{i}", name), "w") as f:
                f.write(val)
        driver.put(f"layer-{i}")
    d = driver.get(f"layer-{n}")
    try:
        layer = open(os.path.join(d, "top-id")).read()
        for _i in range(n, 0, -1):
            assert open(os.path.join(d, layer, "layer-id")).read() == layer
            layer = open(os.path.join(d, layer, "parent-id")).read()
        assert layer == "layer-0"
        assert open(os.path.join(d, "testfile.txt")).read() == "base"
    finally:
        driver.put(f"layer-{n}")


def _populate(driver, name, count=10):
    driver.create(name, "")
    d = driver.get(name)
    os.makedirs(os.path.join(d, "dir"))
    os.makedirs(os.path.join(d, "var/lib"))
    for i in range(count):
        with open(os.path.join(d, f"dir/file-{i}"), "wb") as f:
            f.write(f"base {i}".encode() * 50)
    with open(os.path.join(d, "var/lib/db"), "wb") as f:
        f.write(b"db")
    driver.put(name)


def test_diff_apply(driver):
    _populate(driver, "lower")
    driver.create("upper", "lower")
    d = driver.get("upper")
    os.unlink(os.path.join(d, "dir/file-3"))
    subprocess.run(["rm", "-rf", os.path.join(d, "var/lib")], check=True)
    with open(os.path.join(d, "dir/file-1"), "wb") as f:
        f.write(b"changed!" * 300)
    with open(os.path.join(d, "new"), "wb") as f:
        f.write(b"brand new" * 1000)
    driver.put("upper")
    size = driver.diff_size("upper", "lower")
    assert size == 2400 + 9000
    arch = driver.diff("upper", "lower")
    assert "var/.wh.lib" in tarfile.open(fileobj=arch).getnames()
    arch.seek(0)
    driver.create("applied", "lower")
    assert driver.apply_diff("applied", "lower", arch) == size
    d = driver.get("applied")
    try:
        assert not os.path.exists(os.path.join(d, "dir/file-3"))
        assert not os.path.exists(os.path.join(d, "var/lib"))
        assert open(os.path.join(d, "dir/file-1"), "rb").read() == b"changed!" * 300
        assert open(os.path.join(d, "new"), "rb").read() == b"brand new" * 1000
    finally:
        driver.put("applied")


def test_changes(driver):
    _populate(driver, "lower", count=20)
    driver.create("upper", "lower")
    d = driver.get("upper")
    expected = [Change("/dir", MODIFY)]
    for j in range(20):
        if j % 3 == 0:
            with open(os.path.join(d, f"dir/file-{j}"), "ab") as f:
                f.write(b"more")
            expected.append(Change(f"/dir/file-{j}", MODIFY))
        elif j % 3 == 1:
            with open(os.path.join(d, f"dir/added-{j}"), "wb") as f:
                f.write(b"added")
            expected.append(Change(f"/dir/added-{j}", ADD))
        else:
            os.unlink(os.path.join(d, f"dir/file-{j}"))
            expected.append(Change(f"/dir/file-{j}", DELETE))
    driver.put("upper")
    assert driver.changes("upper", "lower") == sorted(expected)


def test_set_quota(tmp_path):
    drv = Driver(tmp_path / "root", (*OPTS[:2], "dm.basesize=16M", "dm.fs=ext4"),
                 backend="kernel", cleanup_interval=None)
    try:
        drv.create("zfs", "", {"size": "50M"})
        d = drv.get("zfs")
        try:
            with open(os.path.join(d, "file"), "wb") as f:
                f.write(b"\1" * (25 * MB))
            with pytest.raises(OSError) as exc, \
                    open(os.path.join(d, "bigfile"), "wb") as f:  # noqa: PT011 - errno below
                f.write(b"\1" * (50 * MB))
            assert exc.value.errno in (errno.ENOSPC, errno.EDQUOT)
        finally:
            drv.put("zfs")
    finally:
        drv.cleanup()


CRASH = textwrap.dedent("""
    import os, sys
    sys.path[:0] = [{repo!r}]
    from dmthin.graph import DeviceSet
    ds = DeviceSet({root!r}, {opts!r}, backend="kernel", cleanup_interval=None)
    def crash(old, new):
        os._exit(9)
    ds.pool.set_transaction_id = crash
    ds.add_device("victim", "")
""")


def test_restart_rolls_back_open_transaction(tmp_path):
    root = tmp_path / "root"
    Driver(root, OPTS, backend="kernel", cleanup_interval=None).cleanup()
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", CRASH.format(repo=repo, root=str(root),
                                                              opts=OPTS)],
                          capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    drv = Driver(root, OPTS, backend="kernel", cleanup_interval=None)
    try:
        assert not drv.exists("victim")
        assert not (root / "metadata/transaction-metadata").exists()
        assert 2 not in drv.deviceset.live_pool.thin_ids()
        drv.create("after", "")
        assert drv.get_metadata("after")["DeviceId"] == "2"
        pool_name = drv.deviceset.pool_name
    finally:
        drv.cleanup()
    # the crashed process left its pool active (kernel state persists, as after a killed
    # dockerd); the restarted driver attached to it, so it does not tear it down
    assert pool_name in dm_names()
    Pool.open(root / "devicemapper", backend="kernel").deactivate()
    assert not [n for n in dm_names() if n.startswith(("dmthin-", "docker-"))]


def test_id_collision_retry(driver):
    driver.deviceset.live_pool.create_thin(2, "1M", activate=False)
    driver.create("a", "")
    assert driver.get_metadata("a")["DeviceId"] == "3"


def test_busy_remove_is_deferred(driver, tmp_path):
    driver.create("ctr", "")
    d = driver.get("ctr")
    leak = tmp_path / "leak"
    leak.mkdir()
    thin = driver.deviceset.activate_device("ctr")
    subprocess.run(["mount", thin.path, str(leak)], check=True)   # a leaked second mount
    try:
        driver.put("ctr")
        assert not os.path.ismount(d)
        driver.remove("ctr")                                 # EBUSY -> deferred deletion
        assert driver.exists("ctr")
        assert dict(driver.status())["Deferred Deleted Device Count"] == "1"
    finally:
        subprocess.run(["umount", str(leak)], check=True)
    driver.deviceset.cleanup_deleted_devices()
    assert not driver.exists("ctr")
    assert dict(driver.status())["Deferred Deleted Device Count"] == "0"


def test_loop_file_growth_on_restart(tmp_path):
    root = tmp_path / "root"
    Driver(root, OPTS, backend="kernel", cleanup_interval=None).cleanup()
    drv = Driver(root, ("dm.loopdatasize=310M", *OPTS[1:]), backend="kernel",
                 cleanup_interval=None)
    try:
        assert (root / "devicemapper/data").stat().st_size == 310 * MB
        status = drv.status()
        st = dict(status)
        assert st["Data Space Total"] == "325.1MB"
        # Docker's kernel-mode fields: the real dm pool name (Docker's), the loop
        # devices, libdevmapper's version (no udevd in the guest: no udev sync)
        assert st["Pool Name"] == drv.deviceset.prefix + "-pool"
        assert st["Pool Name"] in dm_names()
        assert st["Data file"].startswith("/dev/loop")
        assert st["Metadata file"].startswith("/dev/loop")
        assert st["Library Version"].startswith("1.02.")
        assert st["Udev Sync Supported"] == "false"
        names = [k for k, _v in status]
        assert names.index("Udev Sync Supported") < names.index("Data file") \
            < names.index("Metadata file") < names.index("Data loop file")
    finally:
        drv.cleanup()


def test_shutdown_leaves_no_dm_or_loop_device(tmp_path):
    root = tmp_path / "root"
    drv = Driver(root, OPTS, backend="kernel", cleanup_interval=None)
    drv.create("a", "")
    drv.get("a")
    drv.create("b", "a")
    drv.deviceset.activate_device("b")
    assert dm_names()
    drv.cleanup()
    assert not [n for n in dm_names() if n.startswith(("dmthin-", "docker-"))]
    assert not loops_on(root / "devicemapper")
