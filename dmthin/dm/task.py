"""libdevmapper tasks: one function per device-mapper operation.

Each function builds a ``dm_task``, runs it under the library lock,
destroys it on every path, and raises :class:`~dmthin.errors.ThinOSError`
subclasses carrying the kernel's errno (``EEXIST``, ``ENXIO``, ``ENODATA``,
``EINVAL``, ``EBUSY``...) with libdevmapper's own error line as the message.

Names are validated (:func:`dmthin.units.check_name`) before they reach the
kernel.  Operations that add or remove ``/dev/mapper`` nodes (create,
resume, remove) use a udev cookie and ``dm_udev_wait``: with udevd running
that waits for udev; without it libdevmapper makes the nodes itself (udev
sync is switched off at load, see :mod:`dmthin.dm._lib`).  When udevd runs
but libdevmapper cannot synchronise with it (:func:`dmthin.dm.udev.owns_nodes`),
create and remove leave the node to udev and wait for it through a udev
monitor (bounded: :func:`create` raises ETIMEDOUT, :func:`remove` logs a
warning), so the node is there after :func:`create` and gone after
:func:`remove` in every case.

Example::

    from dmthin.dm import task
    task.create("demo", [(0, 2048, "zero", "")])
    print(task.table("demo"))       # [Target(0, 2048, 'zero', '')]
    task.remove("demo")
"""
from __future__ import annotations

import errno as _errno
import functools
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import Busy, DeviceExists, InvalidArgument, ThinOSError, TimedOut
from ..units import check_name
from . import _lib, udev
from ._lib import LOCK, make_error
from .busy import check_not_busy

DEV_MAPPER = "/dev/mapper"

log = logging.getLogger("dmthin.dm.task")


@dataclass(frozen=True)
class DeviceInfo:
    """``dm_task_get_info``: the state of one dm device."""
    name: str
    exists: bool
    suspended: bool = False
    live_table: bool = False
    inactive_table: bool = False
    open_count: int = 0
    event_nr: int = 0
    major: int = 0
    minor: int = 0
    read_only: bool = False
    target_count: int = 0
    deferred_remove: bool = False

    @property
    def dev(self) -> str:
        """``major:minor`` as tables name devices."""
        return f"{self.major}:{self.minor}"


@dataclass(frozen=True)
class Target:
    """One table line: ``<start> <length> <target type> <params>``."""
    start: int
    length: int
    target_type: str
    params: str

    def line(self) -> str:
        """The line as ``dmsetup table``/``status`` prints it."""
        return f"{self.start} {self.length} {self.target_type} {self.params}"


#: udev flags for devices nobody should scan (Docker's pool, devicemapper-rs' private())
PRIVATE_UDEV_FLAGS = 0x2 | 0x4 | 0x8   # DISABLE_{SUBSYSTEM,DISK,OTHER}_RULES
#: DM_UDEV_DISABLE_DM_RULES_FLAG: udev's dm rules make no /dev/mapper node
DISABLE_DM_RULES = 0x1


#: names already validated (:func:`dmthin.units.check_name` raises, so only
#: valid names are remembered)
_valid_name = functools.lru_cache(maxsize=4096)(check_name)


def node_path(name: str) -> str:
    """``/dev/mapper/<name>``."""
    return os.path.join(DEV_MAPPER, _valid_name(name))


def _udev_timeout(name: str, present: bool) -> str:
    verb = "make" if present else "remove"
    return (f"udev did not {verb} {node_path(name)} within {udev.UDEV_WAIT:g} s (udevd runs "
            "but libdevmapper does not synchronise with it); check udevd (udevadm monitor), "
            "or set DM_DISABLE_UDEV=1 so that libdevmapper manages /dev/mapper itself")


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _s(ptr: Any) -> str:
    ffi = _lib.ffi
    return "" if ptr == ffi.NULL else ffi.string(ptr).decode("utf-8", "surrogateescape")


class Task:
    """A ``dm_task`` as a context manager: holds :data:`LOCK`, checks every
    call, destroys the task on exit.  *kind* is the task type's name in
    libdevmapper.h (``"DM_DEVICE_CREATE"``); *what* names the operation in
    errors.  The name is validated before the binding is loaded.

    Raises :class:`~dmthin.errors.UsageError` for a bad name,
    :class:`~dmthin.errors.BackendUnavailable` without the binding.
    """

    def __init__(self, kind: str, what: str, name: str | None = None):
        self.kind = kind
        self.what = what
        self.name = _valid_name(name) if name is not None else None
        self._t: Any = None          # the dm_task (cffi)
        self._cookie: Any = None

    def __enter__(self) -> Task:
        self.ffi, self.lib = _lib.require_binding()
        _lib.require_dm()
        LOCK.acquire()
        try:
            _lib.sync_log_level()
            with _lib.capture() as cap:
                t = self.lib.dm_task_create(getattr(self.lib, self.kind))
            if t == self.ffi.NULL:
                raise make_error(self.what, cap.errno() or _errno.ENODEV,
                                 cap.text() or "dm_task_create failed: is device-mapper loaded?")
            self._t = t
            if self.name is not None:
                self.check(self.lib.dm_task_set_name(t, _b(self.name)), "dm_task_set_name")
        except BaseException:
            self._destroy()
            LOCK.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._destroy()
        finally:
            LOCK.release()

    def _destroy(self) -> None:
        if self._t is not None:
            t, self._t = self._t, None
            self.lib.dm_task_destroy(t)

    @property
    def t(self) -> Any:
        return self._t

    def check(self, ok: int, call: str) -> None:
        """Raise EINVAL naming *call* if a setter returned 0."""
        if not ok:
            raise InvalidArgument(f"{self.what}: {call} refused the argument")

    def add_target(self, start: int, length: int, target_type: str, params: str) -> None:
        """Add one table line (create/reload)."""
        if start < 0 or length <= 0:
            raise InvalidArgument(f"{self.what}: invalid target range {start}+{length}; "
                                  "the length must be positive")
        self.check(self.lib.dm_task_add_target(self._t, start, length, _b(target_type),
                                               _b(params)), "dm_task_add_target")

    def use_cookie(self, flags: int = 0) -> None:
        """Ask for a udev cookie; :meth:`run` then waits on it."""
        self._cookie = self.ffi.new("uint32_t *", 0)
        self.check(self.lib.dm_task_set_cookie(self._t, self._cookie, flags), "dm_task_set_cookie")

    def run(self) -> None:
        """``dm_task_run``; on failure raise the errno's error with
        libdevmapper's message."""
        with _lib.capture() as cap:
            ok = self.lib.dm_task_run(self._t)
            code = self.lib.dm_task_get_errno(self._t) if not ok else 0
            if self._cookie is not None:
                # Always wait: it releases the cookie and (without udev)
                # makes or removes the /dev/mapper node.
                self.lib.dm_udev_wait(self._cookie[0])
        if not ok:
            # libdevmapper's own line names the ioctl's errno exactly; for a
            # create with a table, dm_task_get_errno does not carry it.
            raise make_error(self.what, cap.text_errno() or code or cap.errno(), cap.text())

    def info(self) -> DeviceInfo:
        """The device's info after :meth:`run`."""
        i = self.ffi.new("struct dm_info *")
        self.check(self.lib.dm_task_get_info(self._t, i), "dm_task_get_info")
        name = self.name or _s(self.lib.dm_task_get_name(self._t))
        if not i.exists:
            return DeviceInfo(name, False)
        return DeviceInfo(name, True, bool(i.suspended), bool(i.live_table),
                          bool(i.inactive_table), i.open_count, i.event_nr, i.major, i.minor,
                          bool(i.read_only), i.target_count, bool(i.deferred_remove))

    def targets(self) -> list[Target]:
        """The table or status lines after a TABLE/STATUS run."""
        ffi, lib = self.ffi, self.lib
        start, length = ffi.new("uint64_t *"), ffi.new("uint64_t *")
        ttype, params = ffi.new("char **"), ffi.new("char **")
        out, nxt = [], ffi.NULL
        while True:
            nxt = lib.dm_get_next_target(self._t, nxt, start, length, ttype, params)
            if ttype[0] != ffi.NULL:
                out.append(Target(start[0], length[0], _s(ttype[0]), _s(params[0])))
            if nxt == ffi.NULL:
                return out


#: a table: ``dmsetup table`` text, or rows of :class:`Target` or
#: ``(start, length, type, params)``
Table = str | Iterable["Target | tuple[int, int, str, str]"]


def _targets(table: Table) -> list[tuple[int, int, str, str]]:
    if isinstance(table, str):
        rows: list[tuple[int, int, str, str]] = []
        for line in table.strip().splitlines():
            f = line.split(None, 3)
            if len(f) < 3:
                raise InvalidArgument(f"invalid table line {line!r}: "
                                      "use '<start> <length> <type> <params>'")
            try:
                rows.append((int(f[0]), int(f[1]), f[2], f[3] if len(f) > 3 else ""))
            except ValueError:
                raise InvalidArgument(f"invalid table line {line!r}: start and length must "
                                      "be numbers of sectors") from None
        table = rows
    rows = [(t.start, t.length, t.target_type, t.params) if isinstance(t, Target) else t
            for t in table]
    if not rows:
        raise InvalidArgument("empty table: give at least one target line")
    return rows


# -- operations ---------------------------------------------------------------------


def create(name: str, table: Table, *, uuid: str | None = None, readonly: bool = False,
           udev_flags: int = 0) -> DeviceInfo:
    """Create device *name* with *table* (lines or ``(start, length, type,
    params)`` tuples) and resume it; return its info.

    libdevmapper removes the device again if the table load fails.  Raises
    EEXIST (:class:`DeviceExists`) if the name is taken (the kernel says
    EBUSY; we check), EINVAL for a bad table (:class:`InvalidArgument`),
    ENXIO for a missing underlying device, ETIMEDOUT (:class:`TimedOut`,
    the device removed again) when udev owns the nodes
    (:func:`dmthin.dm.udev.owns_nodes`) and does not make ``/dev/mapper/<name>``
    within :data:`dmthin.dm.udev.UDEV_WAIT` seconds.
    """
    rows = _targets(table)
    # udev's rules make the node (not libdevmapper) when we cannot sync with it
    by_udev = not udev_flags & DISABLE_DM_RULES and udev.owns_nodes()
    with Task("DM_DEVICE_CREATE", f"create {name}", name) as t:
        if uuid:
            t.check(t.lib.dm_task_set_uuid(t.t, _b(uuid)), "dm_task_set_uuid")
        if readonly:
            t.check(t.lib.dm_task_set_ro(t.t), "dm_task_set_ro")
        for row in rows:
            t.add_target(*row)
        t.check(t.lib.dm_task_set_add_node(t.t, t.lib.DM_ADD_NODE_ON_CREATE), "set_add_node")
        t.use_cookie(udev_flags | (t.lib.DM_UDEV_DISABLE_LIBRARY_FALLBACK if by_udev else 0))
        try:
            t.run()
        except Busy as err:
            refused: Busy | None = err
        else:
            refused, created = None, t.info()
    if refused is None:
        if by_udev and not udev.wait_node(node_path(name),
                                          os.makedev(created.major, created.minor)):
            remove(name, retry_seconds=0, check_busy=False)     # nothing half made is left
            raise TimedOut(f"create {name}: " + _udev_timeout(name, True))
        return created
    # The kernel answers EBUSY when the name is taken: say EEXIST, as a
    # thin id that is taken would.
    if info(name).exists:
        raise DeviceExists(f"create {name}: a device-mapper device with this name already "
                           "exists (the kernel answered EBUSY); remove it first "
                           f"(dmsetup remove {name}) or pick another name") from None
    raise refused


def reload(name: str, table: Table) -> None:
    """Load *table* as the inactive table of *name* (takes effect on
    :func:`resume`).  Raises ENXIO if absent, EINVAL for a bad table."""
    rows = _targets(table)
    with Task("DM_DEVICE_RELOAD", f"reload {name}", name) as t:
        for row in rows:
            t.add_target(*row)
        t.run()


def suspend(name: str, *, noflush: bool = False, skip_lockfs: bool = False) -> None:
    """Suspend *name* (flushing I/O unless *noflush*).  Raises ENXIO if absent."""
    with Task("DM_DEVICE_SUSPEND", f"suspend {name}", name) as t:
        if noflush:
            t.check(t.lib.dm_task_no_flush(t.t), "dm_task_no_flush")
        if skip_lockfs:
            t.check(t.lib.dm_task_skip_lockfs(t.t), "dm_task_skip_lockfs")
        t.run()


def resume(name: str, *, udev_flags: int = 0) -> None:
    """Resume *name* (swapping in a loaded table).  Raises ENXIO if absent."""
    with Task("DM_DEVICE_RESUME", f"resume {name}", name) as t:
        t.use_cookie(udev_flags)
        t.run()


def remove(name: str, *, retry_seconds: float = 2.0, deferred: bool = False,
           check_busy: bool = True) -> None:
    """Remove device *name*.

    Refuses (EBUSY, naming the mount point or holder) a device that is
    mounted or held by another dm device, unless *check_busy* is false: the
    kernel says EBUSY, and the mounts and holders are looked up only then
    (a device that is merely open elsewhere, e.g. by udev's blkid, is
    retried for up to *retry_seconds*).  With *deferred* the kernel removes
    it when its last opener closes it (a mounted or held device is refused
    first).  When udev owns the nodes, waits for it to remove
    ``/dev/mapper/<name>`` (a warning in the log if it does not within
    :data:`dmthin.dm.udev.UDEV_WAIT` seconds).  Raises ENXIO if there is no
    such device.
    """
    _valid_name(name)
    if check_busy and deferred:
        check_not_busy(info(name))
    by_udev = udev.owns_nodes()
    deadline = time.monotonic() + max(0.0, retry_seconds)
    delay = 0.02
    while True:
        try:
            with Task("DM_DEVICE_REMOVE", f"remove {name}", name) as t:
                flags = 0
                if deferred:
                    t.check(t.lib.dm_task_deferred_remove(t.t), "dm_task_deferred_remove")
                    if _lib.udev_running():
                        # udev removes the node when the device really goes;
                        # libdevmapper's fallback would remove it now (moby#24740)
                        flags = t.lib.DM_UDEV_DISABLE_LIBRARY_FALLBACK
                elif by_udev:
                    flags = t.lib.DM_UDEV_DISABLE_LIBRARY_FALLBACK
                t.use_cookie(flags)
                t.run()
            if by_udev and not deferred and not udev.wait_node(node_path(name), present=False):
                log.warning("remove %s: %s", name, _udev_timeout(name, False))
            return
        except Busy:
            if check_busy and not deferred:
                check_not_busy(info(name))        # mounted or held: say so, now
            if deferred or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def message(name: str, text: str, sector: int = 0) -> str | None:
    """Send target message *text* to *name* at *sector*; return the
    target's response, or None.  Raises the target's errno (e.g. EEXIST,
    ENODATA, EINVAL, EBUSY, EOPNOTSUPP for a thin pool)."""
    if not text or "\n" in text:
        raise InvalidArgument(f"invalid target message {text!r}: give one line")
    with Task("DM_DEVICE_TARGET_MSG", f"message {text!r} to {name}", name) as t:
        t.check(t.lib.dm_task_set_sector(t.t, sector), "dm_task_set_sector")
        t.check(t.lib.dm_task_set_message(t.t, _b(text)), "dm_task_set_message")
        t.run()
        resp = _s(t.lib.dm_task_get_message_response(t.t))
        return resp or None


def status(name: str, *, noflush: bool = False) -> list[Target]:
    """The status lines of *name* (``dmsetup status``).  With *noflush* a
    thin pool does not commit first.  Raises ENXIO if absent."""
    with Task("DM_DEVICE_STATUS", f"status of {name}", name) as t:
        if noflush:
            t.check(t.lib.dm_task_no_flush(t.t), "dm_task_no_flush")
        t.run()
        _require_exists(t, name)
        return t.targets()


def table(name: str) -> list[Target]:
    """The live table of *name* (``dmsetup table``).  Raises ENXIO if absent."""
    with Task("DM_DEVICE_TABLE", f"table of {name}", name) as t:
        t.run()
        _require_exists(t, name)
        return t.targets()


def _require_exists(t: Task, name: str) -> None:
    if not t.info().exists:
        raise make_error(f"{t.what}", _errno.ENXIO, f"no device-mapper device named {name!r}")


def info(name: str) -> DeviceInfo:
    """Info of *name*; ``exists`` is False (no error) if there is none."""
    with Task("DM_DEVICE_INFO", f"info of {name}", name) as t:
        t.run()
        return t.info()


def exists(name: str) -> bool:
    """True if a dm device called *name* exists."""
    return info(name).exists


def deps(name: str) -> list[tuple[int, int]]:
    """``(major, minor)`` of the devices *name*'s table uses.  Raises ENXIO."""
    with Task("DM_DEVICE_DEPS", f"deps of {name}", name) as t:
        t.run()
        _require_exists(t, name)
        d = t.lib.dm_task_get_deps(t.t)
        if d == t.ffi.NULL:
            return []
        return [(os.major(d.device[i]), os.minor(d.device[i])) for i in range(d.count)]


def list_devices() -> list[tuple[str, int, int]]:
    """Every dm device as ``(name, major, minor)``, sorted by name."""
    with Task("DM_DEVICE_LIST", "list devices") as t:
        t.run()
        ffi = t.ffi
        names = t.lib.dm_task_get_names(t.t)
        out: list[tuple[str, int, int]] = []
        if names == ffi.NULL or names.dev == 0:
            return out
        while True:
            out.append((_s(names.name), os.major(names.dev), os.minor(names.dev)))
            if not names.next:
                break
            names = ffi.cast("struct dm_names *", ffi.cast("char *", names) + names.next)
        return sorted(out)


def target_versions() -> dict[str, tuple[int, int, int]]:
    """Loaded target types and their versions (``dmsetup targets``)."""
    with Task("DM_DEVICE_LIST_VERSIONS", "list target versions") as t:
        t.run()
        ffi = t.ffi
        v = t.lib.dm_task_get_versions(t.t)
        out: dict[str, tuple[int, int, int]] = {}
        if v == ffi.NULL:
            return out
        while True:
            out[_s(v.name)] = (v.version[0], v.version[1], v.version[2])
            if not v.next:
                break
            v = ffi.cast("struct dm_versions *", ffi.cast("char *", v) + v.next)
        return out


def driver_version() -> str:
    """The kernel driver's ioctl interface version, e.g. ``4.47.0``."""
    with Task("DM_DEVICE_VERSION", "driver version") as t:
        t.run()
        buf = t.ffi.new("char[128]")
        t.check(t.lib.dm_task_get_driver_version(t.t, buf, 128), "dm_task_get_driver_version")
        return str(t.ffi.string(buf).decode())


def library_version() -> str:
    """libdevmapper's version, e.g. ``1.02.185 (2022-05-18)``.  Needs no kernel."""
    ffi, lib = _lib.require_binding()
    buf = ffi.new("char[128]")
    with LOCK:
        lib.dm_get_library_version(buf, 128)
    return str(ffi.string(buf).decode())


def udev_sync() -> bool:
    """True if libdevmapper synchronises with udev (udevd running).
    Raises :class:`~dmthin.errors.BackendUnavailable` without device-mapper
    (libdevmapper's check would leave a stale /dev/mapper/control)."""
    _ffi, lib = _lib.require_binding()
    _lib.require_dm()
    with LOCK:
        return bool(lib.dm_udev_get_sync_support())


def release() -> None:
    """``dm_lib_release``: close the control fd and flush pending node ops."""
    if _lib.have_binding():
        with LOCK:
            _lib.lib.dm_lib_release()


__all__ = [
    "PRIVATE_UDEV_FLAGS",
    "DeviceInfo",
    "Target",
    "Task",
    "ThinOSError",
    "create",
    "deps",
    "driver_version",
    "exists",
    "info",
    "library_version",
    "list_devices",
    "message",
    "node_path",
    "release",
    "reload",
    "remove",
    "resume",
    "status",
    "suspend",
    "table",
    "target_versions",
    "udev_sync",
]
