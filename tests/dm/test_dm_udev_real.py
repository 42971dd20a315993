"""The kernel backend with and without udevd, and udev's view of its devices.

With udevd running, as on a normal host (Docker's case): udev sync through
cookies, /dev/mapper nodes made by udev's rules (55-dm.rules), devices kept
active past a process and attached to by the next, ``dmthin dm ls``
agreeing with ``dmsetup info -c``, ``losetup`` and ``udevadm info``, and a
clean teardown.  With udevd running but libdevmapper's udev sync off: the
nodes come from udev alone and are waited for through a udev monitor.
Without udevd (the guest as it boots): libdevmapper makes the nodes and
``dm ls`` describes the devices from sysfs, udev's database being empty.

The guest has no udevd of its own, so the udevd tests start
systemd-udevd (Debian's ``udev`` package on the host root) and stop it
afterwards; their device work runs in child processes, whose libdevmapper
sees udevd from the start.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from dmthin import Pool
from dmthin.dm import _lib, task, udev
from helpers import run_dmthin

pytestmark = pytest.mark.real_dm

UDEVD = "/lib/systemd/systemd-udevd"
DMSETUP_FIELDS = "name,uuid,blkdevname,major,minor,suspended,readonly,names_using_dev,blkdevs_used"

CHILD = r"""
import os, sys, tempfile
from dmthin import Pool
from dmthin.dm import task
d = tempfile.mkdtemp(prefix="deleteme-")
with Pool.create(d + "/p", data_size="64M", metadata_size="4M", backend="kernel") as pool:
    thin = pool.create_thin(1, "16M")
    assert task.udev_sync(), "udev sync is off although udevd runs"
    node = f"/dev/mapper/{thin.name}"
    assert os.path.exists(node), node
    info = os.popen(f"udevadm info {node}").read()
    assert f"DM_NAME={thin.name}" in info, info          # set by udev's dm rules
    thin.write(0, b"u" * 65536)
    assert thin.read(0, 4) == b"uuuu"
    snap = pool.create_snap(2, 1)
    assert os.path.exists(f"/dev/mapper/{snap.name}")
    pool.delete(1)
    assert not os.path.exists(node)
    pool.create_thin(3, "8M").write(0, b"kept")
    pool.close(keep_active=True)                 # the devices outlive this process
print("KEPT", d + "/p")
"""

REOPEN = r"""
import os, sys
from dmthin import Pool
with Pool.open(sys.argv[1]) as pool:             # a new process attaches
    thin = pool.thin(3)
    assert not thin.activated and thin.read(0, 4) == b"kept"
    assert os.path.exists(f"/dev/mapper/{thin.name}")
    pool.deactivate()                            # udev removes the nodes
    assert not os.path.exists(f"/dev/mapper/{thin.name}")
print("LEFT", os.popen("dmsetup ls").read().strip())
"""

NO_SYNC = r"""
import os, tempfile
from dmthin import Pool
from dmthin.dm import _lib, task, udev

_ffi, lib = _lib.require_binding()
lib.dm_udev_set_sync_support(0)      # as without udev sync in libdevmapper or semaphores
assert not task.udev_sync() and udev.owns_nodes()

monitors = []
real_monitor = udev._monitor
def counted():
    m = real_monitor()
    assert m is not None, "no udev monitor although udevd runs"
    monitors.append(m)
    return m
def polled(*args):
    raise AssertionError("polled for a node although udevd runs")
udev._monitor, udev._poll = counted, polled

def udev_made(name):
    # udev's rules make a symlink to ../dm-N; libdevmapper would mknod a node
    node = f"/dev/mapper/{name}"
    return os.path.islink(node) and os.readlink(node).startswith("../dm-")

d = tempfile.mkdtemp(prefix="deleteme-")
with Pool.create(d + "/p", data_size="64M", metadata_size="4M", backend="kernel") as pool:
    prefix = pool.info().device_name.removesuffix("pool")
    assert udev_made(prefix + "pool")
    thin = pool.create_thin(1, "16M")
    assert thin.path == f"/dev/mapper/{thin.name}" and udev_made(thin.name), thin.path
    thin.write(0, b"m" * 65536)
    snap = pool.create_snap(2, 1)
    assert udev_made(snap.name) and snap.read(0, 4) == b"mmmm"
    node = thin.path
    pool.delete(1)
    assert not os.path.lexists(node), "udev's node outlived the device"
    thin = pool.create_thin(1, "8M")          # the same name again, a new device
    assert udev_made(thin.name)
    thin.write(0, b"again")
    assert thin.read(0, 5) == b"again"
assert monitors, "no udev monitor was used"
assert not [p for p in os.listdir("/dev/mapper") if p.startswith(prefix)], "nodes left"
print("LEFT", [n for n, _, _ in task.list_devices() if n.startswith(prefix)])
"""

STALLED = r"""
import errno, os, signal, sys, time
from dmthin.errors import TimedOut
from dmthin.dm import _lib, task, udev

_ffi, lib = _lib.require_binding()
lib.dm_udev_set_sync_support(0)
assert udev.owns_nodes()
udev.UDEV_WAIT = 1.0
pid, name = int(sys.argv[1]), sys.argv[2]
os.kill(pid, signal.SIGSTOP)              # udevd queues the events and handles none
try:
    t0 = time.monotonic()
    try:
        task.create(name, [(0, 2048, "zero", "")])
    except TimedOut as err:
        assert err.errno == errno.ETIMEDOUT
        msg = str(err)
        assert msg.count("\n") == 0 and f"udev did not make /dev/mapper/{name}" in msg, msg
        assert "DM_DISABLE_UDEV=1" in msg, msg
    else:
        raise AssertionError("create returned without a node")
    took = time.monotonic() - t0
    assert 1.0 <= took < 10, took
    assert not task.exists(name), "the device outlived the timeout"
    assert not os.path.lexists(f"/dev/mapper/{name}")
finally:
    os.kill(pid, signal.SIGCONT)
print("TIMED OUT", round(took, 2))
"""


@pytest.fixture
def udevd_proc():
    """systemd-udevd running for the test (its process)."""
    if not os.path.exists(UDEVD):
        pytest.fail("systemd-udevd missing: apt-get install udev (tools/test installs it)",
                    pytrace=False)
    if os.path.exists("/run/udev/control"):
        pytest.skip("udevd already runs here")
    os.makedirs("/run/udev", exist_ok=True)
    proc = subprocess.Popen([UDEVD], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if os.path.exists("/run/udev/control"):
                break
            time.sleep(0.05)
        assert os.path.exists("/run/udev/control"), "systemd-udevd did not start"
        yield proc
    finally:
        proc.send_signal(signal.SIGCONT)          # in case a test left it stopped
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        shutil.rmtree("/run/udev", ignore_errors=True)


@pytest.fixture
def udevd(udevd_proc):
    """systemd-udevd running; the environment for the test's children
    (without the guest's DM_DISABLE_UDEV)."""
    return {k: v for k, v in os.environ.items() if k != "DM_DISABLE_UDEV"}


def _child(code: str, env: dict[str, str], *args: str) -> str:
    r = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _dm_ls() -> dict:
    r = run_dmthin("dm", "ls", "--json", "--dmthin", text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _check_against_tools(doc: dict) -> None:
    """``dm ls --json`` says what dmsetup and losetup say."""
    r = subprocess.run(["dmsetup", "info", "-c", "--noheadings", "--separator", "|", "-o",
                        DMSETUP_FIELDS], capture_output=True, text=True, check=True)
    rows = {f[0]: f for f in (line.split("|") for line in r.stdout.splitlines())}
    kname = {d["name"]: d["kernel_name"] for d in doc["devices"]}
    assert doc["devices"]
    for d in doc["devices"]:
        _, uuid, blkdev, major, minor, state, ro, users, used = rows[d["name"]]
        assert (d["uuid"], d["kernel_name"], d["dev"]) == (uuid, blkdev, f"{major}:{minor}")
        assert d["suspended"] == (state == "Suspended") and d["read_only"] == (ro == "readonly")
        assert sorted(d["holders"]) == sorted(filter(None, users.split(",")))
        assert sorted(kname.get(s, s) for s in d["slaves"]) == \
            sorted(filter(None, used.split(",")))
    r = subprocess.run(["losetup", "-l", "-n", "--raw", "-O", "NAME,BACK-FILE,AUTOCLEAR"],
                       capture_output=True, text=True, check=True)
    losetup = {f"/dev/{lo['kernel_name']}": lo for lo in doc["loops"]}
    under = {s for d in doc["devices"] for s in d["slaves"] if s.startswith("loop")}
    assert under and under == {lo["kernel_name"] for lo in doc["loops"]}
    for line in r.stdout.splitlines():
        node, backing, autoclear = line.split(" ")
        if node in losetup:
            assert (losetup[node]["backing_file"], losetup[node]["autoclear"]) == \
                (backing, autoclear == "1")
            losetup.pop(node)
    assert not losetup, f"losetup does not list {sorted(losetup)}"


def _check_fallback(doc: dict, monkeypatch) -> None:
    """Without libudev (sysfs and udev's database read directly), the same."""
    with monkeypatch.context() as m:
        m.setattr(udev, "context", lambda: None)
        assert _dm_ls() == doc


def _udevadm(node: str) -> dict[str, str]:
    r = subprocess.run(["udevadm", "info", "-q", "property", "-n", node], capture_output=True,
                       text=True, check=True)
    return udev._normalised(dict(line.split("=", 1) for line in r.stdout.splitlines()))


def test_pool_lifecycle_with_udevd_running(udevd, monkeypatch):
    assert udev.context() is not None, "libudev.so.1 missing in the guest (libudev1)"
    kept = _child(CHILD, udevd).split("KEPT ", 1)[1].strip()
    try:
        _check_kept_devices(monkeypatch)
    except BaseException:
        _child(REOPEN, udevd, kept)                 # deactivate it all the same
        raise
    out = _child(REOPEN, udevd, kept)
    assert "LEFT No devices found" in out


def _check_kept_devices(monkeypatch) -> None:
    """The kept pool and thin 3, as udev, dmsetup and losetup see them."""
    doc = _dm_ls()
    _check_against_tools(doc)
    names = {d["name"] for d in doc["devices"]}
    assert any(n.endswith("-pool") for n in names) and any(n.endswith("-3") for n in names)
    for d in doc["devices"]:
        ud = d["udev"]
        assert ud["initialized"] and ud["properties"] == _udevadm(d["node"])
        assert ud["properties"]["DM_NAME"] == d["name"]
        assert ud["properties"].get("DM_UUID", "") == d["uuid"]     # no uuid: no key
        assert ud["properties"]["DM_SUSPENDED"] == "0" and not d["suspended"]
        assert f"/dev/mapper/{d['name']}" in ud["links"]
    _check_fallback(doc, monkeypatch)


def test_without_udev_sync_nodes_come_from_udev_through_the_monitor(udevd):
    assert "LEFT []" in _child(NO_SYNC, udevd)


def test_udev_that_makes_no_node_is_a_bounded_error(udevd_proc, udevd, tag):
    """udevd runs and sync is off, but udevd handles no event: create gives
    up after udev.UDEV_WAIT with ETIMEDOUT and leaves no device behind."""
    out = _child(STALLED, udevd, str(udevd_proc.pid), f"{tag}-stalled")
    assert "TIMED OUT" in out


def test_dm_ls_without_udevd(real_dm, tmp_path, tag, monkeypatch):
    assert not _lib.udev_running(), "udevd runs in the guest"
    assert udev.context() is not None, "libudev.so.1 missing in the guest (libudev1)"
    with Pool.create(tmp_path / tag / "p", data_size="64M", metadata_size="4M",
                     backend="kernel") as pool:
        thin = pool.create_thin(1, "16M")
        assert thin.path == f"/dev/mapper/{thin.name}"     # libdevmapper's node
        snap = pool.create_snap(2, 1)
        task.suspend(snap.name)
        try:
            doc = _dm_ls()
            _check_against_tools(doc)
            _check_fallback(doc, monkeypatch)
        finally:
            task.resume(snap.name)
        byname = {d["name"]: d for d in doc["devices"]}
        assert byname[snap.name]["suspended"] and not byname[thin.name]["suspended"]
        assert sorted(byname[pool.info().device_name]["holders"]) == \
            sorted([thin.name, snap.name])
        for d in doc["devices"]:
            ud = d["udev"]
            assert not ud["initialized"] and ud["links"] == []
            assert not any(k.startswith("DM_") for k in ud["properties"]), ud
            assert ud["properties"]["DEVNAME"] == d["node"] == f"/dev/{d['kernel_name']}"
