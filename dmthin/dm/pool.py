"""The kernel backend: a real dm thin pool.

:class:`KernelPoolBackend` implements :class:`dmthin.backend.PoolBackend`.
The data and metadata of a :class:`~dmthin.backend.PoolSpec` are files
(attached to loop devices, with autoclear: they detach when the pool goes)
or block devices used as they are.  The facade picks the dm names.

Kernel state persists like dmsetup's and LVM's:

* :meth:`~KernelPoolBackend.open` attaches to a pool that is already
  active -- found by its dm name, or as the holder of the metadata's loop
  or block device -- instead of making a second one, and to its active
  thin devices; none of those is removed by :meth:`close`.
* :meth:`close` removes what this object made (unless ``keep_active``);
  :meth:`deactivate` removes every device of the pool.

Which thin devices exist comes from the metadata: :meth:`thin_ids` holds a
metadata snapshot (``reserve_metadata_snap``), reads the held root through
the facade's reader and releases it on every path.
"""
from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from ..backend import BackendInfo, MetadataReader, PoolSpec
from ..errors import (
    Busy,
    DeviceExists,
    DeviceNotFound,
    InvalidArgument,
    NoSuchDevice,
    NotSupported,
    ThinOSError,
    TimedOut,
    UsageError,
)
from ..pooldir import device_prefix
from ..target import Message, PoolStatus, PoolTable, ThinStatus, ThinTable
from ..target.table import normalise_features
from ..units import METADATA_BLOCK_SIZE, SECTOR_SIZE
from . import _lib, busy, loop, task, udev
from .blockio import BlockIO

NODE_WAIT = 5.0     # seconds to wait for /dev/mapper/<name> to appear
LOOP_DETACH_WAIT = 2.0


def _wait_node(name: str, major: int, minor: int) -> str:
    """The device node: ``/dev/mapper/<name>`` once it is this device's
    (waiting on udev's events when udevd runs, else polling), else (not
    after :data:`NODE_WAIT` seconds) ``/dev/dm-<minor>``."""
    path = task.node_path(name)
    if udev.wait_node(path, os.makedev(major, minor), timeout=NODE_WAIT):
        return path
    alt = f"/dev/dm-{minor}"
    return alt if os.path.exists(alt) else path


def node_of(dev: str) -> str:
    """The ``/dev`` node of the block device ``major:minor`` (from sysfs)."""
    try:
        with open(f"/sys/dev/block/{dev}/uevent", encoding="utf-8") as f:
            for line in f:
                if line.startswith("DEVNAME="):
                    return "/dev/" + line.split("=", 1)[1].strip()
    except OSError:
        pass
    return f"/dev/block/{dev}"


def _dev_of(path: Path) -> str:
    st = os.stat(path)
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


class KernelThin:
    """An active thin device (a dm ``thin`` target) of a kernel pool."""

    def __init__(self, pool: KernelPoolBackend, dev_id: int, size: int,
                 info: task.DeviceInfo, activated: bool):
        self._pool = pool
        self.dev_id = dev_id
        self.size = size
        self.name: str = info.name
        self.activated = activated
        self.major, self.minor = info.major, info.minor
        self.path: str = _wait_node(self.name, info.major, info.minor)
        self._io = BlockIO(self.path, readonly=pool.spec.readonly)

    def __repr__(self) -> str:
        return f"<KernelThin {self.dev_id} {self.name} {self.path}>"

    def read(self, offset: int, length: int) -> bytes:
        """Read through the block device (O_DIRECT)."""
        return self._io.read(offset, length)

    def write(self, offset: int, data: bytes) -> int:
        """Write through the block device (O_DIRECT); ENOSPC from a full pool."""
        return self._io.write(offset, data)

    def discard(self, offset: int, length: int) -> None:
        """BLKDISCARD; EOPNOTSUPP if the pool ignores discards."""
        self._io.discard(offset, length)

    def flush(self) -> None:
        """fsync the device: the pool commits its metadata."""
        self._io.flush()

    def status(self) -> ThinStatus:
        """The thin target's status.  Raises ENXIO if the device is gone."""
        return ThinStatus.parse(task.status(self.name)[0].params)

    def in_use(self) -> bool:
        """True if someone besides us has it open, mounted or stacked on it."""
        return busy.in_use(task.info(self.name), own_opens=self._io.open_count)

    def deactivate(self) -> None:
        """Remove the dm device.  Raises EBUSY naming the mount point if it
        is mounted, or after a bounded retry if it stays open elsewhere."""
        self._io.close()
        task.remove(self.name)
        self._pool._thins.pop(self.dev_id, None)

    def release(self) -> None:
        """Close our descriptor and leave the device active."""
        self._io.close()
        self._pool._thins.pop(self.dev_id, None)

    def resize(self, size: int) -> None:
        """Reload the thin table with a new length, then suspend and resume
        (resuming on every path)."""
        table = ThinTable(size // SECTOR_SIZE, self._pool.pool_dev, self.dev_id)
        task.reload(self.name, [(0, table.length_sectors, "thin", table.params())])
        task.suspend(self.name)
        try:
            self.size = size
        finally:
            task.resume(self.name)


class KernelPoolBackend:
    """A dm thin pool over the files or block devices of a
    :class:`~dmthin.backend.PoolSpec`.  :meth:`create` formats new
    metadata, :meth:`open` serves or attaches to an existing pool.  Both
    raise :class:`~dmthin.errors.BackendUnavailable` when not root, without
    device-mapper, or without the binding."""

    name = "kernel"

    def __init__(self, spec: PoolSpec):
        self.spec = spec
        self.pool_name: str = spec.name or f"{device_prefix(spec.path)}-pool"
        self.pool_dev = ""                        # "major:minor" of the pool device
        self.metadata_dev = ""                    # "major:minor" under the pool
        self.data_dev = ""
        self.loops: list[loop.LoopDevice] = []    # loop devices we hold open
        self.made_pool = False
        self._thins: dict[int, KernelThin] = {}
        self._found: list[KernelThin] = []        # thins active before we opened
        self._closed = False

    def __repr__(self) -> str:
        return f"<KernelPoolBackend {self.pool_name} {self.pool_dev or '-'}>"

    # -- construction --------------------------------------------------------------
    @classmethod
    def available(cls) -> None:
        """Check, without side effects, that this backend can run here.

        Raises :class:`~dmthin.errors.BackendUnavailable` (one line, with
        the fix) when not root, without device-mapper, or without the
        binding.
        """
        _lib.require_kernel(root=True)

    @classmethod
    def create(cls, spec: PoolSpec) -> KernelPoolBackend:
        """Format a new pool: zero the metadata's first block, attach the
        files to loop devices, load the thin-pool table (the kernel formats
        the metadata).  Raises EEXIST if the pool's dm name is taken, EBUSY
        if a pool already uses the metadata, EINVAL if the kernel refuses
        the table."""
        _lib.require_kernel(root=True)
        self = cls(spec)
        if task.info(self.pool_name).exists:
            raise DeviceExists(f"a device-mapper device named {self.pool_name} already exists: "
                               "open that pool (Pool.open), remove it, or pick another name")
        try:
            self._use_devices()
            live = self._live_pool_name()
            if live:
                raise Busy(f"{spec.metadata_path} is already the metadata of the active pool "
                           f"{live}: open it (Pool.open) instead")
            self._zero_superblock()
            self._create_pool()
        except BaseException:
            self._teardown_quietly()
            raise
        return self

    @classmethod
    def open(cls, spec: PoolSpec) -> KernelPoolBackend:
        """Attach to the pool if it is active (by name, or as the holder of
        the metadata device), else make it active over the files.  Raises
        ENXIO when attaching by name to a pool that is not active, EINVAL
        when the active device of that name is not this pool."""
        _lib.require_kernel(root=True)
        self = cls(spec)
        try:
            info = task.info(self.pool_name)
            if spec.metadata_path is None:
                if not info.exists:
                    raise NoSuchDevice(f"no active device-mapper device {self.pool_name}: "
                                       "activate the pool first")
                self._attach_pool(info)
            else:
                self._use_devices()
                live = self._live_pool_name()
                if live:
                    self.pool_name = live
                    self._attach_pool(task.info(live))
                elif info.exists:
                    raise InvalidArgument(
                        f"dm device {self.pool_name} exists but does not use "
                        f"{spec.metadata_path}; remove it (dmsetup remove {self.pool_name}) "
                        "or open the pool under another name")
                else:
                    self._create_pool()
            self._attach_thins()
        except BaseException:
            self._teardown_quietly()
            raise
        return self

    def _zero_superblock(self) -> None:
        assert self.spec.metadata_path is not None
        fd = os.open(self.spec.metadata_path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.pwrite(fd, bytes(METADATA_BLOCK_SIZE), 0)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _use_devices(self) -> None:
        """Find the block devices for metadata and data: the devices
        themselves, or loop devices over the files (attached if needed)."""
        assert self.spec.metadata_path is not None and self.spec.data_path is not None
        devs = []
        for path in (self.spec.metadata_path, self.spec.data_path):
            if stat.S_ISBLK(os.stat(path).st_mode):
                devs.append(_dev_of(path))
                continue
            dev = loop.find(path, writable=True)
            if dev is not None:
                dev.open()
                if dev.size() < os.path.getsize(path):
                    dev.set_capacity()          # the file grew since it was attached
            else:
                # The facade gives pool-directory files (never symlinks) or
                # real paths of adopted files: a symlink here is a swap.
                dev = loop.attach(path, nofollow=True)
            self.loops.append(dev)
            devs.append(dev.dev)
        self.metadata_dev, self.data_dev = devs

    def _live_pool_name(self) -> str | None:
        """The active thin pool whose metadata device is ours, if any."""
        major, minor = (int(x) for x in self.metadata_dev.split(":"))
        for holder in busy.holders_of(major, minor):
            rows = task.table(holder)
            if rows and rows[0].target_type == "thin-pool" and \
                    PoolTable.parse(rows[0].line()).metadata_dev == self.metadata_dev:
                return holder
        return None

    def _table(self, length_sectors: int) -> PoolTable:
        """The table to load: a read-only open loads the pool ``read_only``."""
        features = (*self.spec.features, "read_only") if self.spec.readonly \
            else self.spec.features
        return PoolTable(length_sectors=length_sectors, metadata_dev=self.metadata_dev,
                         data_dev=self.data_dev, data_block_sectors=self.spec.data_block_sectors,
                         low_water_mark=self.spec.low_water_mark,
                         features=normalise_features(features))

    def _data_bytes(self) -> int:
        return loop.block_size64(node_of(self.data_dev))

    def _create_pool(self) -> None:
        table = self._table(self._data_bytes() // SECTOR_SIZE)
        if table.length_sectors < table.data_block_sectors:
            raise UsageError(f"{self.spec.data_path} is smaller than one data block; "
                             "grow it or recreate the pool")
        info = task.create(self.pool_name, [(0, table.length_sectors, "thin-pool",
                                             table.params())],
                           udev_flags=task.PRIVATE_UDEV_FLAGS)
        self.pool_dev = info.dev
        self.made_pool = True

    def _attach_pool(self, info: task.DeviceInfo) -> None:
        rows = task.table(self.pool_name)
        if not rows or rows[0].target_type != "thin-pool":
            raise InvalidArgument(f"dm device {self.pool_name} exists but is not a thin-pool; "
                                  f"remove it (dmsetup remove {self.pool_name})")
        current = PoolTable.parse(rows[0].line())
        if self.metadata_dev and (current.metadata_dev, current.data_dev) != \
                (self.metadata_dev, self.data_dev):
            raise InvalidArgument(
                f"dm device {self.pool_name} exists but does not use {self.spec.metadata_path} "
                f"and {self.spec.data_path}; remove it (dmsetup remove {self.pool_name}) or "
                "open the pool under another name")
        self.metadata_dev, self.data_dev = current.metadata_dev, current.data_dev
        self.pool_dev = info.dev

    def _pool_thins(self) -> list[tuple[str, ThinTable]]:
        """Every active thin device of this pool, by name."""
        out = []
        for name, _major, _minor in task.list_devices():
            rows = task.table(name)
            if len(rows) == 1 and rows[0].target_type == "thin":
                tt = ThinTable.parse(rows[0].line())
                if tt.pool_dev == self.pool_dev:
                    out.append((name, tt))
        return out

    def _attach_thins(self) -> None:
        for name, tt in self._pool_thins():
            if tt.dev_id not in self._thins:
                thin = KernelThin(self, tt.dev_id, tt.length_sectors * SECTOR_SIZE,
                                  task.info(name), activated=False)
                self._thins[tt.dev_id] = thin
                self._found.append(thin)

    # -- PoolBackend --------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgument(f"pool {self.pool_name} is closed")

    def message(self, msg: Message) -> str | None:
        """Send a thin-pool message; kernel errors keep their errno."""
        self._check_open()
        return task.message(self.pool_name, str(msg))

    def status(self) -> PoolStatus:
        """The pool's status line, parsed (the kernel commits first)."""
        self._check_open()
        return PoolStatus.parse(task.status(self.pool_name)[0].params)

    def table_line(self) -> str:
        """``dmsetup table`` of the pool, exactly."""
        self._check_open()
        return task.table(self.pool_name)[0].line()

    def thin_ids(self, read_ids: MetadataReader) -> list[int]:
        """The ids in the metadata: read from a metadata snapshot held for
        the read (released on every path); from the committed superblock
        when the pool cannot take one (read-only pool, or a snapshot held
        by someone else)."""
        self._check_open()
        node = node_of(self.metadata_dev)
        if self.spec.readonly:
            return read_ids(node, 0)
        try:
            task.message(self.pool_name, str(Message.reserve_metadata_snap()))
        except (Busy, NotSupported):
            return read_ids(node, 0)
        try:
            held = self.status().held_root
            return read_ids(node, held if held is not None else 0)
        finally:
            task.message(self.pool_name, str(Message.release_metadata_snap()))

    @property
    def event_nr(self) -> int:
        """The pool device's event counter."""
        self._check_open()
        return task.info(self.pool_name).event_nr

    def wait_event(self, event_nr: int, timeout: float | None = None) -> int:
        """Poll the event counter until it passes *event_nr*; TimedOut."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            now = self.event_nr
            if now > event_nr:
                return now
            if deadline is not None and time.monotonic() >= deadline:
                raise TimedOut(f"no event on {self.pool_name} after event {event_nr} "
                               f"within {timeout} s")
            time.sleep(0.05)

    def info(self) -> BackendInfo:
        """The pool device, its data and metadata devices, libdevmapper."""
        return BackendInfo(pool_dev=self.pool_dev or None, device_name=self.pool_name,
                           data_device=node_of(self.data_dev) if self.data_dev else None,
                           metadata_device=node_of(self.metadata_dev)
                           if self.metadata_dev else None,
                           library_version=task.library_version(),
                           udev_sync_supported=task.udev_sync())

    def active_thins(self) -> list[KernelThin]:
        """The pool's thin devices that were active before we opened it."""
        return [t for t in self._found if t.dev_id in self._thins]

    def activate_thin(self, dev_id: int, size: int, name: str | None) -> KernelThin:
        """Create the dm thin device for *dev_id* with *size* bytes; attach
        to it if this pool already has it active under *name*.

        Raises ENODATA if the pool has no such thin device, EEXIST if *name*
        is taken by another device.
        """
        self._check_open()
        if dev_id in self._thins:
            return self._thins[dev_id]
        name = name or f"{device_prefix(self.spec.path)}-{dev_id}"
        table = ThinTable(size // SECTOR_SIZE, self.pool_dev, dev_id)
        try:
            info = task.create(name, [(0, table.length_sectors, "thin", table.params())],
                               readonly=self.spec.readonly)
        except DeviceNotFound:
            raise DeviceNotFound(f"no thin device {dev_id} in pool {self.pool_name}; "
                                 f"create it first (create_thin {dev_id})") from None
        except DeviceExists:
            return self._attach_thin(dev_id, name)
        try:
            thin = KernelThin(self, dev_id, size, info, activated=True)
        except BaseException:
            task.remove(name, check_busy=False)
            raise
        self._thins[dev_id] = thin
        return thin

    def _attach_thin(self, dev_id: int, name: str) -> KernelThin:
        """The device *name* exists: attach to it if it is thin *dev_id* of
        this pool (another process activated it), else EEXIST."""
        rows = task.table(name)
        if len(rows) == 1 and rows[0].target_type == "thin":
            tt = ThinTable.parse(rows[0].line())
            if (tt.pool_dev, tt.dev_id) == (self.pool_dev, dev_id):
                thin = KernelThin(self, dev_id, tt.length_sectors * SECTOR_SIZE,
                                  task.info(name), activated=False)
                self._thins[dev_id] = thin
                return thin
        raise DeviceExists(f"a device-mapper device named {name} already exists and is "
                           f"not thin device {dev_id} of {self.pool_name}; remove it or "
                           "pick another name")

    def _thin(self, dev_id: int) -> KernelThin:
        self._check_open()
        try:
            return self._thins[dev_id]
        except KeyError:
            raise InvalidArgument(f"thin device {dev_id} is not active") from None

    def suspend_thin(self, dev_id: int) -> None:
        """Suspend the active thin *dev_id* (flushing it) around create_snap."""
        task.suspend(self._thin(dev_id).name)

    def resume_thin(self, dev_id: int) -> None:
        task.resume(self._thin(dev_id).name)

    # -- growing ---------------------------------------------------------------------
    def _grow_file(self, dev: str, nbytes: int, what: str) -> None:
        """Grow the file behind loop device *dev* (or check the block
        device's size) and make the loop device take it up."""
        node = node_of(dev)
        current = loop.block_size64(node)
        if nbytes < current:
            raise InvalidArgument(f"cannot shrink the {what} of pool {self.pool_name} from "
                                  f"{current} to {nbytes} bytes")
        lo = next((d for d in self.loops if d.dev == dev), None)
        if lo is None and dev.startswith(f"{loop.LOOP_MAJOR}:"):
            lo = loop.LoopDevice(int(dev.split(":")[1]), loop.backing_file(int(dev.split(":")[1])))
        if lo is None:
            if nbytes > current:
                raise InvalidArgument(f"the {what} of pool {self.pool_name} is the block device "
                                      f"{node} of {current} bytes: grow the device itself first")
            return
        fd = os.open(lo.backing_file, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_size < nbytes:
                os.ftruncate(fd, nbytes)
        finally:
            os.close(fd)
        loop.set_capacity(node)

    def resize_data(self, nbytes: int) -> None:
        """Grow the data device to *nbytes* (a file: truncate, loop
        set-capacity), reload the pool table with the new length, suspend
        and resume the pool.  Raises EINVAL for a shrink."""
        self._check_open()
        self._grow_file(self.data_dev, nbytes, "data device")
        rows = task.table(self.pool_name)
        current = PoolTable.parse(rows[0].line())
        table = PoolTable(self._data_bytes() // SECTOR_SIZE, current.metadata_dev,
                          current.data_dev, current.data_block_sectors, current.low_water_mark,
                          current.features)
        task.reload(self.pool_name, [(0, table.length_sectors, "thin-pool", table.params())])
        self._suspend_resume()

    def resize_metadata(self, nbytes: int) -> None:
        """Grow the metadata device to *nbytes*, then suspend and resume
        the pool: it takes up the space on resume."""
        self._check_open()
        self._grow_file(self.metadata_dev, nbytes, "metadata device")
        self._suspend_resume()

    def _suspend_resume(self) -> None:
        task.suspend(self.pool_name)
        task.resume(self.pool_name, udev_flags=task.PRIVATE_UDEV_FLAGS)

    # -- teardown ------------------------------------------------------------------
    def close(self, keep_active: bool = False) -> None:
        """Remove the thin devices and the pool this object made (unless
        *keep_active*), leave the rest active, let go of the loop devices.
        Keeps going after a failure and raises the first error at the end
        (e.g. EBUSY naming the mount point of a still-mounted thin).  Safe
        to call twice."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        for thin in sorted(self._thins.values(), key=lambda t: t.dev_id, reverse=True):
            try:
                thin.deactivate() if thin.activated and not keep_active else thin.release()
            except Exception as err:  # noqa: BLE001 - collected, the first re-raised below
                thin.release()
                errors.append(err)
        removed = False
        if self.made_pool and not keep_active and not errors:
            try:
                task.remove(self.pool_name)
                removed = True
            except ThinOSError as err:
                errors.append(err)
        self._release_loops(wait=removed)
        if errors:
            raise errors[0]

    def _release_loops(self, wait: bool) -> None:
        numbers = [d.number for d in self.loops if d.created]
        for dev in self.loops:
            dev.close()
        self.loops = []
        if wait and numbers:
            loop.wait_detached(numbers, timeout=LOOP_DETACH_WAIT)

    def deactivate(self) -> None:
        """Remove every thin device of the pool (whoever made it), the pool
        and (by autoclear) its loop devices.  Raises EBUSY naming the user
        and removes nothing if a thin device is in use."""
        self._check_open()
        thins = self._pool_thins()
        for name, _tt in thins:
            ours = next((t for t in self._thins.values() if t.name == name), None)
            busy.check_not_busy(task.info(name))
            if busy.in_use(task.info(name), own_opens=ours._io.open_count if ours else 0):
                raise Busy(f"thin device {name} of pool {self.pool_name} is in use; close it "
                           "first")
        for thin in list(self._thins.values()):
            thin.release()
        for name, _tt in sorted(thins, key=lambda n: n[1].dev_id, reverse=True):
            task.remove(name)
        self._closed = True
        backing = [int(d.split(":")[1]) for d in (self.metadata_dev, self.data_dev)
                   if d.startswith(f"{loop.LOOP_MAJOR}:")]
        auto = [n for n in backing if loop.is_autoclear(n)]
        task.remove(self.pool_name)
        for dev in self.loops:
            dev.close()
        self.loops = []
        loop.wait_detached(auto, timeout=LOOP_DETACH_WAIT)

    def _teardown_quietly(self) -> None:
        self._closed = True
        for thin in list(self._thins.values()):
            thin.release()
        if self.made_pool:
            try:
                task.remove(self.pool_name, check_busy=False)
            except ThinOSError:
                pass
        self._release_loops(wait=self.made_pool)


__all__ = ["KernelPoolBackend", "KernelThin", "device_prefix", "node_of"]
