"""The public pool API: :class:`Pool` and :class:`ThinDevice`.

One typed interface over two backends: ``"sim"`` (a pure-Python dm-thin
target over the pool directory's files, no root needed) and ``"kernel"``
(real device-mapper devices over loop devices, root only).

Example::

    with Pool.create("/tmp/pool", data_size="1G", metadata_size="64M") as pool:
        thin = pool.create_thin(1, "100M")
        thin.write(0, b"hello")
        snap = pool.create_snap(2, 1)
        print(pool.status_line())
"""
from __future__ import annotations

import os

from .backend import DEFAULT_BACKEND, PoolBackend, ThinBackend, load_backend
from .errors import Busy, DeviceNotFound, InvalidArgument, NoSpace, UsageError
from .pooldir import PoolConfig, PoolDir
from .target import PoolStatus, ThinStatus, parse_message
from .target.table import normalise_features
from .units import (METADATA_BLOCK_SIZE, SECTOR_SIZE, check_data_block_size, check_dev_id,
                    format_size, parse_size)

DEFAULT_DATA_SIZE = "100G"       # Docker's dm.loopdatasize
DEFAULT_METADATA_SIZE = "2G"     # Docker's dm.loopmetadatasize
DEFAULT_BLOCK_SIZE = "64K"       # Docker's dm.blocksize
DOCKER_LOW_WATER_MARK = 32768    # blocks, Docker's pool table


def default_low_water_mark(nr_data_blocks: int) -> int:
    """Docker's 32768 blocks, capped at a tenth of the pool."""
    return min(DOCKER_LOW_WATER_MARK, nr_data_blocks // 10)


class ThinDevice:
    """An active thin device of a :class:`Pool`.

    Byte offsets and lengths; reads of unprovisioned space return zeros.
    Errors carry the kernel's errno (ENOSPC when the pool is out of space).
    """

    def __init__(self, pool: "Pool", dev_id: int, size: int, backend: ThinBackend):
        self.pool = pool
        self.dev_id = dev_id
        self.size = size
        self._backend: ThinBackend | None = backend

    def __repr__(self) -> str:
        state = "active" if self._backend else "inactive"
        return f"<ThinDevice {self.dev_id} {format_size(self.size)} {state}>"

    @property
    def active(self) -> bool:
        return self._backend is not None

    @property
    def path(self) -> str | None:
        """The block device node (kernel backend), or None (simulator)."""
        return self._live().path

    @property
    def name(self) -> str | None:
        """The device-mapper name (kernel backend), or None (simulator)."""
        return getattr(self._live(), "name", None)

    def in_use(self) -> bool:
        """True if something outside this object holds the device open,
        mounted, or stacked on it (always False in the simulator)."""
        return self._live().in_use()

    def _live(self) -> ThinBackend:
        if self._backend is None:
            raise InvalidArgument(f"thin device {self.dev_id} is not active; call activate()")
        return self._backend

    def _check_range(self, offset: int, length: int, what: str) -> None:
        if offset < 0 or length < 0:
            raise InvalidArgument(f"{what}: offset and length must not be negative")
        if offset + length > self.size:
            raise NoSpace(f"{what} of {length} bytes at offset {offset} goes past the end of "
                          f"thin device {self.dev_id} ({format_size(self.size)}, {self.size} bytes)")

    def read(self, offset: int, length: int) -> bytes:
        """Read *length* bytes at *offset*; a read past the end is short."""
        if offset < 0 or length < 0:
            raise InvalidArgument("read: offset and length must not be negative")
        length = max(0, min(length, self.size - offset))
        return self._live().read(offset, length) if length else b""

    def write(self, offset: int, data: bytes) -> int:
        """Write *data* at *offset*; returns the number of bytes written."""
        self._check_range(offset, len(data), "write")
        return self._live().write(offset, data) if len(data) else 0

    def discard(self, offset: int, length: int) -> None:
        """Discard a byte range: whole data blocks inside it are unmapped."""
        self._check_range(offset, length, "discard")
        if length:
            self._live().discard(offset, length)

    def flush(self) -> None:
        """Flush: the pool commits its metadata, as on a REQ_PREFLUSH."""
        self._live().flush()

    def status(self) -> ThinStatus:
        return self._live().status()

    def status_line(self) -> str:
        """The kernel's thin status text: ``<mapped sectors> <highest|->``."""
        return self.status().to_line()

    def table_line(self) -> str:
        return f"0 {self.size // SECTOR_SIZE} thin {self.pool._table_pool_dev()} {self.dev_id}"

    def activate(self) -> "ThinDevice":
        """Activate the device (the kernel backend makes a dm device)."""
        if self._backend is None:
            self._backend = self.pool._backend().activate_thin(self.dev_id, self.size)
            self.pool._active[self.dev_id] = self
        return self

    def deactivate(self) -> None:
        """Deactivate the device.  Raises EBUSY (and stays active) if it is
        open or mounted elsewhere."""
        if self._backend is not None:
            self._backend.deactivate()
            self._backend = None
            self.pool._active.pop(self.dev_id, None)


class Pool:
    """A thin pool in a directory.  Use :meth:`create` or :meth:`open`."""

    def __init__(self, pooldir: PoolDir, config: PoolConfig, backend: PoolBackend):
        self.pooldir = pooldir
        self.config = config
        self._impl: PoolBackend | None = backend
        self._active: dict[int, ThinDevice] = {}

    # -- construction ---------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, data_size: int | str = DEFAULT_DATA_SIZE,
               metadata_size: int | str = DEFAULT_METADATA_SIZE,
               block_size: int | str = DEFAULT_BLOCK_SIZE, low_water_mark: int | None = None,
               features=(), backend: str = DEFAULT_BACKEND) -> "Pool":
        """Create a pool directory and format a new pool in it.

        Raises :class:`~dmthin.errors.UsageError` for bad sizes or a directory
        that already holds a pool, and :class:`~dmthin.errors.PoolLocked`.
        """
        data_bytes = parse_size(data_size, "data size")
        meta_bytes = parse_size(metadata_size, "metadata size")
        block_bytes = parse_size(block_size, "block size")
        block_sectors = check_data_block_size(block_bytes)
        nr_blocks = data_bytes // block_bytes
        if nr_blocks < 1:
            raise UsageError(f"data size {format_size(data_bytes)} is smaller than one "
                             f"{format_size(block_bytes)} block; use at least {block_size}")
        if meta_bytes < 2 << 20:
            raise UsageError(f"metadata size {format_size(meta_bytes)} is too small: "
                             "use at least 2M")
        if low_water_mark is None:
            low_water_mark = default_low_water_mark(nr_blocks)
        elif isinstance(low_water_mark, bool) or not isinstance(low_water_mark, int) \
                or low_water_mark < 0:
            raise UsageError(f"invalid low water mark {low_water_mark!r}: "
                             "give a number of data blocks")
        features = normalise_features(features)
        backend_cls = load_backend(backend)
        available = getattr(backend_cls, "available", None)
        if available is not None:
            available()                    # refuse before touching the filesystem
        pooldir = PoolDir(path)
        if pooldir.exists():
            raise UsageError(f"{pooldir.path} already holds a pool; open it, or remove it first")
        made = [p for p in (pooldir.path, pooldir.data_path, pooldir.metadata_path,
                            pooldir.lock_path) if not p.exists()]
        pooldir.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        pooldir.lock()
        try:
            pooldir.create_files(data_bytes, meta_bytes)
            config = PoolConfig(backend=backend, data_block_sectors=block_sectors,
                                low_water_mark=low_water_mark, features=features)
            impl = backend_cls.create(pooldir, config)
            pooldir.save_config(config)
        except BaseException:
            pooldir.unlock()
            # Leave nothing behind that this call made (a half-made pool).
            for p in reversed(made):
                try:
                    p.rmdir() if p == pooldir.path else p.unlink()
                except OSError:
                    pass
            raise
        return cls(pooldir, config, impl)

    @classmethod
    def open(cls, path: str | os.PathLike, backend: str | None = None) -> "Pool":
        """Open an existing pool directory with the backend it was created
        with, or the one named (pools move between backends)."""
        pooldir = PoolDir(path)
        config = pooldir.load_config()
        name = backend or config.backend
        backend_cls = load_backend(name)
        pooldir.lock()
        try:
            impl = backend_cls.open(pooldir, config)
        except BaseException:
            pooldir.unlock()
            raise
        return cls(pooldir, config, impl)

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._impl is None else self._impl.name
        return f"<Pool {str(self.pooldir.path)!r} {state}>"

    def close(self) -> None:
        """Commit, deactivate every device this pool activated, release the
        pool.  Safe to call twice."""
        if self._impl is None:
            return
        impl, self._impl = self._impl, None
        try:
            for thin in list(self._active.values()):
                thin._backend = None
            self._active.clear()
            impl.close()
        finally:
            self.pooldir.unlock()

    def _backend(self) -> PoolBackend:
        if self._impl is None:
            raise InvalidArgument(f"pool {self.pooldir.path} is closed")
        return self._impl

    @property
    def backend(self) -> str:
        """The name of the backend serving this pool."""
        return self._backend().name

    @property
    def data_block_size(self) -> int:
        """The data block size in bytes."""
        return self.config.data_block_sectors * SECTOR_SIZE

    # -- thin devices -------------------------------------------------------------
    def _save_size(self, dev_id: int, size: int | None) -> None:
        if size is None:
            self.config.thins.pop(dev_id, None)
        else:
            self.config.thins[dev_id] = size
        self.pooldir.save_config(self.config)

    def create_thin(self, dev_id: int, size: int | str) -> ThinDevice:
        """Create thin device *dev_id* of *size* bytes and activate it.

        Raises EEXIST if the id is in use, EINVAL for an id above 2^24-1.
        """
        check_dev_id(dev_id)
        nbytes = parse_size(size, "thin device size")
        if nbytes == 0 or nbytes % SECTOR_SIZE:
            raise UsageError(f"invalid thin device size {size!r}: "
                             "use a positive multiple of 512 bytes")
        self._backend().message(f"create_thin {dev_id}")
        self._save_size(dev_id, nbytes)
        return self.thin(dev_id)

    def create_snap(self, dev_id: int, origin_id: int) -> ThinDevice:
        """Snapshot *origin_id* as *dev_id* (same size) and activate it.

        An active origin is suspended around the message and resumed on
        every path, as the kernel requires.
        """
        check_dev_id(dev_id)
        check_dev_id(origin_id)
        size = self._size_of(origin_id)
        impl = self._backend()
        origin = self._active.get(origin_id)
        if origin is not None:
            impl.suspend_thin(origin_id)
        try:
            impl.message(f"create_snap {dev_id} {origin_id}")
        finally:
            if origin is not None:
                impl.resume_thin(origin_id)
        self._save_size(dev_id, size)
        return self.thin(dev_id)

    def _size_of(self, dev_id: int) -> int:
        if dev_id not in self.config.thins:
            if dev_id in self._backend().thin_ids():
                raise UsageError(f"thin device {dev_id} has no recorded size in "
                                 f"{self.pooldir.config_path}; set it with 'dmthin thin resize'")
            raise DeviceNotFound(f"no thin device {dev_id} in pool {self.pooldir.path}")
        return self.config.thins[dev_id]

    def delete(self, dev_id: int) -> None:
        """Deactivate (if this pool activated it) and delete *dev_id*.

        Raises EBUSY if the device is held open elsewhere, ENODATA if absent.
        """
        check_dev_id(dev_id)
        thin = self._active.get(dev_id)
        if thin is not None:
            if thin._live().in_use():
                raise Busy(f"thin device {dev_id} is in use (open or mounted); "
                           "close or unmount it first")
            thin.deactivate()
        self._backend().message(f"delete {dev_id}")
        self._save_size(dev_id, None)

    def resize_thin(self, dev_id: int, size: int | str) -> None:
        """Set thin device *dev_id*'s size (grow or shrink; the kernel keeps
        sizes in tables, not in the metadata).  An active device is resized
        in place (the kernel backend reloads its table).

        Raises ENODATA if there is no such device, UsageError for a bad size.
        """
        check_dev_id(dev_id)
        nbytes = parse_size(size, "thin device size")
        if nbytes == 0 or nbytes % SECTOR_SIZE:
            raise UsageError(f"invalid thin device size {size!r}: "
                             "use a positive multiple of 512 bytes")
        if dev_id not in self.config.thins and dev_id not in self._backend().thin_ids():
            raise DeviceNotFound(f"no thin device {dev_id} in pool {self.pooldir.path}")
        thin = self._active.get(dev_id)
        if thin is not None:
            thin._live().resize(nbytes)
            thin.size = nbytes
        self._save_size(dev_id, nbytes)

    def thin(self, dev_id: int) -> ThinDevice:
        """The active :class:`ThinDevice` *dev_id* (activating it if needed)."""
        check_dev_id(dev_id)
        if dev_id in self._active:
            return self._active[dev_id]
        size = self._size_of(dev_id)
        dev = ThinDevice(self, dev_id, size, self._backend().activate_thin(dev_id, size))
        self._active[dev_id] = dev
        return dev

    def thin_ids(self) -> list[int]:
        """Ids of every thin device in the pool, ascending."""
        return sorted(self._backend().thin_ids())

    def set_transaction_id(self, old: int, new: int) -> None:
        """Compare-and-swap the pool's transaction id (EINVAL on mismatch)."""
        self._backend().message(f"set_transaction_id {old} {new}")

    def reserve_metadata_snap(self) -> None:
        self._backend().message("reserve_metadata_snap")

    def release_metadata_snap(self) -> None:
        self._backend().message("release_metadata_snap")

    def message(self, text: str) -> str | None:
        """Send a kernel thin-pool message string, e.g. ``"create_thin 7"``.

        Sizes of thin devices created this way are recorded as 0 until set;
        deleting through a message forgets the size.
        """
        msg = parse_message(text)
        if msg.command == "delete":
            thin = self._active.get(msg.args[0])
            if thin is not None:
                thin.deactivate()
        result = self._backend().message(text)
        if msg.command == "delete":
            self._save_size(msg.args[0], None)
        elif msg.command == "create_snap" and msg.args[1] in self.config.thins:
            self._save_size(msg.args[0], self.config.thins[msg.args[1]])
        return result

    # -- status -----------------------------------------------------------------------
    def status(self) -> PoolStatus:
        """The pool's status (the kernel commits before reporting)."""
        return self._backend().status()

    def status_line(self) -> str:
        """The kernel's status text for the pool, exactly."""
        return self.status().to_line()

    def table_line(self) -> str:
        """The pool's table line as ``dmsetup table`` echoes it."""
        return self._backend().table_line()

    @property
    def event_nr(self) -> int:
        """The pool device's event counter (``dmsetup info``'s "Events"):
        it rises when the data low water mark or the metadata threshold is
        reached and when the pool changes mode."""
        return self._backend().event_nr

    def wait_event(self, event_nr: int, timeout: float | None = None) -> int:
        """Wait until :attr:`event_nr` exceeds *event_nr* (``dmsetup wait``);
        return it.  Raises :class:`~dmthin.errors.TimedOut` (ETIMEDOUT)."""
        return self._backend().wait_event(event_nr, timeout)

    @property
    def device_name(self) -> str | None:
        """The pool's device-mapper name (kernel backend), or None."""
        return getattr(self._backend(), "pool_name", None)

    @property
    def data_device(self) -> str | None:
        """The block device holding the data (a loop device), or None."""
        return getattr(self._backend(), "data_device", None)

    @property
    def metadata_device(self) -> str | None:
        """The block device holding the metadata (a loop device), or None."""
        return getattr(self._backend(), "metadata_device", None)

    @property
    def udev_sync_supported(self) -> bool:
        """Whether device nodes are synchronised with udev (kernel backend)."""
        return bool(getattr(self._backend(), "udev_sync_supported", False))

    @property
    def library_version(self) -> str | None:
        """libdevmapper's version (kernel backend), or None."""
        return getattr(self._backend(), "library_version", None)

    def _table_pool_dev(self) -> str:
        return getattr(self._backend(), "pool_dev", "pool")

    @property
    def metadata_block_size(self) -> int:
        return METADATA_BLOCK_SIZE
