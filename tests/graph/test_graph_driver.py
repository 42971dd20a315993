"""Driver on the simulator: Docker's graphtest cases where the filesystem is
reached through Driver.open_fs (debugfs on image mirrors of the thin
devices) instead of a mount.  Contents are checked by reading the ext4
back out of the thin device, and finally by e2fsck."""
import io
import stat
import subprocess
import tarfile

import pytest

from dmthin.errors import NotSupported
from dmthin.graph import Driver
from dmthin.graph.differ import ADD, DELETE, MODIFY, Change
from graph_helpers import SMALL, write_files


@pytest.fixture
def driver(tmp_path, backend):
    d = Driver(tmp_path / "root", SMALL, backend=backend, cleanup_interval=None)
    yield d
    d.cleanup()


def read(driver, id, path):
    with driver.open_fs(id) as tree, tree.open_read(path) as f:
        return f.read()


def listing(driver, id):
    with driver.open_fs(id) as tree:
        return {p: e for p, e in tree.walk().items() if p != "lost+found"
                and not p.startswith("lost+found/")}


def fsck(driver, id):
    """e2fsck -fn of the layer's device (an exported image in the simulator:
    the test's own copy; the driver itself never copies)."""
    with driver.deviceset.device_access(id, write=False) as path:
        proc = subprocess.run(["e2fsck", "-fn", path], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def create_base(driver, name):
    driver.create_read_write(name, "")
    write_files(driver, name, dirs=[("a subdir", 0o705 | stat.S_ISVTX, 1, 2)],
                files=[("a file", b"Some data", 0o222 | stat.S_ISUID, 0, 0)])


def verify_base(driver, name):
    files = listing(driver, name)
    assert sorted(files) == ["a file", "a subdir"]
    d, f = files["a subdir"], files["a file"]
    assert (stat.S_IMODE(d.mode), d.uid, d.gid, d.is_dir) == (0o705 | stat.S_ISVTX, 1, 2, True)
    assert (stat.S_IMODE(f.mode), f.uid, f.gid, f.size) == (0o222 | stat.S_ISUID, 0, 0, 9)
    assert read(driver, name, "a file") == b"Some data"


def test_create_empty(driver):
    driver.create("empty", "")
    assert driver.exists("empty")
    assert listing(driver, "empty") == {}
    meta = driver.get_metadata("empty")
    assert meta["DeviceId"] == "2" and meta["DeviceSize"] == str(16 << 20)
    assert meta["DeviceName"].endswith("-empty")
    driver.remove("empty")
    assert not driver.exists("empty")
    driver.remove("empty")                      # removing a missing layer is a no-op


def test_create_base_and_snap(driver):
    create_base(driver, "Base")
    verify_base(driver, "Base")
    driver.create("Snap", "Base")
    verify_base(driver, "Snap")
    fsck(driver, "Snap")


def test_get_is_not_supported_in_sim(driver):
    driver.create("x", "")
    with pytest.raises(NotSupported, match="kernel backend"):
        driver.get("x")


def test_deep_layer_read(driver):
    n = 12                                       # graphtest uses 128; kept small on the sim
    driver.create("layer-0", "")
    write_files(driver, "layer-0", files=[("testfile.txt", b"lower", 0o644, 0, 0)])
    for i in range(1, n + 1):
        driver.create(f"layer-{i}", f"layer-{i-1}")
        write_files(driver, f"layer-{i}", dirs=[(f"layer-{i}", 0o755, 0, 0)], files=[
            ("top-id", f"layer-{i}".encode(), 0o644, 0, 0),
            (f"layer-{i}/layer-id", f"layer-{i}".encode(), 0o644, 0, 0),
            (f"layer-{i}/parent-id", f"layer-{i-1}".encode(), 0o644, 0, 0)])
    top = f"layer-{n}"
    assert read(driver, top, "top-id") == top.encode()
    with driver.open_fs(top) as tree:
        layer = top
        for _i in range(n, 0, -1):
            with tree.open_read(f"{layer}/layer-id") as f:
                assert f.read() == layer.encode()
            with tree.open_read(f"{layer}/parent-id") as f:
                layer = f.read().decode()
        with tree.open_read("testfile.txt") as f:
            assert f.read() == b"lower"
    assert layer == "layer-0"


def _base_with_files(driver, name, count=10):
    driver.create(name, "")
    write_files(driver, name, dirs=[("dir", 0o755, 0, 0), ("var", 0o755, 0, 0),
                                    ("var/lib", 0o755, 0, 0)],
                files=[(f"dir/file-{i}", f"base {i}".encode() * 50, 0o644, 0, 0)
                       for i in range(count)] + [("var/lib/db", b"db", 0o600, 0, 0)])


def test_diff_apply(driver):
    _base_with_files(driver, "lower")
    driver.create("upper", "lower")
    write_files(driver, "upper", remove=["dir/file-3", "var/lib"],
                files=[("dir/file-1", b"changed!" * 300, 0o644, 0, 0),
                       ("new", b"brand new" * 1000, 0o640, 3, 4)])
    diff_size = driver.diff_size("upper", "lower")
    assert diff_size == 2400 + 9000
    arch = driver.diff("upper", "lower")
    names = tarfile.open(fileobj=arch).getnames()
    assert "dir/.wh.file-3" in names and "var/.wh.lib" in names and "var/lib/db" not in names
    arch.seek(0)
    driver.create("applied", "lower")
    size = driver.apply_diff("applied", "lower", arch)
    assert size == diff_size
    files = listing(driver, "applied")
    assert "dir/file-3" not in files and "var/lib" not in files and "var" in files
    assert read(driver, "applied", "dir/file-1") == b"changed!" * 300
    assert read(driver, "applied", "new") == b"brand new" * 1000
    assert (files["new"].uid, files["new"].gid, stat.S_IMODE(files["new"].mode)) == (3, 4, 0o640)
    assert [str(c) for c in driver.changes("applied", "lower")] == \
        [str(c) for c in driver.changes("upper", "lower")]
    fsck(driver, "applied")


def test_changes(driver):
    _base_with_files(driver, "lower", count=20)
    driver.create("upper", "lower")
    expected = []
    files, remove = [], []
    for j in range(20):
        if j % 3 == 0:
            files.append((f"dir/file-{j}", b"modified", 0o644, 0, 0))
            expected.append(Change(f"/dir/file-{j}", MODIFY))
        elif j % 3 == 1:
            files.append((f"dir/added-{j}", b"added", 0o644, 0, 0))
            expected.append(Change(f"/dir/added-{j}", ADD))
        else:
            remove.append(f"dir/file-{j}")
            expected.append(Change(f"/dir/file-{j}", DELETE))
    write_files(driver, "upper", files=files, remove=remove)
    expected.append(Change("/dir", MODIFY))
    assert driver.changes("upper", "lower") == sorted(expected)


def test_apply_diff_rejects_paths_outside_the_layer(driver):
    driver.create("x", "")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        ti = tarfile.TarInfo("../escape")
        ti.size = 1
        tar.addfile(ti, io.BytesIO(b"x"))
    from dmthin.errors import InvalidArgument
    with pytest.raises(InvalidArgument, match="outside the layer"):
        driver.apply_diff("x", "", buf.getvalue())


def test_layer_writes_share_blocks_with_parent(driver):
    """Writing one small file into a snapshot provisions a few blocks, not a
    copy of the parent's filesystem (the image mirror writes back only the
    chunks debugfs touched)."""
    _base_with_files(driver, "lower")
    pool = driver.deviceset.pool
    driver.create("child", "lower")
    before = pool.status().used_data_blocks
    write_files(driver, "child", files=[("one", b"1" * 1000, 0o644, 0, 0)])
    grown = pool.status().used_data_blocks - before
    assert 1 <= grown <= 8, grown


def test_xfs_base_in_sim(tmp_path, backend):
    """The simulator reads and writes files through libext2fs: dm.fs=xfs is
    refused when the base is made, naming dm.fs=ext4; then ext4 works."""
    opts = ("dm.loopdatasize=512M", "dm.loopmetadatasize=16M", "dm.basesize=300M")
    with pytest.raises(NotSupported, match=r"dm.fs=ext4"):
        Driver(tmp_path / "root", (*opts, "dm.fs=xfs"), backend=backend, cleanup_interval=None)
    drv = Driver(tmp_path / "root", (*opts, "dm.fs=ext4"), backend=backend,
                 cleanup_interval=None)
    try:
        assert dict(drv.status())["Backing Filesystem"] == "ext4"
        drv.create("x", "")
        with drv.open_fs("x") as tree:
            assert tree.walk() == {}
    finally:
        drv.cleanup()
