"""Host tests of the binding: import, constants, name validation, error
mapping, and the clean failure on a kernel without device-mapper (this
machine's).  No root or device-mapper needed."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from dmthin import errors
from dmthin.dm import _lib, task
from helpers import in_ci, skip_or_fail

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

needs_binding = pytest.mark.skipif(
    not _lib.have_binding() and not in_ci(),
    reason="dmthin._dm_ffi is not built: python3 csrc/build_dm.py")
no_dm_kernel = pytest.mark.skipif(_lib.kernel_has_dm(),
                                  reason="this kernel has device-mapper (the guest)")


@needs_binding
def test_binding_imports_and_matches_header():
    ffi, lib = _lib.require_binding()
    # enum and struct layout as libdevmapper.h 1.02.x defines them
    assert lib.DM_DEVICE_CREATE == 0 and lib.DM_DEVICE_TARGET_MSG == 17
    assert lib.DM_DEVICE_LIST_VERSIONS == 16
    assert ffi.sizeof("struct dm_info") == 48
    assert lib.DM_UDEV_DISABLE_LIBRARY_FALLBACK == 0x20
    assert task.PRIVATE_UDEV_FLAGS == (lib.DM_UDEV_DISABLE_SUBSYSTEM_RULES_FLAG
                                       | lib.DM_UDEV_DISABLE_DISK_RULES_FLAG
                                       | lib.DM_UDEV_DISABLE_OTHER_RULES_FLAG)


@needs_binding
def test_library_version_needs_no_kernel():
    version = task.library_version()
    assert version.split()[0].startswith("1.02."), version


@pytest.mark.parametrize("name", ["", "a/b", "x" * 128, "with space", ".", "..", "tab\t"])
def test_bad_names_refused_before_the_kernel(name, monkeypatch):
    """Before the binding, too: these fail the same way without it."""
    monkeypatch.setattr(_lib, "ffi", None)
    with pytest.raises(errors.UsageError, match="invalid device name"):
        task.create(name, "0 8 zero")
    with pytest.raises(errors.UsageError):
        task.remove(name)
    with pytest.raises(errors.UsageError):
        task.message(name, "create_thin 0")


def test_longest_name_is_accepted_by_validation():
    from dmthin.units import check_name
    assert check_name("n" * 127) == "n" * 127


def test_bad_tables_refused_before_the_kernel():
    with pytest.raises(errors.InvalidArgument, match="empty table"):
        task.create("t", [])
    with pytest.raises(errors.InvalidArgument, match="invalid table line"):
        task.create("t", "zero")
    with pytest.raises(errors.InvalidArgument, match="start and length"):
        task.create("t", "a b zero")


@pytest.mark.parametrize(("code", "cls"), [
    (errno.EEXIST, errors.DeviceExists), (errno.ENODATA, errors.DeviceNotFound),
    (errno.EINVAL, errors.InvalidArgument), (errno.EBUSY, errors.Busy),
    (errno.ENOSPC, errors.NoSpace), (errno.EOPNOTSUPP, errors.NotSupported)])
def test_make_error_maps_errno_to_class(code, cls):
    err = _lib.make_error("message 'x' to pool", code,
                          f"device-mapper: message ioctl on pool failed: {os.strerror(code)}")
    assert isinstance(err, cls) and isinstance(err, OSError)
    assert err.errno == code
    text = str(err)
    assert "\n" not in text and "message 'x' to pool" in text and ";" in text  # what; fix


def test_enxio_keeps_its_errno():
    err = _lib.make_error("remove x", errno.ENXIO, "")
    assert type(err) is errors.NoSuchDevice and err.errno == errno.ENXIO
    assert "No such device or address" in str(err)


@needs_binding
def test_log_lines_are_captured_with_their_errno():
    with _lib.LOCK, _lib.capture() as cap:
        _lib.dmthin_log_line(3, _lib.ffi.NULL, 0, 0,
                             _lib.ffi.new("char[]", b"device-mapper: reload ioctl on x failed: "
                                                    b"No data available"))
        _lib.dmthin_log_line(7, _lib.ffi.NULL, 0, 0, _lib.ffi.new("char[]", b"debug noise"))
    assert cap.text() == "device-mapper: reload ioctl on x failed: No data available"
    assert cap.text_errno() == errno.ENODATA


@needs_binding
@no_dm_kernel
def test_no_device_mapper_fails_cleanly_without_side_effects(monkeypatch):
    monkeypatch.setattr(_lib, "_try_modprobe", lambda: None)   # no module loading here
    had_control = os.path.exists("/dev/mapper/control")
    calls = [task.driver_version, task.list_devices, task.target_versions, task.udev_sync,
             lambda: task.info("x"), lambda: task.create("x", "0 8 zero"),
             lambda: task.message("x", "create_thin 0"), lambda: task.remove("x")]
    for call in calls:
        with pytest.raises(errors.BackendUnavailable, match="no device-mapper"):
            call()
    if not had_control:   # libdevmapper would have left a stale node
        assert not os.path.exists("/dev/mapper/control")


@needs_binding
@no_dm_kernel
def test_kernel_pool_refuses_without_device_mapper(tmp_path, monkeypatch):
    monkeypatch.setattr(_lib, "_try_modprobe", lambda: None)
    from dmthin import Pool
    with pytest.raises(errors.BackendUnavailable) as exc:
        Pool.create(tmp_path / "pool", data_size="64M", metadata_size="4M", backend="kernel")
    assert "\n" not in str(exc.value)


def test_kernel_pool_refuses_non_root(tmp_path, monkeypatch):
    from dmthin.backend import PoolSpec
    from dmthin.dm.pool import KernelPoolBackend
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    if not _lib.have_binding():
        skip_or_fail("the libdevmapper binding is not built (apt-get install libdevmapper-dev, "
                     "then reinstall dmthin)")
    with pytest.raises(errors.BackendUnavailable, match="needs root"):
        KernelPoolBackend.create(PoolSpec(tmp_path, tmp_path / "data", tmp_path / "metadata",
                                          128, 0, (), "deleteme-pool"))


def test_missing_binding_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(_lib, "ffi", None)
    monkeypatch.setattr(_lib, "_IMPORT_ERROR", ImportError("No module named 'dmthin._dm_ffi'"))
    with pytest.raises(errors.BackendUnavailable, match="apt-get install libdevmapper-dev"):
        _lib.require_binding()
    with pytest.raises(errors.BackendUnavailable, match="pip install --force-reinstall"):
        task.list_devices()


@needs_binding
@no_dm_kernel
@pytest.mark.parametrize("argv", [["dm", "ls"], ["dm", "version"]])
def test_cli_reports_one_line_without_traceback(argv):
    r = subprocess.run([sys.executable, "-m", "dmthin", *argv], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dmthin {' '.join(argv)}: error: "), r.stderr
    assert "Traceback" not in r.stderr
