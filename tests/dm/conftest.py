"""Fixtures for the device-mapper and loop tests.

Everything a test makes carries the tag ``deleteme`` (dm names, backing
file paths); :func:`sweep` removes such leftovers before and after each
test that uses :func:`dm_clean`, like devicemapper-rs' ``clean_up()``.
"""
from __future__ import annotations

import faulthandler
import os
import uuid

import pytest

from dmthin.dm import _lib
from helpers import requires_real_dm, skip_or_fail

TAG = "deleteme"
HANG_DUMP_SECONDS = 300


def require_root_loop() -> None:
    """Skip (fail under CI) unless root with /dev/loop-control."""
    if os.geteuid() != 0 or not os.path.exists("/dev/loop-control"):
        skip_or_fail("needs root and loop devices")


def require_real_dm() -> None:
    """Skip (fail under CI) unless root, device-mapper and the binding."""
    if not _lib.have_binding():
        skip_or_fail("dmthin._dm_ffi is not built: python3 csrc/build_dm.py")
    requires_real_dm()


def sweep() -> list[str]:
    """Remove dm devices and loop devices left by tests (tagged); return
    what was removed."""
    from dmthin.dm import loop, task
    removed: list[str] = []
    if _lib.have_binding() and _lib.kernel_has_dm():
        tagged_loops = {n for n, backing in loop.list_attached() if TAG in backing}
        for _round in range(5):
            victims = []
            for name, major, minor in task.list_devices():
                deps = task.deps(name)
                if TAG in name or any(maj == 7 and mi in tagged_loops for maj, mi in deps):
                    victims.append((name, major, minor))
            if not victims:
                break
            # holders first: a device with holders cannot go yet
            for name, major, minor in victims:
                holders = os.listdir(f"/sys/dev/block/{major}:{minor}/holders") \
                    if os.path.exists(f"/sys/dev/block/{major}:{minor}/holders") else []
                for h in holders:
                    try:
                        with open(f"/sys/block/{h}/dm/name") as f:
                            hname = f.read().strip()
                        task.remove(hname, retry_seconds=0.5, check_busy=False)
                        removed.append(hname)
                    except Exception:  # noqa: BLE001 - best effort
                        pass
                try:
                    task.remove(name, retry_seconds=0.5, check_busy=False)
                    removed.append(name)
                except Exception:  # noqa: BLE001 - retried next round
                    pass
    if os.geteuid() == 0:
        for number, backing in loop.list_attached():
            if TAG in backing:
                try:
                    loop.detach(f"/dev/loop{number}", timeout=2.0)
                    removed.append(f"loop{number}")
                except Exception:  # noqa: BLE001 - best effort
                    pass
    return removed


def snapshot_devices() -> tuple[list, list]:
    """(dm devices, bound loop devices) right now."""
    from dmthin.dm import loop, task
    dms = task.list_devices() if _lib.have_binding() and _lib.kernel_has_dm() else []
    return dms, loop.list_attached()


@pytest.fixture
def tag() -> str:
    """A unique name fragment carrying the delete-me tag."""
    return f"{TAG}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def real_dm():
    """Root + device-mapper, a clean sweep before and after, and a check
    that the test left no dm or loop device behind."""
    require_real_dm()
    sweep()
    before = snapshot_devices()
    # A hung kernel call would otherwise show nothing until the guest is
    # killed: dump every thread's stack if the test runs this long.
    faulthandler.dump_traceback_later(HANG_DUMP_SECONDS, exit=False)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
    after = snapshot_devices()
    leftovers = sweep()
    assert after == before, f"test left devices behind (swept: {leftovers})"


@pytest.fixture
def root_loop():
    """Root + loop devices, with tagged loop devices swept afterwards."""
    require_root_loop()
    from dmthin.dm import loop
    before = loop.list_attached()
    yield
    leftovers = [(n, b) for n, b in loop.list_attached() if (n, b) not in before]
    for number, backing in leftovers:
        if TAG in backing:
            loop.detach(f"/dev/loop{number}", timeout=2.0)
    assert not leftovers, f"test left loop devices attached: {leftovers}"


@pytest.fixture
def sparse(tmp_path, tag):
    """Factory: ``sparse(name, size)`` makes a sparse file whose path
    carries the delete-me tag."""
    base = tmp_path / tag
    base.mkdir()

    def make(name: str, size: int) -> str:
        path = base / name
        with open(path, "wb") as f:
            f.truncate(size)
        return str(path)
    return make
