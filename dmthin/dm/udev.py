"""udev's view of dm and loop devices (pyudev), and waiting for their nodes.

* :func:`describe` and :func:`loop_devices`: a block device as udev and
  sysfs describe it (:class:`BlockDevice`): dm name, uuid and suspended
  state, loop backing file, holders, and the properties udev keeps for it
  (``DM_NAME``, ``DM_UUID``, ``DEVLINKS``...).  Read through pyudev, which
  reads sysfs and, when udevd has processed the device, its database; it
  works without udevd (the device is then not ``initialized`` and holds only
  the kernel's properties).  Without libudev the same facts are read from
  sysfs and ``/run/udev/data`` directly, with the same results.
* :func:`wait_node`: wait until a ``/dev`` node is a device's, or is gone.
  When udevd runs, through a udev monitor (netlink, block disks: woken by
  each event udev has finished); without udevd (or libudev), by polling.
* :func:`owns_nodes`: udevd runs but libdevmapper does not synchronise with
  it (no udev sync in the library, no System V semaphores, or switched off).
  :mod:`dmthin.dm.task` then leaves ``/dev/mapper`` to udev, instead of
  racing it with libdevmapper's own nodes, and waits for udev here.

Example::

    from dmthin.dm import udev
    dev = udev.describe(253, 0)
    print(dev.dm_name, dev.suspended, dev.holders, dev.properties.get("DM_UUID"))
"""
from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import blockdev
from . import _lib

log = logging.getLogger("dmthin.dm.udev")

#: seconds to wait for udev to make or remove a /dev/mapper node
UDEV_WAIT = 30.0
#: seconds between checks when there is no monitor
POLL_INTERVAL = 0.001
#: seconds between checks while waiting on a monitor (events wake it sooner)
MONITOR_RECHECK = 0.25
#: seconds between checks of udevd's queue
SETTLE_INTERVAL = 0.002

UDEV_DATA = "/run/udev/data"
#: present while systemd-udevd has events queued or running (libudev's
#: ``udev_queue_get_queue_is_empty`` and ``udevadm settle`` read it)
UDEV_QUEUE = "/run/udev/queue"

_local = threading.local()


def _pyudev() -> Any:
    """The pyudev module, imported on first use, not with this module: it
    costs about 12 ms per process, and :mod:`dmthin.dm.task` (which imports
    this module) needs it only when udev owns the nodes (:func:`owns_nodes`)."""
    import pyudev
    return pyudev


def context() -> Any:
    """This thread's :class:`pyudev.Context` (libudev objects are not shared
    between threads), or None when libudev cannot be loaded."""
    if not hasattr(_local, "context"):
        try:
            _local.context = _pyudev().Context()
        except ImportError as err:           # no libudev.so.1: read sysfs directly
            log.debug("libudev unavailable (%s): reading sysfs directly", err)
            _local.context = None
    return _local.context


# -- describing devices ---------------------------------------------------------------


@dataclass(frozen=True)
class BlockDevice:
    """A block device as sysfs and udev describe it.

    The dm fields are the kernel's own (sysfs ``dm/``), which udev's rules
    copy into ``DM_NAME``, ``DM_UUID`` and ``DM_SUSPENDED`` when they process
    an event: the copies in :attr:`properties` can be older than the device's
    state (``DM_SUSPENDED`` is not updated by a suspend).
    """
    kernel_name: str                  # dm-3, loop0
    major: int
    minor: int
    node: str                         # /dev/dm-3 (the kernel's DEVNAME)
    size: int                         # bytes
    read_only: bool
    holders: tuple[str, ...]          # devices stacked on it (dm devices by dm name)
    slaves: tuple[str, ...]           # devices under it
    dm_name: str | None = None
    dm_uuid: str | None = None
    suspended: bool | None = None
    backing_file: str | None = None   # loop devices
    autoclear: bool | None = None
    initialized: bool = False         # udev has processed it (it is in udev's database)
    links: tuple[str, ...] = ()       # udev's symlinks (/dev/mapper/NAME...), sorted
    properties: Mapping[str, str] = field(default_factory=dict)

    @property
    def dev(self) -> str:
        """``major:minor``."""
        return f"{self.major}:{self.minor}"

    def to_json(self) -> dict[str, object]:
        """The device as a JSON object (``dmthin dm ls --json``)."""
        doc: dict[str, object] = {"kernel_name": self.kernel_name, "dev": self.dev,
                                  "node": self.node}
        if self.dm_name is not None:
            doc.update(name=self.dm_name, uuid=self.dm_uuid, suspended=self.suspended)
        if self.backing_file is not None:
            doc.update(backing_file=self.backing_file, autoclear=self.autoclear)
        doc.update(size=self.size, read_only=self.read_only, holders=list(self.holders),
                   slaves=list(self.slaves),
                   udev={"initialized": self.initialized, "links": list(self.links),
                         "properties": dict(self.properties)})
        return doc


class _View(Protocol):
    """What :func:`_build` reads from a device: pyudev's or sysfs'."""
    sys_path: str
    sys_name: str

    def attr(self, name: str) -> str | None: ...
    def initialized(self) -> bool: ...
    def properties(self) -> dict[str, str]: ...


class _UdevView:
    """A device through pyudev (libudev)."""

    def __init__(self, device: Any):
        self._d = device
        self.sys_path: str = device.sys_path
        self.sys_name: str = device.sys_name

    def attr(self, name: str) -> str | None:
        raw = self._d.attributes.get(name)
        return None if raw is None else bytes(raw).decode("utf-8", "surrogateescape")

    def initialized(self) -> bool:
        return bool(self._d.is_initialized)

    def properties(self) -> dict[str, str]:
        return _normalised({str(k): str(v) for k, v in self._d.properties.items()})


class _SysfsView:
    """A device read from sysfs and udev's database file, as libudev would."""

    def __init__(self, path: str):
        self.sys_path = os.path.realpath(path)
        self.sys_name = os.path.basename(self.sys_path)

    def attr(self, name: str) -> str | None:
        return blockdev.read_attr(self.sys_path, name)

    def _db(self) -> str:
        return f"{UDEV_DATA}/b{self.attr('dev')}"

    def initialized(self) -> bool:
        return os.path.exists(self._db())

    def properties(self) -> dict[str, str]:
        props = {"DEVPATH": self.sys_path.removeprefix("/sys"),
                 "SUBSYSTEM": os.path.basename(os.path.realpath(
                     os.path.join(self.sys_path, "subsystem")))}
        for line in (self.attr("uevent") or "").splitlines():
            key, sep, value = line.partition("=")
            if sep:
                _set(props, key, f"/dev/{value}" if key == "DEVNAME" else value)
        try:
            with open(self._db(), encoding="utf-8", errors="surrogateescape") as f:
                db = f.read().splitlines()
        except OSError:
            return props
        links, tags, current = [], [], []
        for line in db:
            kind, _, value = line.partition(":")
            if kind == "E":
                key, _, val = value.partition("=")
                _set(props, key, val)
            elif kind == "S":
                links.append(f"/dev/{value}")
            elif kind == "G":
                tags.append(value)
            elif kind == "Q":
                current.append(value)
            elif kind == "I":
                props["USEC_INITIALIZED"] = value
        if links:
            props["DEVLINKS"] = " ".join(links)
        if tags:
            props["TAGS"] = f":{':'.join(tags)}:"
        if current:
            props["CURRENT_TAGS"] = f":{':'.join(current)}:"
        return _normalised(props)


def _set(props: dict[str, str], key: str, value: str) -> None:
    """Set a property as libudev does: an empty value removes it (udev's
    rules set ``DM_UUID=`` for a device without a uuid)."""
    if value:
        props[key] = value
    else:
        props.pop(key, None)


def _normalised(props: dict[str, str]) -> dict[str, str]:
    """Sort the set-valued properties (their order is libudev's hash order),
    and the keys."""
    if "DEVLINKS" in props:
        props["DEVLINKS"] = " ".join(sorted(props["DEVLINKS"].split()))
    for key in ("TAGS", "CURRENT_TAGS"):
        if key in props:
            props[key] = f":{':'.join(sorted(t for t in props[key].split(':') if t))}:"
    return dict(sorted(props.items()))


def _flag(value: str | None) -> bool | None:
    return None if value is None else value.strip() == "1"


def _build(v: _View) -> BlockDevice | None:
    dev = v.attr("dev")
    if dev is None:
        return None
    major, minor = (int(x) for x in dev.split(":"))
    props = v.properties()
    initialized = v.initialized()
    is_dm, is_loop = v.sys_name.startswith("dm-"), v.sys_name.startswith("loop")
    return BlockDevice(
        kernel_name=v.sys_name, major=major, minor=minor,
        node=props.get("DEVNAME", f"/dev/{v.sys_name}"),
        size=int(v.attr("size") or 0) * 512, read_only=_flag(v.attr("ro")) or False,
        holders=tuple(blockdev.stacked(v.sys_path)),
        slaves=tuple(blockdev.stacked(v.sys_path, "slaves")),
        dm_name=v.attr("dm/name") if is_dm else None,
        dm_uuid=v.attr("dm/uuid") if is_dm else None,
        suspended=_flag(v.attr("dm/suspended")) if is_dm else None,
        backing_file=v.attr("loop/backing_file") if is_loop else None,
        autoclear=_flag(v.attr("loop/autoclear")) if is_loop else None,
        initialized=initialized,
        links=tuple(props["DEVLINKS"].split()) if initialized and "DEVLINKS" in props else (),
        properties=props)


def describe(major: int, minor: int) -> BlockDevice | None:
    """Block device ``major:minor`` through pyudev (sysfs without libudev);
    None if there is no such device."""
    ctx = context()
    if ctx is None:
        path = blockdev.sys_path(major, minor)
        return _build(_SysfsView(path)) if os.path.exists(path) else None
    pyudev = _pyudev()
    try:
        device = pyudev.Devices.from_device_number(ctx, "block", os.makedev(major, minor))
    except pyudev.DeviceNotFoundError:
        return None
    return _build(_UdevView(device))


def _loop_views() -> Iterator[_View]:
    ctx = context()
    if ctx is None:
        try:
            names = os.listdir("/sys/block")
        except OSError:
            return
        yield from (_SysfsView(f"/sys/block/{n}") for n in names if n.startswith("loop"))
    else:
        yield from (_UdevView(d) for d in ctx.list_devices(subsystem="block", sys_name="loop*"))


def loop_devices() -> list[BlockDevice]:
    """The loop devices bound to a file, by number."""
    found = [d for d in map(_build, _loop_views()) if d is not None and d.backing_file]
    return sorted(found, key=lambda d: d.minor)


# -- nodes ----------------------------------------------------------------------------


def owns_nodes() -> bool:
    """True when udevd runs but libdevmapper does not synchronise with it:
    ``/dev/mapper`` nodes are then udev's to make and remove, and
    :func:`wait_node` waits for them.  False without udevd (libdevmapper
    makes the nodes) and under ``DM_DISABLE_UDEV`` (libdevmapper always
    does).  Raises :class:`~dmthin.errors.BackendUnavailable` without the
    binding or device-mapper (libdevmapper's check would leave a stale
    /dev/mapper/control)."""
    if not _lib.udev_running() or "DM_DISABLE_UDEV" in os.environ:
        return False
    _ffi, lib = _lib.require_binding()
    _lib.require_dm()
    with _lib.LOCK:
        return not lib.dm_udev_get_sync_support()


def _reached(path: str, rdev: int | None, present: bool) -> bool:
    if not present:
        return not os.path.lexists(path)
    try:
        st = os.stat(path)
    except OSError:
        return False
    return rdev is None or (stat.S_ISBLK(st.st_mode) and st.st_rdev == rdev)


def _monitor() -> Any:
    """A started udev monitor of block disks, or None (no libudev, or the
    netlink socket refused)."""
    ctx = context()
    if ctx is None:
        return None
    try:
        monitor = _pyudev().Monitor.from_netlink(ctx)
        monitor.filter_by("block", device_type="disk")
        monitor.start()
    except OSError as err:
        log.debug("no udev monitor (%s): polling", err)
        return None
    return monitor


def _poll(path: str, rdev: int | None, present: bool, deadline: float) -> bool:
    while not _reached(path, rdev, present):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)
    return True


def _wait_events(monitor: Any, path: str, rdev: int | None, present: bool,
                 deadline: float) -> bool:
    # Checked after the monitor started: udev announces an event after it has
    # made or removed the nodes, so an event that came before was seen here.
    while not _reached(path, rdev, present):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        monitor.poll(max(0.001, min(remaining, MONITOR_RECHECK)))
    return True


def _settle(deadline: float) -> bool:
    """Wait until udevd's event queue is empty (``udevadm settle``)."""
    while os.path.exists(UDEV_QUEUE):
        if time.monotonic() >= deadline:
            return False
        time.sleep(SETTLE_INTERVAL)
    return True


def wait_node(path: str, rdev: int | None = None, *, present: bool = True,
              timeout: float | None = None) -> bool:
    """Wait until *path* is the node of device number *rdev* (any block
    device if None), or with *present* false until *path* is gone and udevd
    has finished its events (the removal's link update, still running when
    the node is gone, would otherwise remove a node of the same name made
    next for a new device).  Waits on a udev monitor when udevd runs, else
    polls.  Returns whether that happened within *timeout* seconds
    (:data:`UDEV_WAIT` if None); returns at once, without loading pyudev, if
    it already has."""
    deadline = time.monotonic() + (UDEV_WAIT if timeout is None else timeout)
    if not _reached(path, rdev, present):
        monitor = _monitor() if _lib.udev_running() else None
        if monitor is None:
            reached = _poll(path, rdev, present, deadline)
        else:
            reached = _wait_events(monitor, path, rdev, present, deadline)
        if not reached:
            return False
    return present or _settle(deadline)


__all__ = ["UDEV_WAIT", "BlockDevice", "context", "describe", "loop_devices", "owns_nodes",
           "wait_node"]
