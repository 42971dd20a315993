"""Docker's devicemapper ``DeviceSet`` over a dmthin pool.

A driver home (Docker's ``/var/lib/docker/devicemapper``) holds the pool
in ``devicemapper/`` (:mod:`dmthin.graph.rootpool`: created, opened, or
adopted from dockerd without formatting), device records in ``metadata/``
(:mod:`dmthin.graph.store`, moby's bytes), mount points in ``mnt/``.  The
algorithms are moby's: 24-bit ids walked from ``next_device_id``, an open
transaction around every create and delete closed with
``set_transaction_id``, rollback of an open transaction on restart only when
its id is above the pool's, retry with the next id when the pool says
EEXIST, a base device formatted once and verified by UUID, snapshots
guarded by the ``dm.min_free_space`` check, discard-then-delete with
deferred deletion of busy devices retried by a background worker every 30 s.
Which devices exist is the pool's metadata; their sizes are Docker's
records.

``readonly=True`` inspects a root without changing a byte of it: the pool
is opened read-only, nothing is created, rolled back or saved, mount points
and scratch files live in a private temporary directory, mounts are
read-only without journal replay, and every mutating call raises
:class:`~dmthin.errors.ReadOnly`.

Built only on the public facade (:class:`dmthin.Pool`).  The facade has no
DM_DEFERRED_REMOVE, so deferred removal is emulated here: a deactivation
that fails with EBUSY is remembered and retried by the worker, and
re-activating such a device cancels it (Docker's ``@cancel_deferred_remove``).

Simulator backend: everything at block level works (device lifecycle, ids,
transactions, rollback, free-space errors, deferred deletion, status,
restart, mkfs and base UUID through an image mirror, ext4 base growth).
Mounting needs the kernel backend (root and device-mapper):
:meth:`mount_device` raises EOPNOTSUPP there; use :meth:`device_access`
for tool-level (debugfs) access instead.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Self

from .. import Pool, ThinDevice, extfs
from ..blockdev import path_size
from ..errors import (
    Busy,
    DeviceExists,
    DeviceNotFound,
    DmThinError,
    NoSpace,
    NotSupported,
    ReadOnly,
    UsageError,
)
from ..extfs import Filesystem
from ..pooldir import device_prefix
from ..units import human_size_decimal
from . import baseimage, blockfs
from .dsstatus import deviceset_status
from .mounts import MountTable
from .options import DeviceSetOptions, parse_options, ram_in_bytes
from .rootpool import open_root_pool
from .store import (
    DeviceSetMeta,
    DevInfo,
    IdAllocator,
    MetadataStore,
    Transaction,
    check_hash,
)

log = logging.getLogger(__name__)

CLEANUP_INTERVAL = 30.0        # Docker's deletion worker ticker


class DeviceSet:
    """Thin devices for image layers and containers, Docker's way.

    ``DeviceSet(root, options=(), backend=None, readonly=False)``: *root* is
    the driver home; *options* are Docker's ``dm.*`` strings; *backend* is
    ``"sim"`` or ``"kernel"`` (default: the pool's own, ``"sim"`` for a new
    or adopted pool).  Raises :class:`~dmthin.errors.UsageError` for bad
    options, metadata or (read-only) a directory that is no graph root, and
    the pool's errors.
    """

    remove_retries = 200          # removeDevice: 200 x 100 ms on EBUSY
    retry_interval = 0.1

    def __init__(self, root: str | os.PathLike[str],
                 options: DeviceSetOptions | Iterable[str] = (), backend: str | None = None,
                 cleanup_interval: float | None = CLEANUP_INTERVAL, readonly: bool = False):
        self.root = Path(root)
        self.options = options if isinstance(options, DeviceSetOptions) \
            else parse_options(options)
        self.readonly = readonly
        self.loop_dir = self.root / "devicemapper"
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        if readonly:
            if not (self.root / "metadata").is_dir():
                raise UsageError(f"{self.root} is not a graph root (no metadata/ "
                                 "directory): give dockerd's DATA_ROOT/devicemapper")
            self._scratch = tempfile.TemporaryDirectory(prefix="dmthin-graph-")
            self.mnt_dir = Path(self._scratch.name) / "mnt"
            self.work_dir = Path(self._scratch.name) / "tmp"
        else:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.mnt_dir = self.root / "mnt"
            self.work_dir = self.root / "tmp"
        for d in (self.mnt_dir, self.work_dir):
            d.mkdir(mode=0o700, exist_ok=True)
        self.store = MetadataStore(self.root / "metadata", readonly=readonly)
        self.prefix = device_prefix(self.root, head="docker")
        self._lock = threading.RLock()
        self.devices: dict[str, DevInfo] = {}
        self.ids = IdAllocator()
        self.transaction_id = 0
        self.open_transaction: Transaction | None = None
        #: read-only: the open transaction a read-write start would roll back
        self.pending_rollback: Transaction | None = None
        self.nr_deleted = 0
        self.base_uuid = ""
        self.base_fs = ""
        self.filesystem = self.options.filesystem or ""
        self._active: dict[str, ThinDevice] = {}
        #: hash -> (readers, writers) of open_filesystem views
        self._fs_open: dict[str, tuple[int, int]] = {}
        self._pending_removal: set[str] = set()
        self._mounts = MountTable(readonly, self.options.mount_options)
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        try:
            rp = open_root_pool(self.root, self.options, self.prefix, backend, readonly)
        except BaseException:
            self._cleanup_scratch()
            raise
        self.pool: Pool | None = rp.pool
        self.pool_name = rp.name
        self.managed = rp.managed
        try:
            self._init_metadata()
            if not readonly:
                self._setup_base_image()
        except BaseException:
            self._release()
            raise
        if cleanup_interval and not readonly:
            self._worker = threading.Thread(target=self._deletion_worker,
                                            args=(cleanup_interval,), daemon=True,
                                            name="dmthin-deletion-worker")
            self._worker.start()

    # -- pool ------------------------------------------------------------------
    @property
    def live_pool(self) -> Pool:
        """The open pool; raises :class:`~dmthin.errors.UsageError` after
        :meth:`shutdown`."""
        if self.pool is None:
            raise UsageError(f"devmapper: the device set of {self.root} is shut down")
        return self.pool

    @property
    def chunk(self) -> int:
        """The pool's data block size in bytes."""
        return self.live_pool.data_block_size

    def _check_writable(self, what: str) -> None:
        if self.readonly:
            raise ReadOnly(f"devmapper: {self.root} is open read-only; cannot {what}")

    # -- startup ---------------------------------------------------------------
    def _init_metadata(self) -> None:
        """moby's ``initMetaData`` + ``loadDeviceSetMetaData``."""
        self.transaction_id = self.live_pool.status().transaction_id
        meta = self.store.load_deviceset()
        self.ids = IdAllocator(meta.next_device_id)
        self.base_uuid = meta.base_uuid
        self.base_fs = meta.base_fs
        self.devices = self.store.load_devices()
        for info in self.devices.values():
            self.ids.mark_used(info.device_id)
        self.nr_deleted = sum(1 for i in self.devices.values() if i.deleted)
        self.open_transaction = self.store.load_transaction()
        self._process_pending_transaction()

    def _process_pending_transaction(self) -> None:
        """moby's ``processPendingTransaction``: nothing to do when the open
        id equals the pool's (or there is no file); log when it is below;
        roll back (delete the device, its record and the transaction file)
        only when it is above.  Read-only: remember it in
        :attr:`pending_rollback` and change nothing."""
        t = self.open_transaction
        if t is None or t.open_transaction_id == self.transaction_id:
            return
        if t.open_transaction_id < self.transaction_id:
            log.error("devmapper: Open Transaction id %d is less than pool transaction id %d",
                      t.open_transaction_id, self.transaction_id)
            return
        if self.readonly:
            log.warning("devmapper: open transaction %d (device %s, id %d) is above the pool's "
                        "%d; a read-write start rolls it back", t.open_transaction_id,
                        t.device_hash or "base", t.device_id, self.transaction_id)
            self.pending_rollback = t
            return
        log.warning("devmapper: Rolling back open transaction: TransactionID=%d hash=%s "
                    "device_id=%d", t.open_transaction_id, t.device_hash, t.device_id)
        try:
            self.live_pool.delete(t.device_id)
        except (DeviceNotFound, Busy) as err:
            log.error("devmapper: Unable to delete device: %s", err)
        self.store.remove_device(t.device_hash)
        self.devices.pop(t.device_hash, None)
        self.ids.mark_free(t.device_id)
        self.store.remove_transaction()
        self.open_transaction = Transaction(self.transaction_id, "", 0)

    def _save_deviceset(self) -> None:
        self.store.save_deviceset(DeviceSetMeta(self.ids.next_id, self.base_uuid, self.base_fs))

    # -- transactions ------------------------------------------------------------
    def _open_tx(self, hash_: str, dev_id: int) -> Transaction:
        self._check_writable("change the pool")
        t = Transaction(self.transaction_id + 1, hash_, dev_id)
        self.open_transaction = t
        self.store.save_transaction(t)
        return t

    def _refresh_tx(self, t: Transaction, dev_id: int) -> None:
        t.device_id = dev_id
        self.store.save_transaction(t)

    def _close_tx(self, t: Transaction) -> None:
        new = t.open_transaction_id
        if new != self.transaction_id:
            self.live_pool.set_transaction_id(self.transaction_id, new)
            self.transaction_id = new

    def _create_register(self, hash_: str, size: int, origin: DevInfo | None) -> DevInfo:
        """createRegisterDevice / createRegisterSnapDevice."""
        pool = self.live_pool
        dev_id = self.ids.next_free()
        t = self._open_tx(hash_, dev_id)
        name = self.device_name(hash_)
        while True:
            try:
                if origin is None:
                    pool.create_thin(dev_id, size, name=name, activate=False)
                else:
                    # the message, not create_snap(): the origin's size is Docker's record,
                    # which the pool need not know (an adopted root records no sizes)
                    pool.message(f"create_snap {dev_id} {origin.device_id}")
            except DeviceExists:
                log.error("devmapper: Device ID %d exists in pool but it is supposed to be "
                          "unused", dev_id)
                dev_id = self.ids.next_free()
                self._refresh_tx(t, dev_id)
                continue
            except BaseException:
                self.ids.mark_free(dev_id)
                raise
            break
        info = DevInfo(hash_, dev_id, size, t.open_transaction_id)
        try:
            self.store.save_device(info)
            self.devices[hash_] = info
            self._close_tx(t)
        except BaseException:
            self.devices.pop(hash_, None)
            self.store.remove_device(hash_)
            with contextlib.suppress(Exception):
                pool.delete(dev_id)
            self.ids.mark_free(dev_id)
            raise
        self._save_deviceset()
        return info

    # -- base device (dmthin.graph.baseimage) -------------------------------------
    def _setup_base_image(self) -> None:
        baseimage.setup_base_image(self)

    def _grow_fs(self, info: DevInfo) -> None:
        baseimage.grow_fs(self, info)

    # -- lookup -----------------------------------------------------------------------
    def _lookup(self, hash_: str) -> DevInfo:
        info = self.devices.get(hash_)
        if info is None:
            raise DeviceNotFound(f"devmapper: Unknown device {hash_}")
        return info

    def has_device(self, hash_: str) -> bool:
        """True if *hash* has a record (deferred-deleted devices included)."""
        with self._lock:
            return hash_ in self.devices

    def device_info(self, hash_: str) -> DevInfo:
        """The record of *hash*; raises :class:`~dmthin.errors.DeviceNotFound`."""
        with self._lock:
            return self._lookup(hash_)

    def device_name(self, hash_: str) -> str:
        """Docker's dm name: ``<prefix>-<hash>`` (``<prefix>-base``)."""
        return f"{self.prefix}-{hash_ or 'base'}"

    # -- snapshots -----------------------------------------------------------------------
    def _check_free_space(self) -> None:
        pct = self.options.min_free_space_percent
        if pct == 0:
            return
        st = self.live_pool.status()
        for what, total, used in (("data", st.total_data_blocks, st.used_data_blocks),
                                  ("metadata", st.total_metadata_blocks,
                                   st.used_metadata_blocks)):
            min_free = max(1, int(total) * pct // 100)
            free = int(total) - int(used)
            if free < min_free:
                raise NoSpace(f"devmapper: Thin Pool has {free} free {what} blocks which is "
                              f"less than minimum required {min_free} free {what} blocks. "
                              "Create more free space in thin pool or use dm.min_free_space "
                              "option to change behavior")

    def add_device(self, hash_: str, base_hash: str, size: int | None = None) -> None:
        """Snapshot *base_hash* as *hash* (Docker's ``AddDevice``).

        Raises :class:`~dmthin.errors.DeviceExists`, ``DeviceNotFound``,
        :class:`~dmthin.errors.Busy` (base marked deleted),
        :class:`~dmthin.errors.NoSpace` (min free space), ``UsageError``.
        """
        check_hash(hash_)
        with self._lock:
            base = self._lookup(base_hash)
            if base.deleted:
                raise Busy(f"devmapper: Base device {base_hash} has been marked for deferred "
                           "deletion")
            if hash_ in self.devices:
                raise DeviceExists(f"devmapper: device {hash_} already exists. "
                                   f"Deleted={str(self.devices[hash_].deleted).lower()}")
            size = base.size if size is None else int(size)
            if size < base.size:
                raise UsageError(f"devmapper: Container size cannot be smaller than "
                                 f"{human_size_decimal(base.size)}")
            self._check_writable("add a device")
            self._check_free_space()
            pending = base_hash in self._pending_removal
            self._pending_removal.discard(base_hash)     # cancel a deferred removal...
            try:
                info = self._create_register(hash_, size, base)
            finally:
                if pending:                              # ...and defer it again after
                    self._deactivate(base, deferred=True)
            if size > base.size:
                self._grow_fs(info)

    # -- activation -----------------------------------------------------------------------
    def _activate(self, info: DevInfo, ignore_deleted: bool = False) -> ThinDevice:
        """Activate *info*'s device with the size Docker recorded, under
        Docker's dm name."""
        if info.deleted and not ignore_deleted:
            raise Busy(f"devmapper: Can't activate device {info.hash} as it is marked for "
                       "deferred deletion")
        thin = self._active.get(info.hash)
        if thin is not None:
            self._pending_removal.discard(info.hash)
            return thin
        thin = self.live_pool.thin(info.device_id, size=info.size,
                                   name=self.device_name(info.hash))
        self._active[info.hash] = thin
        return thin

    def _deactivate(self, info: DevInfo, deferred: bool | None = None) -> None:
        thin = self._active.get(info.hash)
        if thin is None:
            return
        if deferred is None:
            deferred = self.options.deferred_removal
        for attempt in range(1 if deferred else self.remove_retries):
            try:
                thin.deactivate()
            except Busy:
                if not thin.active:
                    # the facade forgot the device although the kernel kept it: re-attach
                    thin.activate()
                if deferred:
                    self._pending_removal.add(info.hash)
                    return
                if attempt + 1 == self.remove_retries:
                    raise
                self._lock.release()
                try:
                    time.sleep(self.retry_interval)
                finally:
                    self._lock.acquire()
                continue
            break
        self._active.pop(info.hash, None)
        self._pending_removal.discard(info.hash)

    def activate_device(self, hash_: str) -> ThinDevice:
        """Activate *hash*; return its :class:`~dmthin.ThinDevice`.

        Raises ``DeviceNotFound``, and ``Busy`` for a device marked deleted.
        """
        with self._lock:
            return self._activate(self._lookup(hash_))

    def deactivate_device(self, hash_: str) -> None:
        """Deactivate *hash* (deferred when busy and deferred removal is on).

        Raises ``DeviceNotFound``; ``Busy`` if busy and not deferred.
        """
        with self._lock:
            self._deactivate(self._lookup(hash_))

    def is_active(self, hash_: str) -> bool:
        with self._lock:
            return hash_ in self._active

    # -- deletion -----------------------------------------------------------------------------
    def delete_device(self, hash_: str, sync_delete: bool = False) -> None:
        """Discard (if ``dm.blkdiscard``), deactivate and delete *hash*.

        With deferred deletion on and ``sync_delete`` false, a device the
        pool reports busy is marked ``deleted`` and retried by the worker.
        Raises ``DeviceNotFound``, ``Busy``, ``ReadOnly``.
        """
        with self._lock:
            info = self._lookup(hash_)
            self._check_writable("delete a device")
            if self.options.blkdiscard:
                self._issue_discard(info)
            deferred = self.options.deferred_removal and self.options.deferred_deletion
            self._deactivate(info, deferred)
            self._delete_transaction(info, sync_delete)

    def _issue_discard(self, info: DevInfo) -> None:
        """Docker's issueDiscard: activate (even if marked deleted) and
        discard the whole device, unless something holds it open."""
        thin = self._activate(info, ignore_deleted=True)
        if info.hash in self._mounts or thin.in_use():
            log.debug("devmapper: Device: %s is in use. Not issuing discards.", info.hash)
            return
        try:
            thin.discard(0, thin.size)
        except (Busy, NotSupported) as err:
            log.debug("devmapper: Error discarding block on device: %s (ignoring)", err)

    def _delete_transaction(self, info: DevInfo, sync_delete: bool) -> None:
        t = self._open_tx(info.hash, info.device_id)
        try:
            busy = None
            try:
                self.live_pool.delete(info.device_id)
            except DeviceNotFound:
                pass                                   # already gone from the pool
            except Busy as err:
                if sync_delete or not self.options.deferred_deletion:
                    raise
                busy = err
            if busy is None:
                self.store.remove_device(info.hash)
                self.devices.pop(info.hash, None)
                self._active.pop(info.hash, None)
                self._pending_removal.discard(info.hash)
                if info.deleted:
                    self.nr_deleted -= 1
                self.ids.mark_free(info.device_id)
            elif not info.deleted:
                info.deleted = True
                self.store.save_device(info)
                self.nr_deleted += 1
        finally:
            self._close_tx(t)

    def cleanup_deleted_devices(self) -> None:
        """One pass of the deletion worker: retry deferred removals and
        deferred deletions (errors are logged, as Docker does)."""
        with self._lock:
            for hash_ in list(self._pending_removal):
                pending = self.devices.get(hash_)
                if pending is not None:
                    with contextlib.suppress(Busy):
                        self._deactivate(pending, deferred=True)
            if self.nr_deleted == 0 or self.readonly:
                return
            for info in [i for i in self.devices.values() if i.deleted]:
                try:
                    self.delete_device(info.hash, sync_delete=False)
                except (OSError, DmThinError) as err:   # logged, retried next tick (moby)
                    log.warning("devmapper: Deletion of device %s, device_id=%d failed:%s",
                                info.hash, info.device_id, err)

    def _deletion_worker(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.cleanup_deleted_devices()

    # -- mounting (kernel backend) ----------------------------------------------------------
    def mount_device(self, hash_: str, path: str | os.PathLike[str],
                     mount_label: str = "") -> None:
        """Activate *hash* and mount it at *path* (reference counted,
        :mod:`dmthin.graph.mounts`).  A read-only set mounts read-only
        without journal replay.

        Raises ``Busy`` (marked deleted, or mounted elsewhere),
        ``NotSupported`` (simulator: mounting needs the kernel backend),
        ``IOFailure`` (mount failed).
        """
        where = str(path)
        with self._lock:
            info = self._lookup(hash_)
            if info.deleted:
                raise Busy(f"devmapper: Can't mount device {hash_} as it has been marked for "
                           "deferred deletion")
            if hash_ in self._fs_open:
                raise Busy(f"devmapper: the filesystem of device {hash_} is open "
                           "(Driver.open_fs); close it before mounting")
            if self._mounts.add_ref(hash_, where):
                return
            thin = self._activate(info)
            if thin.path is None:
                raise NotSupported(f"devmapper: mounting {hash_ or 'base'} needs the kernel "
                                   "backend (root and device-mapper); in the simulator use "
                                   "DeviceSet.device_access() or Driver.open_fs()")
            self._mounts.mount(hash_, thin.path, where, mount_label)

    def unmount_device(self, hash_: str, path: str | os.PathLike[str]) -> None:
        """Drop one reference; at zero detach-unmount, remove the mount
        point and deactivate.  Raises ``DeviceNotFound``, ``IOFailure``."""
        with self._lock:
            info = self._lookup(hash_)
            if hash_ in self._mounts and self._mounts.drop_ref(hash_):
                self._deactivate(info)

    def _lookup_unmounted(self, hash_: str) -> DevInfo:
        """The device *hash_*, which must not be mounted (raises ``Busy``
        naming the mount point, ``DeviceNotFound``)."""
        info = self._lookup(hash_)
        mounted = self._mounts.where(hash_)
        if mounted is not None:
            raise Busy(f"devmapper: device {hash_} is mounted at {mounted}; unmount it first")
        return info

    @contextlib.contextmanager
    def device_access(self, hash_: str, write: bool = True) -> Iterator[str]:
        """Yield a path for fs tools: the device node (kernel) or an image
        mirror synced back on success (simulator).  The device must not be
        mounted.  Raises ``DeviceNotFound``, ``Busy``, ``ReadOnly`` (*write*
        on a read-only set)."""
        if write:
            self._check_writable("write a device")
        with self._lock:
            info = self._lookup_unmounted(hash_)
            was_active = hash_ in self._active
            thin = self._activate(info)
            try:
                with blockfs.device_access(thin, self.work_dir, self.chunk, write) as path:
                    yield path
            finally:
                if not was_active:
                    self._deactivate(info)

    @contextlib.contextmanager
    def open_filesystem(self, hash_: str, write: bool = False) -> Iterator[Filesystem]:
        """Yield the ext4 filesystem of *hash* read and written in place,
        through its thin device's own blocks (:class:`dmthin.extfs.Filesystem`;
        closed, hence written and committed, at the end).  The set's lock is
        held only to activate and deactivate, so other devices stay usable
        meanwhile (a streamed diff reads one layer while another is written).
        Raises ``DeviceNotFound``, ``Busy`` (mounted, or open for writing
        elsewhere), ``ReadOnly`` (*write* on a read-only set),
        ``NotSupported`` (not ext4, naming ``dm.fs=ext4``),
        ``BackendUnavailable`` (dmthin built without libext2fs)."""
        if write:
            self._check_writable("write a device")
        with self._lock:
            info = self._lookup_unmounted(hash_)
            readers, writers = self._fs_open.get(hash_, (0, 0))
            if writers or (write and readers):
                raise Busy(f"devmapper: the filesystem of device {hash_} is open "
                           f"{'for writing ' if writers else ''}elsewhere")
            was_active = hash_ in self._active
            thin = self._activate(info)
            self._fs_open[hash_] = (readers + (not write), writers + write)
        try:
            if extfs.probe_fs_type(thin) != "ext4":
                raise NotSupported(extfs.XFS_REFUSAL)
            with extfs.Filesystem(thin, write=write) as fs:
                yield fs
        finally:
            with self._lock:
                readers, writers = self._fs_open.pop(hash_)
                readers, writers = readers - (not write), writers - write
                if readers or writers:
                    self._fs_open[hash_] = (readers, writers)
                elif not was_active:
                    self._deactivate(info)

    # -- pool size, status, shutdown --------------------------------------------------------
    def resize_pool(self, data_size: int | str | None = None,
                    metadata_size: int | str | None = None) -> None:
        """Grow the pool's data and/or metadata live (Docker's ``ResizePool``).

        Raises ``UsageError`` (shrinking, or a pool the driver does not
        manage), ``ReadOnly``, and the pool's errors."""
        self._check_writable("resize the pool")
        with self._lock:
            if not self.managed:
                raise UsageError("devmapper: the pool is not driver-managed (dm.thinpooldev); "
                                 "resize it with 'dmthin pool resize'")
            pool = self.live_pool
            for name, size, resize in (("data", data_size, pool.resize_data),
                                       ("metadata", metadata_size, pool.resize_metadata)):
                if size is None:
                    continue
                nbytes = ram_in_bytes(size) if isinstance(size, str) else int(size)
                path = self.loop_dir / name
                have = path_size(path)
                if nbytes < have:
                    raise UsageError(f"devmapper: Can't shrink file {path}")
                if nbytes > have:
                    resize(nbytes)

    def status(self) -> list[tuple[str, str]]:
        """Docker's ``Status()`` pairs, in Docker's order."""
        with self._lock:
            return deviceset_status(self)

    def shutdown(self) -> None:
        """Stop the worker, save metadata (read-write), unmount and
        deactivate everything this set activated, and close the pool (a pool
        the set attached to stays active).  Safe to call twice."""
        if self._worker is not None:
            self._stop.set()
            self._worker.join()
            self._worker = None
        with self._lock:
            if self.pool is None:
                return
            if not self.readonly:
                self._save_deviceset()
            self._mounts.unmount_all()
            for hash_ in list(self._active):
                info = self.devices.get(hash_)
                if info is not None:
                    with contextlib.suppress(Busy):
                        self._deactivate(info, deferred=False)
            self._active.clear()
            self._release()

    def _release(self) -> None:
        try:
            if self.pool is not None:
                self.pool.close()
        finally:
            self.pool = None
            self._cleanup_scratch()

    def _cleanup_scratch(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
