"""The kernel backend: a real dm thin pool over loop devices.

:class:`KernelPoolBackend` implements :class:`dmthin.backend.PoolBackend`
over a :class:`~dmthin.pooldir.PoolDir`: its ``metadata`` and ``data``
files are attached to loop devices and a ``thin-pool`` table is loaded over
them.  Names follow Docker's scheme from the pool directory's device and
inode: prefix ``dmthin-<major>:<minor>-<inode>``, pool ``<prefix>-pool``,
thin devices ``<prefix>-<dev_id>``.

Every resource made is recorded and undone in reverse by :meth:`close`,
also after a failure part-way through :meth:`create`/:meth:`open`.
Thin device sizes and the list of ids are kept by the facade in
``pool.json`` (``config.thins``), not asked from the kernel.
"""
from __future__ import annotations

import os
import time
from typing import Callable

from ..errors import DeviceNotFound, InvalidArgument, TimedOut, UsageError
from ..pooldir import PoolConfig, PoolDir
from ..target import PoolStatus, PoolTable, ThinStatus, ThinTable
from ..units import METADATA_BLOCK_SIZE, SECTOR_SIZE, check_dev_id
from . import _lib, busy, loop, task
from .blockio import BlockIO

NODE_WAIT = 5.0     # seconds to wait for /dev/mapper/<name> to appear


def device_prefix(path: str | os.PathLike) -> str:
    """``dmthin-<major>:<minor>-<inode>`` of a directory (Docker's
    ``devicePrefix``, with ``dmthin`` for ``docker``)."""
    st = os.stat(path)
    dev = st.st_dev
    major = (dev >> 8) & 0xfff
    minor = (dev & 0xff) | ((dev >> 12) & 0xfff00)
    return f"dmthin-{major}:{minor}-{st.st_ino}"


def _wait_node(name: str, minor: int) -> str:
    """The device node: ``/dev/mapper/<name>`` once it exists, else (no
    node after :data:`NODE_WAIT` seconds) ``/dev/dm-<minor>``."""
    path = task.node_path(name)
    deadline = time.monotonic() + NODE_WAIT
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            alt = f"/dev/dm-{minor}"
            return alt if os.path.exists(alt) else path
        time.sleep(0.01)
    return path


class KernelThin:
    """An active thin device (a dm ``thin`` target) of a kernel pool."""

    def __init__(self, pool: "KernelPoolBackend", dev_id: int, size: int,
                 info: task.DeviceInfo):
        self._pool = pool
        self.dev_id = dev_id
        self.size = size
        self.name = info.name
        self.major, self.minor = info.major, info.minor
        self.path = _wait_node(self.name, info.minor)
        self._io = BlockIO(self.path)

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

    def resize(self, size: int) -> None:
        """Reload the thin table with a new length, then suspend and resume
        (resuming on every path)."""
        if size <= 0 or size % SECTOR_SIZE:
            raise InvalidArgument(f"invalid size {size} for thin device {self.dev_id}: use a "
                                  "positive multiple of 512 bytes")
        table = ThinTable(size // SECTOR_SIZE, self._pool.pool_dev, self.dev_id)
        task.reload(self.name, [(0, table.length_sectors, "thin", table.params())])
        task.suspend(self.name)
        try:
            self.size = size
        finally:
            task.resume(self.name)

    def suspend(self) -> None:
        task.suspend(self.name)

    def resume(self) -> None:
        task.resume(self.name)


class KernelPoolBackend:
    """A dm thin pool over the loop-attached files of a pool directory.

    Use :meth:`create` (formats new metadata) or :meth:`open` (reattaches
    an existing pool, adopting its dm and loop devices if still active).
    Both raise :class:`~dmthin.errors.BackendUnavailable` when not root,
    without device-mapper, or without the binding.
    """

    name = "kernel"

    def __init__(self, pooldir: PoolDir, config: PoolConfig):
        self.pooldir = pooldir
        self.config = config
        self.prefix = device_prefix(pooldir.path)
        self.pool_name = f"{self.prefix}-pool"
        self.pool_dev = ""                       # "major:minor" of the pool device
        self.loops: list[loop.LoopDevice] = []   # [metadata, data]
        self._thins: dict[int, KernelThin] = {}
        self._undo: list[tuple[str, Callable[[], None]]] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"<KernelPoolBackend {self.pool_name} {self.pool_dev or '-'}>"

    # -- construction --------------------------------------------------------------
    @classmethod
    def available(cls) -> None:
        """Check, without side effects, that this backend can run here.

        Raises :class:`~dmthin.errors.BackendUnavailable` (one line, with
        the fix) when not root, without device-mapper, or without the
        binding.  The facade may call it before creating any file.
        """
        _lib.require_kernel(root=True)

    @classmethod
    def create(cls, pooldir: PoolDir, config: PoolConfig) -> "KernelPoolBackend":
        """Format a new pool: zero the metadata's first block, attach loop
        devices, load the thin-pool table.  Raises EEXIST if the pool's dm
        name is taken, EINVAL if the kernel refuses the table."""
        _lib.require_kernel(root=True)
        self = cls(pooldir, config)
        try:
            self._zero_superblock()
            self._attach_loops()
            self._create_pool()
        except BaseException:
            self._teardown_quietly()
            raise
        return self

    @classmethod
    def open(cls, pooldir: PoolDir, config: PoolConfig) -> "KernelPoolBackend":
        """Reattach an existing pool: adopt the pool (and its thin devices)
        if still active, else attach the files and load the table."""
        _lib.require_kernel(root=True)
        self = cls(pooldir, config)
        try:
            info = task.info(self.pool_name)
            if info.exists:
                self._adopt_pool(info)
            else:
                self._attach_loops()
                self._create_pool()
            self._adopt_thins()
        except BaseException:
            self._teardown_quietly()
            raise
        return self

    def _zero_superblock(self) -> None:
        fd = os.open(self.pooldir.metadata_path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.pwrite(fd, bytes(METADATA_BLOCK_SIZE), 0)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _attach_loops(self) -> None:
        for path in (self.pooldir.metadata_path, self.pooldir.data_path):
            dev = loop.find(path, writable=True)
            if dev is not None:
                dev.open()
                if dev.size() < os.path.getsize(path):
                    dev.set_capacity()          # the file grew since it was attached
            else:
                dev = loop.attach(path)
            self.loops.append(dev)
            self._undo.append((f"release {dev.path}", lambda d=dev: self._release_loop(d)))

    def _release_loop(self, dev: loop.LoopDevice) -> None:
        dev.close()
        if not dev.attached():
            return
        if loop.holders(dev.number):
            # Still under a dm table (its removal failed): make sure it
            # detaches when that goes (autoclear), don't wait for it.
            loop.detach(dev.path, wait=False)
        elif loop.wait_detached([dev.number], timeout=2.0):
            loop.detach(dev.path)

    def _table(self) -> PoolTable:
        meta, data = self.loops
        return PoolTable(length_sectors=data.size() // SECTOR_SIZE, metadata_dev=meta.dev,
                         data_dev=data.dev, data_block_sectors=self.config.data_block_sectors,
                         low_water_mark=self.config.low_water_mark,
                         features=tuple(self.config.features))

    def _create_pool(self) -> None:
        table = self._table()
        nr_blocks = table.length_sectors // table.data_block_sectors
        if nr_blocks < 1:
            raise UsageError(f"{self.pooldir.data_path} is smaller than one data block; "
                             "grow it or recreate the pool")
        info = task.create(self.pool_name, [(0, table.length_sectors, "thin-pool",
                                             table.params())],
                           udev_flags=task.PRIVATE_UDEV_FLAGS)
        self.pool_dev = info.dev
        self._undo.append((f"remove {self.pool_name}", lambda: task.remove(self.pool_name)))

    def _adopt_pool(self, info: task.DeviceInfo) -> None:
        rows = task.table(self.pool_name)
        if not rows or rows[0].target_type != "thin-pool":
            raise InvalidArgument(f"dm device {self.pool_name} exists but is not a thin-pool; "
                                  f"remove it (dmsetup remove {self.pool_name})")
        current = PoolTable.parse(rows[0].line())
        for path, dev in ((self.pooldir.metadata_path, current.metadata_dev),
                          (self.pooldir.data_path, current.data_dev)):
            lo = loop.find(path)
            if lo is None or lo.dev != dev:
                raise InvalidArgument(
                    f"dm device {self.pool_name} exists but does not use {path}; remove it "
                    f"(dmsetup remove {self.pool_name}) and open the pool again")
            lo.open()
            self.loops.append(lo)
            self._undo.append((f"release {lo.path}", lambda d=lo: self._release_loop(d)))
        self.pool_dev = info.dev
        self._undo.append((f"remove {self.pool_name}", lambda: task.remove(self.pool_name)))

    def _adopt_thins(self) -> None:
        lead = f"{self.prefix}-"
        for name, _major, _minor in task.list_devices():
            suffix = name[len(lead):] if name.startswith(lead) else ""
            if not suffix.isdigit():
                continue
            rows = task.table(name)
            if not rows or rows[0].target_type != "thin":
                continue
            tt = ThinTable.parse(rows[0].line())
            if tt.pool_dev != self.pool_dev:
                continue
            self._thins[tt.dev_id] = KernelThin(self, tt.dev_id,
                                                tt.length_sectors * SECTOR_SIZE, task.info(name))

    # -- PoolBackend --------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgument(f"pool {self.pool_name} is closed")

    def message(self, text: str) -> str | None:
        """Send a thin-pool message; kernel errors keep their errno."""
        self._check_open()
        return task.message(self.pool_name, text)

    def status(self) -> PoolStatus:
        """The pool's status line, parsed (the kernel commits first)."""
        self._check_open()
        return PoolStatus.parse(task.status(self.pool_name)[0].params)

    def table_line(self) -> str:
        """``dmsetup table`` of the pool, exactly."""
        self._check_open()
        return task.table(self.pool_name)[0].line()

    def thin_ids(self) -> list[int]:
        """Ids recorded in ``pool.json`` (the kernel has no listing message)."""
        return sorted(self.config.thins)

    @property
    def metadata_device(self) -> str | None:
        return self.loops[0].path if self.loops else None

    @property
    def data_device(self) -> str | None:
        return self.loops[1].path if len(self.loops) > 1 else None

    @property
    def udev_sync_supported(self) -> bool:
        return task.udev_sync()

    @property
    def library_version(self) -> str:
        return task.library_version()

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

    def thin_name(self, dev_id: int) -> str:
        return f"{self.prefix}-{check_dev_id(dev_id)}"

    def activate_thin(self, dev_id: int, size: int) -> KernelThin:
        """Create the dm thin device for *dev_id* with *size* bytes.

        Raises ENODATA if the pool has no such thin device, EINVAL for a
        size that is not a positive multiple of 512.
        """
        self._check_open()
        check_dev_id(dev_id)
        if dev_id in self._thins:
            return self._thins[dev_id]
        if size <= 0 or size % SECTOR_SIZE:
            raise InvalidArgument(f"invalid size {size} for thin device {dev_id}: use a "
                                  "positive multiple of 512 bytes")
        name = self.thin_name(dev_id)
        table = ThinTable(size // SECTOR_SIZE, self.pool_dev, dev_id)
        try:
            info = task.create(name, [(0, table.length_sectors, "thin", table.params())])
        except DeviceNotFound:
            raise DeviceNotFound(f"no thin device {dev_id} in pool {self.pool_name}; "
                                 f"create it first (create_thin {dev_id})") from None
        try:
            thin = KernelThin(self, dev_id, size, info)
        except BaseException:
            task.remove(name, check_busy=False)
            raise
        self._thins[dev_id] = thin
        return thin

    def suspend_thin(self, dev_id: int) -> None:
        """Suspend the active thin *dev_id* (flushing it) around create_snap."""
        self._check_open()
        task.suspend(self.thin_name(dev_id))

    def resume_thin(self, dev_id: int) -> None:
        self._check_open()
        task.resume(self.thin_name(dev_id))

    def close(self) -> None:
        """Remove every thin device this backend activated or adopted, the
        pool, and the loop devices, in reverse order of creation.  Keeps
        going after a failure and raises the first error at the end (e.g.
        EBUSY naming the mount point of a still-mounted thin).  Safe to call
        twice."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        for thin in sorted(self._thins.values(), key=lambda t: t.dev_id, reverse=True):
            try:
                thin.deactivate()
            except Exception as err:  # noqa: BLE001 - collected, re-raised below
                errors.append(err)
        self._run_undo(errors)
        if errors:
            raise errors[0]

    def _run_undo(self, errors: list[BaseException]) -> None:
        while self._undo:
            _what, undo = self._undo.pop()
            try:
                undo()
            except Exception as err:  # noqa: BLE001
                errors.append(err)

    def _teardown_quietly(self) -> None:
        self._closed = True
        for thin in list(self._thins.values()):
            try:
                thin.deactivate()
            except Exception:  # noqa: BLE001 - the original error matters more
                pass
        self._run_undo([])


__all__ = ["KernelPoolBackend", "KernelThin", "device_prefix"]
