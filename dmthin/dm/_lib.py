"""Loading the libdevmapper binding, probing the kernel, and turning
libdevmapper's failures into errno-carrying exceptions.

libdevmapper keeps global state and is not thread-safe: every call sequence
runs under :data:`LOCK`.  Its functions return only 0/1; the reason comes
through its logger (``csrc/dm_shim.c`` formats each line and calls
:func:`dmthin_log_line`) and from ``dm_task_get_errno``.  Lines of error level
are kept while a task runs (:func:`capture`) and become the exception's
message.
"""
from __future__ import annotations

import atexit
import errno as _errno
import logging
import os
import shutil
import subprocess
import threading
from typing import Any

from ..errors import BackendUnavailable, ThinOSError, error_for

log = logging.getLogger("dmthin.dm.libdevmapper")

#: Guards libdevmapper's global state (one task at a time per process).
LOCK = threading.RLock()

INSTALL_HINT = ("apt-get install libdevmapper-dev, then pip install --force-reinstall "
                "--no-cache-dir dmthin (or, in a source tree, python3 csrc/build_dm.py)")

try:  # the extension is optional: setup.py builds it only when the header exists
    from .._dm_ffi import ffi as ffi  # (re-exported: task.py uses them)
    from .._dm_ffi import lib as lib
    _IMPORT_ERROR: ImportError | None = None
except ImportError as err:  # pragma: no cover - depends on the build
    ffi = lib = None
    _IMPORT_ERROR = err

# syslog levels as libdevmapper uses them (the low bits of `level`)
_LOG_FATAL, _LOG_ERR, _LOG_WARN, _LOG_NOTICE, _LOG_INFO, _LOG_DEBUG = 2, 3, 4, 5, 6, 7
_PY_LEVEL = {_LOG_FATAL: logging.ERROR, _LOG_ERR: logging.ERROR, _LOG_WARN: logging.WARNING,
             _LOG_NOTICE: logging.INFO, _LOG_INFO: logging.INFO, _LOG_DEBUG: logging.DEBUG}

_captured: list[tuple[str, int]] | None = None   # (text, errno) while capturing
_initialised = False


def dmthin_log_line(level: int, file: Any, line: int, dm_errno_or_class: int,
                    text: Any) -> None:
    """Called from C for every libdevmapper log line (under LOCK)."""
    try:
        msg = ffi.string(text).decode("utf-8", "replace").rstrip()
        lvl = level & 0x7
        if lvl <= _LOG_ERR and _captured is not None and msg:
            _captured.append((msg, dm_errno_or_class if dm_errno_or_class > 0 else 0))
        if lvl <= _LOG_ERR:
            # errors become exception messages; keep them quiet unless asked
            log.debug("%s", msg)
        else:
            log.log(_PY_LEVEL.get(lvl, logging.DEBUG) if lvl < _LOG_DEBUG else 5, "%s", msg)
    except Exception:  # noqa: BLE001 - never let an exception unwind into C
        pass


if ffi is not None:
    ffi.def_extern()(dmthin_log_line)


def have_binding() -> bool:
    """True if the compiled binding (``dmthin._dm_ffi``) can be imported."""
    return ffi is not None


def require_binding() -> tuple[Any, Any]:
    """Return ``(ffi, lib)``.

    Raises :class:`~dmthin.errors.BackendUnavailable` if dmthin was built
    without libdevmapper, saying how to get it.
    """
    if ffi is None:
        raise BackendUnavailable(f"dmthin was built without libdevmapper ({_IMPORT_ERROR}): "
                                 f"{INSTALL_HINT}")
    _init()
    return ffi, lib


def _init() -> None:
    global _initialised
    with LOCK:
        if _initialised:
            return
        lib.dmthin_install_logger(1)
        atexit.register(_at_exit)
        if not udev_running():
            # No udevd: libdevmapper creates and removes /dev/mapper nodes itself.
            lib.dm_udev_set_sync_support(0)
        _initialised = True


_log_level_applied = -1


def sync_log_level() -> None:
    """Tell the C trampoline the most verbose libdevmapper level anyone
    listens to: debug lines are formatted and passed to Python only when
    ``dmthin.dm.libdevmapper`` logs at that level (errors always, for the
    exception messages).  Cheap; called by every task (under LOCK)."""
    global _log_level_applied
    level = _LOG_DEBUG if log.isEnabledFor(5) else \
        _LOG_INFO if log.isEnabledFor(logging.INFO) else _LOG_WARN
    if level != _log_level_applied:
        lib.dmthin_set_log_level(level)
        _log_level_applied = level


def require_dm() -> None:
    """Like :func:`require_kernel` without the root check; cached once it
    succeeds.  Every task calls it before touching libdevmapper."""
    if not _kernel_ok:
        require_kernel(root=False)


def _at_exit() -> None:
    # Flush pending node operations and hand logging back to libdevmapper
    # before Python goes: its exit destructor may still log.
    with LOCK:
        lib.dm_lib_release()
        lib.dmthin_install_logger(0)


def udev_running() -> bool:
    """True when udevd runs (``/run/udev/control`` exists)."""
    return os.path.exists("/run/udev/control")


def kernel_has_dm() -> bool:
    """True if the running kernel has device-mapper registered.

    Looks at ``/sys/class/misc/device-mapper`` and ``/proc/misc``, never at
    ``/dev/mapper/control`` (libdevmapper leaves a stale node behind).
    """
    if os.path.exists("/sys/class/misc/device-mapper"):
        return True
    try:
        with open("/proc/misc", encoding="ascii", errors="replace") as f:
            return any(line.split()[1:2] == ["device-mapper"] for line in f)
    except OSError:
        return False


_modprobe_tried = False


def _try_modprobe() -> None:
    global _modprobe_tried
    if _modprobe_tried:
        return
    _modprobe_tried = True
    modprobe = shutil.which("modprobe") or ("/sbin/modprobe" if os.path.exists("/sbin/modprobe")
                                            else None)
    if modprobe is None or os.geteuid() != 0:
        return
    try:
        subprocess.run([modprobe, "-q", "dm_thin_pool"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10,
                       check=False)
    except (OSError, subprocess.SubprocessError):
        pass


_kernel_ok = False


def require_kernel(root: bool = True) -> None:
    """Check that the real backend can run here.

    Raises :class:`~dmthin.errors.BackendUnavailable` (one line, with what
    to do) when the binding is missing, when not running as root (if *root*),
    or when the kernel has no device-mapper.
    """
    global _kernel_ok
    require_binding()
    if root and os.geteuid() != 0:
        raise BackendUnavailable("the kernel backend needs root (device-mapper and loop devices): "
                                 "run as root, or use --backend sim")
    if not kernel_has_dm():
        _try_modprobe()
        if not kernel_has_dm():
            raise BackendUnavailable(
                "this kernel has no device-mapper (no device-mapper in /proc/misc): boot a kernel "
                "with CONFIG_BLK_DEV_DM and dm-thin-pool (modprobe dm_thin_pool), or use "
                "--backend sim")
    _kernel_ok = True


_ERRNO_BY_TEXT = {os.strerror(code): code for code in sorted(_errno.errorcode, reverse=True)}


class capture:
    """Collect libdevmapper's error lines while a task runs (use under LOCK)."""

    def __enter__(self) -> capture:
        global _captured
        self._saved = _captured
        self.lines: list[tuple[str, int]] = []
        _captured = self.lines
        return self

    def __exit__(self, *exc: object) -> None:
        global _captured
        _captured = self._saved

    def errno(self) -> int:
        """The errno libdevmapper logged last, or 0."""
        for _text, code in reversed(self.lines):
            if code > 0:
                return code
        return 0

    def text_errno(self) -> int:
        """The errno named by the last error line's ``failed: <strerror>``
        (the kernel's answer to the ioctl that failed), or 0."""
        for text, _code in reversed(self.lines):
            _head, sep, reason = text.rpartition("failed: ")
            if sep and reason.strip() in _ERRNO_BY_TEXT:
                return _ERRNO_BY_TEXT[reason.strip()]
        return 0

    def text(self) -> str:
        """The last error line, or ''."""
        return self.lines[-1][0] if self.lines else ""


#: what to say after each errno, per operation kind (the fix)
_HINTS = {
    _errno.EEXIST: "pick another name or id, or remove the existing one first",
    _errno.ENXIO: "no such device-mapper device; check the name with 'dmsetup ls'",
    _errno.ENODATA: "no such thin device in the pool; list them with 'dmthin thin ls POOLDIR'",
    _errno.EBUSY: "it is open, mounted or held by another device; close or unmount it first",
    _errno.EINVAL: "the kernel refused the arguments; see 'dmesg' for the target's reason",
    _errno.ENOSPC: "the pool is out of space; grow it or free blocks",
    _errno.EOPNOTSUPP: "the pool is read-only or failed; check it with 'dmthin pool status'",
}

#: for root, EPERM/EACCES is the kernel refusing (e.g. a read_only pool
#: over unformatted metadata), not a permission problem
_ROOT_HINTS = {
    _errno.EPERM: ("run as root", "the kernel refused it; see 'dmesg' for the target's reason"),
    _errno.EACCES: ("run as root", "the kernel refused it; see 'dmesg' for the target's reason"),
}


def make_error(what: str, code: int, detail: str = "") -> ThinOSError:
    """Build the errno's :class:`ThinOSError` subclass with a one-line
    message: what failed, the reason, and the fix."""
    code = code or _errno.EIO
    reason = os.strerror(code)
    text = f"{what}: {detail}" if detail else f"{what}: {reason}"
    if detail and reason.lower() not in detail.lower():
        text += f" ({reason})"
    hint = _HINTS.get(code)
    if code in _ROOT_HINTS:
        hint = _ROOT_HINTS[code][os.geteuid() == 0]
    if hint:
        text += f"; {hint}"
    return error_for(code, " ".join(text.split()))
