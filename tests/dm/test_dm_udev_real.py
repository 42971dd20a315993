"""The kernel backend with udevd running, as on a normal host (Docker's
case): udev sync through cookies, /dev/mapper nodes made by udev's rules
(55-dm.rules), devices kept active past a process and attached to by the
next, and a clean teardown.  The guest has no udevd of its own, so
this test starts systemd-udevd (Debian's ``udev`` package on the host root)
for one child process and stops it afterwards."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

UDEVD = "/lib/systemd/systemd-udevd"

CHILD = r"""
import os, sys, tempfile
from dmthin import Pool
from dmthin.dm import task
d = tempfile.mkdtemp()
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


@pytest.mark.real_dm
def test_pool_lifecycle_with_udevd_running(tmp_path):
    if not os.path.exists(UDEVD):
        pytest.fail("systemd-udevd missing: apt-get install udev (tools/test installs it)",
                    pytrace=False)
    if os.path.exists("/run/udev/control"):
        pytest.skip("udevd already runs here")
    os.makedirs("/run/udev", exist_ok=True)
    udevd = subprocess.Popen([UDEVD], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if os.path.exists("/run/udev/control"):
                break
            time.sleep(0.05)
        env = {k: v for k, v in os.environ.items() if k != "DM_DISABLE_UDEV"}
        r = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        kept = r.stdout.split("KEPT ", 1)[1].strip()
        r = subprocess.run([sys.executable, "-c", REOPEN, kept], env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "LEFT No devices found" in r.stdout
    finally:
        udevd.send_signal(signal.SIGTERM)
        udevd.wait(timeout=30)
        shutil.rmtree("/run/udev", ignore_errors=True)
