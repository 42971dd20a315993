"""Every binding call against the real kernel, and its errors with their
errno.  Runs in the qemu guest (tools/vmrun); cross-checked with dmsetup."""
from __future__ import annotations

import errno
import os
import subprocess
import time

import pytest

from dmthin import errors
from dmthin.dm import loop, task

pytestmark = pytest.mark.real_dm
MiB = 1 << 20


def dmsetup(*args: str) -> str:
    return subprocess.run(["dmsetup", *args], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def zero_dev(real_dm, tag):
    name = f"{tag}-zero"
    info = task.create(name, "0 2048 zero")
    yield name, info
    if task.exists(name):
        task.remove(name, check_busy=False)


@pytest.fixture
def pool_dev(real_dm, tag, sparse):
    """A bare thin-pool over two loop devices (no facade)."""
    meta = loop.attach(sparse("meta", 4 * MiB))
    data = loop.attach(sparse("data", 64 * MiB))
    name = f"{tag}-pool"
    info = task.create(name, [(0, 64 * MiB // 512, "thin-pool",
                               f"{meta.dev} {data.dev} 128 0 0")],
                       udev_flags=task.PRIVATE_UDEV_FLAGS)
    meta.close()
    data.close()        # autoclear: they go with the pool
    yield name, info
    for dev, _maj, _min in task.list_devices():
        if dev.startswith(tag) and dev != name:
            task.remove(dev, check_busy=False)
    task.remove(name, check_busy=False)
    assert loop.wait_detached([meta.number, data.number]) == []


def test_versions_match_dmsetup(real_dm):
    out = dmsetup("version")
    assert f"Driver version:    {task.driver_version()}" in out
    assert task.library_version().split()[0] in out
    targets = task.target_versions()
    assert "thin-pool" in targets and "thin" in targets
    listed = dmsetup("targets")
    v = targets["thin-pool"]
    assert f"thin-pool        v{v[0]}.{v[1]}.{v[2]}" in listed
    assert task.udev_sync() is False      # no udevd in the guest


def test_create_info_table_status_list_remove(zero_dev):
    name, info = zero_dev
    assert info.exists and info.live_table and not info.suspended
    assert info.open_count == 0 and info.target_count == 1
    assert os.path.exists(task.node_path(name))          # made without udev
    st = os.stat(task.node_path(name))
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (info.major, info.minor)
    assert task.info(name) == info
    assert [t.line() for t in task.table(name)] == ["0 2048 zero "]
    assert dmsetup("table", name).strip() == "0 2048 zero"
    assert [t.line() for t in task.status(name)] == ["0 2048 zero "]
    assert (name, info.major, info.minor) in task.list_devices()
    assert task.deps(name) == []
    task.remove(name)
    assert not task.exists(name) and not os.path.exists(task.node_path(name))


def test_suspend_reload_resume(zero_dev):
    name, _ = zero_dev
    task.suspend(name)
    assert task.info(name).suspended
    assert dmsetup("info", "-c", "--noheadings", "-o", "attr", name).strip()[2] == "s"
    task.reload(name, "0 4096 zero")
    assert task.info(name).inactive_table
    assert task.table(name)[0].length == 2048      # live table until resume
    task.resume(name)
    i = task.info(name)
    assert not i.suspended and not i.inactive_table
    assert task.table(name)[0].length == 4096


def test_create_existing_name_is_eexist(zero_dev):
    name, _ = zero_dev
    with pytest.raises(errors.DeviceExists) as exc:
        task.create(name, "0 8 zero")
    assert exc.value.errno == errno.EEXIST and name in str(exc.value)
    assert task.table(name)[0].length == 2048       # untouched


@pytest.mark.parametrize(("table", "code"), [
    ("0 2048 no-such-target", errno.EINVAL),
    ("0 2048 linear 250:250 0", errno.ENXIO),
    ("0 2048 thin-pool 1:1", errno.EINVAL)])   # too few arguments
def test_bad_table_fails_and_leaves_nothing(real_dm, tag, table, code):
    name = f"{tag}-bad"
    with pytest.raises(errors.ThinOSError) as exc:
        task.create(name, table)
    assert exc.value.errno == code, str(exc.value)
    assert "\n" not in str(exc.value)
    assert not task.exists(name)


def test_missing_device_is_enxio(real_dm, tag):
    name = f"{tag}-missing"
    assert task.info(name).exists is False
    for call in (task.remove, task.table, task.status, task.deps, task.suspend, task.resume,
                 lambda n: task.message(n, "create_thin 0")):
        with pytest.raises(errors.ThinOSError) as exc:
            call(name)
        assert exc.value.errno == errno.ENXIO, (call, exc.value)


def test_remove_open_device_is_ebusy_after_bounded_retry(zero_dev):
    name, _ = zero_dev
    fd = os.open(task.node_path(name), os.O_RDONLY)
    try:
        assert task.info(name).open_count == 1
        t0 = time.monotonic()
        with pytest.raises(errors.Busy) as exc:
            task.remove(name, retry_seconds=0.3)
        assert 0.3 <= time.monotonic() - t0 < 5
        assert exc.value.errno == errno.EBUSY
    finally:
        os.close(fd)
    task.remove(name)


def test_remove_succeeds_when_closed_during_retry(zero_dev):
    name, _ = zero_dev
    fd = os.open(task.node_path(name), os.O_RDONLY)
    import threading
    threading.Timer(0.2, os.close, args=(fd,)).start()
    task.remove(name, retry_seconds=3)
    assert not task.exists(name)


def test_deferred_remove(zero_dev):
    name, _ = zero_dev
    fd = os.open(task.node_path(name), os.O_RDONLY)
    try:
        task.remove(name, deferred=True)
        i = task.info(name)
        assert i.exists and i.deferred_remove
    finally:
        os.close(fd)
    deadline = time.monotonic() + 5
    while task.exists(name) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not task.exists(name)
    task.release()     # libdevmapper drops the node it no longer needs


def test_remove_refuses_a_mounted_device_naming_the_mount(real_dm, tag, sparse, tmp_path):
    data = loop.attach(sparse("fs", 16 * MiB))
    name = f"{tag}-lin"
    task.create(name, [(0, 16 * MiB // 512, "linear", f"{data.dev} 0")])
    data.close()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mkfs.ext4", "-q", task.node_path(name)], check=True)
    subprocess.run(["mount", task.node_path(name), str(mnt)], check=True)
    try:
        with pytest.raises(errors.Busy, match=f"mounted on {mnt}"):
            task.remove(name)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    task.remove(name)
    assert loop.wait_detached([data.number]) == []


def test_pool_messages_and_their_errnos(pool_dev):
    name, _info = pool_dev
    assert task.message(name, "create_thin 0") is None
    with pytest.raises(errors.DeviceExists) as e1:
        task.message(name, "create_thin 0")
    with pytest.raises(errors.DeviceNotFound) as e2:
        task.message(name, "delete 7")
    with pytest.raises(errors.InvalidArgument):
        task.message(name, "no_such_message 1")
    with pytest.raises(errors.InvalidArgument):
        task.message(name, "set_transaction_id 3 4")       # mismatched id
    with pytest.raises(errors.InvalidArgument):
        task.message(name, "release_metadata_snap")        # none held
    assert (e1.value.errno, e2.value.errno) == (errno.EEXIST, errno.ENODATA)
    task.message(name, "set_transaction_id 0 4")
    task.message(name, "reserve_metadata_snap")
    with pytest.raises(errors.Busy):
        task.message(name, "reserve_metadata_snap")
    status = task.status(name)[0].params.split()
    assert status[0] == "4" and status[3] != "-"
    task.message(name, "release_metadata_snap")
    assert task.status(name)[0].params.split()[3] == "-"


def test_thin_device_table_deps_and_missing_id(pool_dev, tag):
    pool, pinfo = pool_dev
    task.message(pool, "create_thin 3")
    thin = f"{tag}-3"
    tinfo = task.create(thin, [(0, 8192, "thin", f"{pinfo.dev} 3")])
    assert task.deps(thin) == [(pinfo.major, pinfo.minor)]
    assert task.table(thin)[0].line() == f"0 8192 thin {pinfo.dev} 3"
    assert task.status(thin)[0].params == "0 -"
    with pytest.raises(errors.Busy):        # deleting an active thin
        task.message(pool, "delete 3")
    with pytest.raises(errors.Busy, match=f"held by {thin}"):
        task.remove(pool)                    # the thin holds the pool
    with pytest.raises(errors.DeviceNotFound):
        task.create(f"{tag}-9", [(0, 8192, "thin", f"{pinfo.dev} 9")])
    assert not task.exists(f"{tag}-9")
    task.remove(thin)
    task.message(pool, "delete 3")
    assert tinfo.minor != pinfo.minor
