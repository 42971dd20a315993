"""udev's view of block devices without device-mapper (the host): pyudev
and the sysfs fallback used without libudev describe every block device
alike; loop devices with their backing files; waiting for nodes by polling
when no udevd runs.  The guest runs the same against dm devices, with and
without udevd (test_dm_udev_real.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import pyudev

from dmthin import blockdev, errors
from dmthin.dm import _lib, task, udev
from helpers import run_dmthin, skip_or_fail

MiB = 1 << 20


def _block_devices() -> list[tuple[int, int]]:
    out = []
    for name in sorted(os.listdir("/sys/block")):
        dev = blockdev.read_attr(f"/sys/block/{name}", "dev")
        if dev:
            major, minor = (int(x) for x in dev.split(":"))
            out.append((major, minor))
    return out


@pytest.fixture
def with_libudev():
    """pyudev loads libudev here (Debian: libudev1), or the test cannot
    compare the two readings."""
    if udev.context() is None:
        skip_or_fail("libudev.so.1 is missing: apt-get install libudev1")


@pytest.fixture
def without_libudev(monkeypatch):
    """As if libudev.so.1 were missing: pyudev.Context raises ImportError."""
    def no_libudev() -> None:
        raise ImportError("No library named udev")
    monkeypatch.setattr(pyudev, "Context", no_libudev)
    monkeypatch.setattr(udev, "_local", threading.local())
    assert udev.context() is None


def _both(monkeypatch, read):
    """``read()`` through pyudev, then through the sysfs fallback."""
    with_udev = read()
    with monkeypatch.context() as m:
        m.setattr(udev, "context", lambda: None)
        return with_udev, read()


def test_every_block_device_reads_the_same_without_libudev(with_libudev, monkeypatch):
    devices = _block_devices()
    assert devices, "no block device in /sys/block"
    for major, minor in devices:
        ours, fallback = _both(monkeypatch, lambda m=major, n=minor: udev.describe(m, n))
        assert ours is not None and ours == fallback, (major, minor)
        assert ours.properties["MAJOR"] == str(major) and ours.properties["DEVNAME"] == ours.node
        assert ours.dev == f"{major}:{minor}" and ours.node == f"/dev/{ours.kernel_name}"


def test_no_such_device_is_none(with_libudev, monkeypatch):
    assert _both(monkeypatch, lambda: udev.describe(4095, 1048575)) == (None, None)


def test_without_libudev_context_is_none_and_reading_works(without_libudev):
    for major, minor in _block_devices():
        d = udev.describe(major, minor)
        assert d is not None and d.dev == f"{major}:{minor}" and d.properties["SUBSYSTEM"] == \
            "block"
    assert all(lo.backing_file for lo in udev.loop_devices())


def test_loop_device_described_with_its_backing_file(root_loop, sparse, with_libudev,
                                                      monkeypatch):
    from dmthin.dm import loop
    path = sparse("data", 4 * MiB)
    with loop.attach(path) as dev:
        ours, fallback = _both(monkeypatch, lambda: udev.describe(dev.major, dev.minor))
        assert ours == fallback
        assert ours is not None
        assert (ours.kernel_name, ours.backing_file, ours.autoclear) == \
            (f"loop{dev.number}", path, True)
        assert ours.size == 4 * MiB and ours.holders == () and ours.dm_name is None
        loops, loops_fallback = _both(monkeypatch, udev.loop_devices)
        assert loops == loops_fallback and ours in loops
        assert json.loads(json.dumps(ours.to_json()))["backing_file"] == path
    assert not any(lo.backing_file == path for lo in udev.loop_devices())


def test_pyudev_is_imported_only_when_used():
    """The kernel backend's create/remove path does not pay for importing
    pyudev (about 12 ms) unless udev owns the nodes."""
    code = ("import sys, dmthin.dm.pool, dmthin.dm.task, dmthin.cli.cmd_dm\n"
            "assert 'pyudev' not in sys.modules, 'pyudev imported with the backend'\n"
            "from dmthin.dm import udev\n"
            "udev.wait_node('/dev/null')\n"
            "assert 'pyudev' not in sys.modules, 'pyudev imported for a node that exists'\n"
            "udev.context()\n"
            "assert 'pyudev' in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_wait_node_polls_without_udevd(tmp_path, monkeypatch):
    monkeypatch.setattr(_lib, "udev_running", lambda: False)
    monkeypatch.setattr(udev, "_monitor", lambda: pytest.fail("a monitor without udevd"))
    loop0 = "/dev/loop0"
    if not os.path.exists(loop0):
        skip_or_fail("no /dev/loop0 to point a node at")
    rdev = os.stat(loop0).st_rdev
    link = tmp_path / "mapper-node"
    timer = threading.Timer(0.1, os.symlink, (loop0, link))
    timer.start()
    t0 = time.monotonic()
    assert udev.wait_node(str(link), rdev, timeout=10)
    assert time.monotonic() - t0 < 5
    timer.join()
    # the node of another device is not the one we wait for
    assert not udev.wait_node(str(link), rdev + 1, timeout=0.05)
    timer = threading.Timer(0.1, os.unlink, (link,))
    timer.start()
    assert udev.wait_node(str(link), None, present=False, timeout=10)
    timer.join()
    assert not udev.wait_node(str(tmp_path / "never"), None, timeout=0.05)


def test_removal_waits_for_udev_to_finish_its_events(tmp_path, monkeypatch):
    """A node gone is not enough after a removal: udevd's link update for the
    removed device may still run and would remove a same-named node made
    next (a guest test lost /dev/mapper/NAME that way).  wait_node(present=
    False) also waits until udevd's queue is empty; a node's appearance
    does not."""
    queue = tmp_path / "queue"
    queue.touch()
    monkeypatch.setattr(udev, "UDEV_QUEUE", str(queue))
    monkeypatch.setattr(_lib, "udev_running", lambda: False)
    gone = str(tmp_path / "gone")
    timer = threading.Timer(0.2, os.unlink, (queue,))
    timer.start()
    t0 = time.monotonic()
    assert udev.wait_node(gone, None, present=False, timeout=10)
    assert 0.2 <= time.monotonic() - t0 < 5
    timer.join()
    queue.touch()                    # a queue that never empties: a timeout
    assert not udev.wait_node(gone, None, present=False, timeout=0.05)
    t0 = time.monotonic()           # appearance: the queue does not matter
    assert udev.wait_node("/dev/null", None, timeout=0.05)
    assert time.monotonic() - t0 < 0.05


class _Monitor:
    """A monitor whose events are the given callables, one per poll."""

    def __init__(self, events):
        self.events = list(events)
        self.polls = 0

    def poll(self, timeout: float) -> object:
        self.polls += 1
        if self.events:
            self.events.pop(0)()
            return object()
        time.sleep(min(timeout, 0.01))
        return None


def test_wait_node_checks_after_each_event(tmp_path, monkeypatch):
    """With udevd, the node is checked after the monitor started and after
    each event, never by sleeping in between."""
    link = tmp_path / "node"
    mon = _Monitor([lambda: None, lambda: os.symlink("/dev/null", link)])
    monkeypatch.setattr(_lib, "udev_running", lambda: True)
    monkeypatch.setattr(udev, "_monitor", lambda: mon)
    monkeypatch.setattr(udev, "_poll", lambda *a: pytest.fail("polled although udevd runs"))
    assert udev.wait_node(str(link), None, timeout=10) and mon.polls == 2
    assert not udev.wait_node(str(link), os.stat("/dev/null").st_rdev + 1, timeout=0.05)


def test_owns_nodes_only_with_udevd_and_no_sync(monkeypatch):
    monkeypatch.setattr(_lib, "udev_running", lambda: False)
    assert not udev.owns_nodes()
    if not _lib.have_binding():
        return
    monkeypatch.setattr(_lib, "udev_running", lambda: True)
    monkeypatch.setenv("DM_DISABLE_UDEV", "1")
    assert not udev.owns_nodes()          # libdevmapper makes the nodes then
    monkeypatch.delenv("DM_DISABLE_UDEV")
    if not _lib.kernel_has_dm():
        # libdevmapper's check would leave a stale /dev/mapper/control
        with pytest.raises(errors.BackendUnavailable, match="device-mapper"):
            udev.owns_nodes()


@pytest.mark.skipif(_lib.kernel_has_dm(), reason="this kernel has device-mapper (the guest)")
@pytest.mark.parametrize("opt", ["--long", "--json"])
def test_dm_ls_without_device_mapper_is_one_line(opt):
    if not _lib.have_binding():
        skip_or_fail("dmthin._dm_ffi is not built: python3 csrc/build_dm.py")
    r = run_dmthin("dm", "ls", opt, text=True)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "device-mapper" in r.stderr, r.stderr


def test_dm_ls_long_and_json_from_descriptions(monkeypatch):
    """The CLI's layout, over fixed descriptions."""
    pool = udev.BlockDevice("dm-0", 253, 0, "/dev/dm-0", 64 * MiB, False, ("dmthin-x-1",),
                            ("loop1", "loop2"), dm_name="dmthin-x-pool", dm_uuid="",
                            suspended=False)
    thin = udev.BlockDevice("dm-1", 253, 1, "/dev/dm-1", 8 * MiB, True, (), ("dmthin-x-pool",),
                            dm_name="dmthin-x-1", dm_uuid="U-1", suspended=True,
                            initialized=True, links=("/dev/mapper/dmthin-x-1",),
                            properties={"DM_NAME": "dmthin-x-1"})
    loops = [udev.BlockDevice(f"loop{n}", 7, n, f"/dev/loop{n}", MiB, False,
                              ("dmthin-x-pool",), (), backing_file=f"/p/{f}", autoclear=True)
             for n, f in ((1, "metadata"), (2, "data"))]
    other = udev.BlockDevice("loop5", 7, 5, "/dev/loop5", MiB, True, (), (),
                             backing_file="/elsewhere", autoclear=False)
    devs = {(253, 0): pool, (253, 1): thin}
    monkeypatch.setattr(task, "list_devices", lambda: [("dmthin-x-1", 253, 1),
                                                       ("dmthin-x-pool", 253, 0),
                                                       ("vg-lv", 253, 2)])
    monkeypatch.setattr(udev, "describe", lambda major, minor: devs.get((major, minor)))
    monkeypatch.setattr(udev, "loop_devices", lambda: [*loops, other])
    out = run_dmthin("dm", "ls", "--long", "--dmthin", text=True).stdout.splitlines()
    assert out[0].split() == ["NAME", "DEV", "KNAME", "STATE", "UUID", "HOLDERS", "DEVICES"]
    assert out[1].split() == ["dmthin-x-1", "253:1", "dm-1", "suspended,ro", "U-1", "-",
                              "dmthin-x-pool"]
    assert out[2].split() == ["dmthin-x-pool", "253:0", "dm-0", "active", "-", "dmthin-x-1",
                              "loop1=/p/metadata,loop2=/p/data"]
    assert out[3] == ""
    assert out[4].split() == ["LOOP", "DEV", "FLAGS", "HOLDERS", "BACKING-FILE"]
    assert out[5].split() == ["loop1", "7:1", "autoclear", "dmthin-x-pool", "/p/metadata"]
    assert len(out) == 7                      # loop5 is not under dmthin's devices
    doc = json.loads(run_dmthin("dm", "ls", "--json", text=True).stdout)
    assert [d["name"] for d in doc["devices"]] == ["dmthin-x-1", "dmthin-x-pool"]
    assert doc["devices"][0] == {
        "kernel_name": "dm-1", "dev": "253:1", "node": "/dev/dm-1", "name": "dmthin-x-1",
        "uuid": "U-1", "suspended": True, "size": 8 * MiB, "read_only": True, "holders": [],
        "slaves": ["dmthin-x-pool"],
        "udev": {"initialized": True, "links": ["/dev/mapper/dmthin-x-1"],
                 "properties": {"DM_NAME": "dmthin-x-1"}}}
    assert [lo["kernel_name"] for lo in doc["loops"]] == ["loop1", "loop2", "loop5"]
    assert doc["loops"][2]["backing_file"] == "/elsewhere" and "name" not in doc["loops"][2]
    # without --long/--json: 'dmsetup ls' lines, as before
    assert run_dmthin("dm", "ls", text=True).stdout == \
        "dmthin-x-1\t(253:1)\ndmthin-x-pool\t(253:0)\nvg-lv\t(253:2)\n"
