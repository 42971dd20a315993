"""The public pool API: :class:`Pool` (and :class:`~dmthin.ThinDevice`).

One typed interface over two backends: ``"sim"`` (a pure-Python dm-thin
target over the pool's files, no root needed) and ``"kernel"`` (real
device-mapper devices, root only).

Example::

    with Pool.create("/tmp/pool", data_size="1G", metadata_size="64M") as pool:
        thin = pool.create_thin(1, "100M")
        thin.write(0, b"hello")
        snap = pool.create_snap(2, 1)
        print(pool.status_line())

Constructors:

* :meth:`Pool.create` makes a pool directory and formats a new pool.  It
  refuses metadata that already holds a pool (thin superblock magic), with
  or without ``pool.json``: adopt it instead, or pass ``force=True``.
* :meth:`Pool.open` opens a dmthin pool directory (``pool.json``), or
  attaches to an active kernel pool given as ``/dev/mapper/NAME``
  (Docker's ``dm.thinpooldev``).
* :meth:`Pool.adopt` serves a data + metadata pair made elsewhere (Docker's
  ``devicemapper/devicemapper/``, LVM's tdata/tmeta, files or block
  devices): block size from the superblock, nothing written until the user
  changes something.  A directory that holds ``pool.json`` is opened.

Rules the facade keeps for both backends:

* **The metadata is the truth**: :meth:`Pool.thin_ids` lists the devices in
  the metadata (the kernel backend reads a metadata snapshot of the live
  pool).  ``pool.json`` caches what the metadata cannot hold: thin sizes
  and names.  A device without a recorded size needs ``size=``.
* **Read-only** (``readonly=True``): every change raises
  :class:`~dmthin.errors.ReadOnly` (EROFS); nothing writes a byte (no lock
  file, no ``pool.json``, no metadata commit; the kernel backend loads the
  pool ``read_only`` or attaches to the active pool unchanged, and makes
  read-only thin devices).
* **Kernel state persists** like dmsetup's and LVM's: ``close()`` removes
  only the devices this object activated, and none with
  ``keep_active=True``; devices that were already active are attached to
  and left alone; :meth:`Pool.deactivate` removes every device of the pool.
  With the simulator, activation lasts as long as the Pool object.
* **Names**: the pool's dm name defaults to ``dmthin-MAJ:MIN-INO-pool``
  (of the pool directory), thin devices to ``dmthin-MAJ:MIN-INO-<id>``;
  callers may pass their own (Docker: ``docker-MAJ:MIN-INO-pool`` and
  ``docker-MAJ:MIN-INO-<hash>``).  Thin names given are recorded.
* **Input**: ids, sizes and offsets are checked here (``operator.index``:
  no floats, no None), so a rejected call never reaches the backend.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

from .backend import DEFAULT_BACKEND, BackendInfo, PoolBackend
from .errors import Busy, DeviceExists, DeviceNotFound, InvalidArgument, ReadOnly, UsageError
from .pooldir import PoolConfig, PoolDir, device_prefix
from .poolmeta import read_thin_ids
from .poolsetup import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_DATA_SIZE,
    DEFAULT_METADATA_SIZE,
    DOCKER_LOW_WATER_MARK,
    MAX_METADATA_BYTES,
    Opened,
    adopt_pool,
    attach_device,
    create_pool,
    default_low_water_mark,
    default_metadata_size,
    open_pool,
)
from .target import Message, PoolStatus
from .thindev import ThinDevice, check_index
from .units import METADATA_BLOCK_SIZE, SECTOR_SIZE, check_dev_id, check_name, parse_size

__all__ = ["Pool", "ThinDevice", "DEFAULT_DATA_SIZE", "DEFAULT_METADATA_SIZE",
           "DEFAULT_BLOCK_SIZE", "DOCKER_LOW_WATER_MARK", "default_low_water_mark",
           "default_metadata_size"]

#: the kernel's limit on a device's length: sector_t, kept below 2^63
MAX_THIN_BYTES = ((1 << 63) - 1) * SECTOR_SIZE


def check_thin_size(size: object) -> int:
    """A thin device size in bytes: a positive multiple of 512, below the
    kernel's 2^63 sectors.  Raises UsageError."""
    nbytes = parse_size(size, "thin device size")
    if nbytes == 0 or nbytes % SECTOR_SIZE or nbytes > MAX_THIN_BYTES:
        raise UsageError(f"invalid thin device size {size!r}: use a positive multiple of 512 "
                         "bytes below 2^63 sectors")
    return nbytes


class Pool:
    """A thin pool.  Use :meth:`create`, :meth:`open` or :meth:`adopt`."""

    def __init__(self, pooldir: PoolDir | None, config: PoolConfig, impl: PoolBackend, *,
                 path: Path | None = None, readonly: bool = False, prefix: str | None = None,
                 config_saved: bool = True, allow_other_owner: bool = False,
                 locker: PoolDir | None = None):
        """Wrap a backend serving *pooldir* (its lock held) with *config*.
        Use :meth:`create`, :meth:`open` or :meth:`adopt` instead: they
        build both."""
        label = path if path is not None else pooldir.path if pooldir is not None else None
        if label is None:
            raise UsageError("Pool needs a pool directory or a path")
        self.pooldir = pooldir
        #: whose lock this object holds (the pool directory's, or for an
        #: attached device the one taken on its metadata)
        self._locker = locker if locker is not None else pooldir
        self.config = config
        self._impl: PoolBackend | None = impl
        self._readonly = readonly
        self._prefix = prefix or device_prefix(label)
        self._label = label
        self._config_saved = config_saved
        self._allow_other_owner = allow_other_owner
        self._handles: dict[int, ThinDevice] = {}
        for live in impl.active_thins():
            dev = ThinDevice(self, live.dev_id, live.size, live.name)
            dev._bind(live)
            self._handles[live.dev_id] = dev

    @classmethod
    def _serving(cls, o: Opened) -> Pool:
        return cls(o.pooldir, o.config, o.impl, path=o.spec.path, readonly=o.spec.readonly,
                   prefix=o.prefix, config_saved=o.config_saved,
                   allow_other_owner=o.allow_other_owner, locker=o.locker)

    # -- construction ---------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str], data_size: int | str = DEFAULT_DATA_SIZE,
               metadata_size: int | str | None = None,
               block_size: int | str = DEFAULT_BLOCK_SIZE, low_water_mark: int | None = None,
               features: tuple[str, ...] | list[str] = (), backend: str = DEFAULT_BACKEND,
               name: str | None = None, force: bool = False,
               allow_other_owner: bool = False) -> Pool:
        """Create a pool directory (0700; ``data``/``metadata`` 0600, sparse)
        and format a new pool in it.

        *metadata_size* None: 64 bytes per data block, at least 2M (LVM's
        rule).  *low_water_mark* None: ``min(32768, blocks / 10)``.  *name*:
        the kernel pool's dm name (default ``dmthin-MAJ:MIN-INO-pool``).
        Existing ``data``/``metadata`` regular files are kept (grown, never
        shrunk), but metadata that holds a pool is refused unless *force*.

        Raises :class:`~dmthin.errors.UsageError` (bad sizes, a pool already
        there, a symlink, a directory owned by someone else unless
        *allow_other_owner*), :class:`~dmthin.errors.PoolLocked`,
        :class:`~dmthin.errors.BackendUnavailable`.  A failed create removes
        exactly the files this call made.
        """
        return cls._serving(create_pool(path, data_size, metadata_size, block_size,
                                        low_water_mark, features, backend, name, force,
                                        allow_other_owner))

    @classmethod
    def open(cls, path: str | os.PathLike[str], backend: str | None = None,
             readonly: bool = False, name: str | None = None,
             allow_other_owner: bool = False) -> Pool:
        """Open a dmthin pool directory with the backend it was made with,
        or the one named (pools move between backends).  *path* may also be
        ``/dev/mapper/NAME`` of an active kernel pool: attach to it.  A pool
        already active in the kernel (by *name*, the recorded or default
        name, or by its metadata device) is attached to, never made twice.

        Raises UsageError (no ``pool.json``: names :meth:`adopt`; a symlink;
        another owner), :class:`~dmthin.errors.PoolLocked`,
        :class:`~dmthin.errors.MetadataError`.
        """
        text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else ""
        if isinstance(text, str) and (text.startswith(("/dev/mapper/", "/dev/dm-"))):
            return cls._serving(attach_device(text, backend, readonly))
        return cls._serving(open_pool(path, backend, readonly, name, allow_other_owner))

    @classmethod
    def adopt(cls, path: str | os.PathLike[str], data: str | os.PathLike[str] | None = None,
              metadata: str | os.PathLike[str] | None = None, backend: str | None = None,
              readonly: bool = False, name: str | None = None,
              low_water_mark: int | None = None, features: tuple[str, ...] | None = None,
              allow_other_owner: bool = False, record: bool = False) -> Pool:
        """Serve an existing pool made elsewhere: *data* and *metadata*
        (default ``PATH/data`` and ``PATH/metadata``; files or block
        devices).  Block size and sizes come from the superblock; *backend*
        defaults to ``"sim"``.  ``PATH/pool.json`` is written (recording the
        paths, sizes, names) only when something changes, or at once with
        *record* (``dmthin pool adopt``), after which :meth:`open` serves
        PATH; a PATH that already holds one is simply opened.

        Raises UsageError (no valid thin superblock: names
        :meth:`create`), :class:`~dmthin.errors.PoolLocked`, and Busy when
        the simulator is asked to write a pool the kernel holds active.
        """
        pool = cls._serving(adopt_pool(path, data, metadata, backend, readonly, name,
                                       low_water_mark, features, allow_other_owner))
        if record and not pool._config_saved:
            try:
                pool._writable("record the adopted pool")
                pool._save()
            except BaseException:
                pool.close()
                raise
        return pool

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._impl is None else self._impl.name
        ro = " readonly" if self._readonly else ""
        return f"<Pool {str(self._label)!r} {state}{ro}>"

    def close(self, keep_active: bool = False) -> None:
        """Commit and release the pool.  Kernel devices this object
        activated are removed unless *keep_active*; devices it found active
        stay.  Safe to call twice.  Raises EBUSY (naming the mount point)
        for a device of ours that is still in use."""
        if self._impl is None:
            return
        impl, self._impl = self._impl, None
        try:
            impl.close(keep_active)
        finally:
            for dev in self._handles.values():
                dev._bind(None)
            if self._locker is not None:
                self._locker.unlock()

    def deactivate(self) -> None:
        """Remove every device of this pool from the kernel -- its thin
        devices (whoever activated them), the pool, the loop devices dmthin
        attached -- and close.  Raises EBUSY (nothing more removed) if a thin
        device is in use.  With the simulator this is :meth:`close`."""
        impl = self._backend()
        impl.deactivate()
        self._impl = None
        for dev in self._handles.values():
            dev._bind(None)
        if self._locker is not None:
            self._locker.unlock()

    def _backend(self) -> PoolBackend:
        if self._impl is None:
            raise InvalidArgument(f"pool {self._label} is closed")
        return self._impl

    def _writable(self, what: str) -> PoolBackend:
        impl = self._backend()
        if self._readonly:
            raise ReadOnly(f"{what}: pool {self._label} is open read-only; open it without "
                           "readonly to change it")
        return impl

    @property
    def readonly(self) -> bool:
        """True if opened with ``readonly=True``."""
        return self._readonly

    @property
    def path(self) -> Path:
        """The pool directory, or the pool device attached to."""
        return self._label

    @property
    def backend(self) -> str:
        """The name of the backend serving this pool."""
        return self._backend().name

    @property
    def data_block_size(self) -> int:
        """The data block size in bytes."""
        return self.config.data_block_sectors * SECTOR_SIZE

    @property
    def metadata_block_size(self) -> int:
        return METADATA_BLOCK_SIZE

    # -- pool.json ---------------------------------------------------------------
    def _save(self) -> None:
        if self.pooldir is None:
            return              # attached by device: the caller keeps its own records
        if self._config_saved:
            self.pooldir.save_config(self.config)
            return
        self.pooldir.make_dir(self._allow_other_owner)
        self.pooldir.write_config_new(self.config)
        self._config_saved = True

    def _record(self, dev_id: int, size: int | None, name: str | None) -> None:
        changed = False
        if size is not None and self.config.thins.get(dev_id) != size:
            self.config.thins[dev_id] = size
            changed = True
        if name is not None and self.config.names.get(dev_id) != name:
            self.config.names[dev_id] = name
            changed = True
        if changed:
            self._save()

    def _forget(self, dev_id: int) -> None:
        if dev_id in self.config.thins or dev_id in self.config.names:
            self.config.thins.pop(dev_id, None)
            self.config.names.pop(dev_id, None)
            self._save()

    # -- thin devices ---------------------------------------------------------------
    def _thin_name(self, dev_id: int, name: str | None) -> str:
        if name is not None:
            return check_name(name)
        return self.config.names.get(dev_id) or f"{self._prefix}-{dev_id}"

    def _known_size(self, dev_id: int) -> int:
        dev = self._handles.get(dev_id)
        if dev is not None:
            return dev.size
        if dev_id in self.config.thins:
            return self.config.thins[dev_id]
        if dev_id in self.thin_ids():
            raise UsageError(f"thin device {dev_id} has no recorded size; give size= / --size, "
                             "or record one with resize_thin / 'dmthin thin resize'")
        raise DeviceNotFound(f"no thin device {dev_id} in pool {self._label}")

    def thin(self, dev_id: int, size: int | str | None = None,
             name: str | None = None) -> ThinDevice:
        """The active :class:`ThinDevice` *dev_id*, activating it if needed
        with *size* (default: the recorded size) under the dm *name*
        (default: the recorded or ``dmthin-MAJ:MIN-INO-<id>``).  A device of
        this pool already active in the kernel is attached to.

        Raises ENODATA if the metadata has no such device, UsageError if it
        has no recorded size and none is given.
        """
        dev_id = check_dev_id(dev_id)
        nbytes = None if size is None else check_thin_size(size)
        dev = self._handles.get(dev_id)
        if dev is not None and dev.active:
            return dev
        impl = self._backend()
        if nbytes is None:
            nbytes = self._known_size(dev_id)
        live = impl.activate_thin(dev_id, nbytes, self._thin_name(dev_id, name))
        if dev is None:
            dev = ThinDevice(self, dev_id, nbytes, name)
            self._handles[dev_id] = dev
        dev._bind(live)
        return dev

    def deactivate_thin(self, dev_id: int) -> None:
        """Deactivate thin *dev_id* if active (whoever activated it).
        Raises EBUSY (it stays active) if it is in use."""
        dev = self._handles.get(check_dev_id(dev_id))
        if dev is None or dev._impl is None:
            return
        dev._impl.deactivate()
        dev._bind(None)

    def active_thins(self) -> list[ThinDevice]:
        """The active thin devices of this pool known to this object
        (activated by it, or found active in the kernel), by id."""
        return [d for _i, d in sorted(self._handles.items()) if d.active]

    def create_thin(self, dev_id: int, size: int | str, name: str | None = None,
                    activate: bool = True) -> ThinDevice:
        """Create thin device *dev_id* of *size* bytes (recorded in
        ``pool.json``) and, unless *activate* is false, activate it.

        Raises EEXIST if the id is in use, EINVAL for an id above 2^24-1,
        UsageError for a bad size or name, EROFS on a read-only pool.
        """
        dev_id = check_dev_id(dev_id)
        nbytes = check_thin_size(size)
        name = None if name is None else check_name(name)
        impl = self._writable(f"create_thin {dev_id}")
        impl.message(Message.create_thin(dev_id))
        self._record(dev_id, nbytes, name)
        return self._handle(dev_id, nbytes, name, activate)

    def _handle(self, dev_id: int, size: int, name: str | None, activate: bool) -> ThinDevice:
        if activate:
            return self.thin(dev_id, size, name)
        dev = ThinDevice(self, dev_id, size, name)
        self._handles[dev_id] = dev
        return dev

    def create_snap(self, dev_id: int, origin_id: int, name: str | None = None,
                    activate: bool = True) -> ThinDevice:
        """Snapshot *origin_id* as *dev_id* (same size) and, unless
        *activate* is false, activate it.  An active origin is suspended
        around the message and resumed on every path, as the kernel
        requires.  Raises EEXIST, ENODATA (no origin), UsageError if the
        origin's size is unknown (activate it with ``size=`` first)."""
        dev_id = check_dev_id(dev_id)
        origin_id = check_dev_id(origin_id)
        name = None if name is None else check_name(name)
        self._writable(f"create_snap {dev_id} {origin_id}")
        try:
            size = self._known_size(origin_id)
        except DeviceNotFound:
            # the kernel's order: a used dev_id is EEXIST before a missing origin
            if dev_id in self.thin_ids():
                raise DeviceExists(f"thin device {dev_id} already exists") from None
            raise
        self._snapshot(dev_id, origin_id)
        self._record(dev_id, size, name)
        return self._handle(dev_id, size, name, activate)

    def _snapshot(self, dev_id: int, origin_id: int) -> None:
        impl = self._backend()
        origin = self._handles.get(origin_id)
        live = origin is not None and origin.active
        if live:
            impl.suspend_thin(origin_id)
        try:
            impl.message(Message.create_snap(dev_id, origin_id))
        finally:
            if live:
                impl.resume_thin(origin_id)

    def delete(self, dev_id: int) -> None:
        """Deactivate (if active) and delete *dev_id*.

        Raises EBUSY if the device is held open elsewhere, ENODATA if absent.
        """
        dev_id = check_dev_id(dev_id)
        self._writable(f"delete {dev_id}")
        self._deactivate_for_delete(dev_id)
        self._backend().message(Message.delete(dev_id))
        self._handles.pop(dev_id, None)
        self._forget(dev_id)

    def _deactivate_for_delete(self, dev_id: int) -> None:
        dev = self._handles.get(dev_id)
        if dev is not None and dev.active:
            if dev.in_use():
                raise Busy(f"thin device {dev_id} is in use (open or mounted); "
                           "close or unmount it first")
            self.deactivate_thin(dev_id)

    def resize_thin(self, dev_id: int, size: int | str) -> None:
        """Set thin device *dev_id*'s size (grow or shrink; the kernel keeps
        sizes in tables, not in the metadata).  An active device is resized
        in place (the kernel backend reloads its table).

        Raises ENODATA if there is no such device, UsageError for a bad size.
        """
        dev_id = check_dev_id(dev_id)
        nbytes = check_thin_size(size)
        impl = self._writable(f"resize thin device {dev_id}")
        if dev_id not in impl.thin_ids(read_thin_ids):
            raise DeviceNotFound(f"no thin device {dev_id} in pool {self._label}")
        dev = self._handles.get(dev_id)
        if dev is not None and dev._impl is not None:
            dev._impl.resize(nbytes)
        elif dev is not None:
            dev._size = nbytes
        self._record(dev_id, nbytes, None)

    def thin_ids(self) -> list[int]:
        """Ids of every thin device in the pool's metadata, ascending."""
        return sorted(self._backend().thin_ids(read_thin_ids))

    # -- messages -----------------------------------------------------------------
    def set_transaction_id(self, old: int, new: int) -> None:
        """Compare-and-swap the pool's transaction id (EINVAL on mismatch)."""
        msg = Message.set_transaction_id(old, new)
        self._writable(str(msg)).message(msg)

    def reserve_metadata_snap(self) -> None:
        self._writable("reserve_metadata_snap").message(Message.reserve_metadata_snap())

    def release_metadata_snap(self) -> None:
        self._writable("release_metadata_snap").message(Message.release_metadata_snap())

    def message(self, text: str) -> str | None:
        """Send a kernel thin-pool message string, e.g. ``"create_thin 7"``.

        Bookkeeping as for the methods: ``create_thin`` records no size
        (give ``size=`` when activating it), ``create_snap`` records the
        origin's size if known (suspending an active origin around it),
        ``delete`` deactivates the device first and forgets it.  Raises
        InvalidArgument for text the kernel would refuse (also non-strings).
        """
        msg = Message.parse(text)
        impl = self._writable(str(msg))
        if msg.command == "create_snap":
            dev_id, origin_id = msg.args
            self._snapshot(dev_id, origin_id)
            size = self.config.thins.get(origin_id)
            origin = self._handles.get(origin_id)
            self._record(dev_id, origin.size if origin is not None else size, None)
            return None
        if msg.command == "delete":
            self._deactivate_for_delete(msg.args[0])
        result = impl.message(msg)
        if msg.command == "delete":
            self._handles.pop(msg.args[0], None)
            self._forget(msg.args[0])
        return result

    # -- growing ------------------------------------------------------------------------
    def resize_data(self, size: int | str) -> None:
        """Grow the pool's data device to *size* bytes, live (the kernel
        backend: grow the file, loop set-capacity, reload, resume).  Raises
        InvalidArgument (EINVAL) for a size below the current one."""
        nbytes = parse_size(size, "data size")
        self._writable("resize the data device").resize_data(nbytes)

    def resize_metadata(self, size: int | str) -> None:
        """Grow the pool's metadata device to *size* bytes, live.  Raises
        InvalidArgument (EINVAL) for a size below the current one,
        UsageError above the kernel's maximum."""
        nbytes = parse_size(size, "metadata size")
        if nbytes > MAX_METADATA_BYTES:
            raise UsageError(f"metadata size {size!r} is above the kernel's maximum "
                             f"({MAX_METADATA_BYTES} bytes)")
        self._writable("resize the metadata device").resize_metadata(nbytes)

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
        return self._backend().wait_event(check_index(event_nr, "event number"), timeout)

    def info(self) -> BackendInfo:
        """Where the pool lives: its dm name and device, the data and
        metadata devices, libdevmapper's version, udev sync."""
        return self._backend().info()

    @property
    def device_name(self) -> str | None:
        """The pool's device-mapper name (kernel backend), or None."""
        return self.info().device_name

    @property
    def data_device(self) -> str | None:
        """The block device holding the data (a loop device), or None."""
        return self.info().data_device

    @property
    def metadata_device(self) -> str | None:
        """The block device holding the metadata (a loop device), or None."""
        return self.info().metadata_device

    @property
    def udev_sync_supported(self) -> bool:
        """Whether device nodes are synchronised with udev (kernel backend)."""
        return self.info().udev_sync_supported

    @property
    def library_version(self) -> str | None:
        """libdevmapper's version (kernel backend), or None."""
        return self.info().library_version
