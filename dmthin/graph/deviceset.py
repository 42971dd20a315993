"""Docker's devicemapper ``DeviceSet`` over a dmthin pool.

One thin pool per driver root, in ``<root>/devicemapper/`` (an ordinary
dmthin pool directory: ``Pool.open`` accepts it), device records in
``<root>/metadata/`` (:mod:`dmthin.graph.store`), mount points in
``<root>/mnt/``.  The algorithms are moby's (see
docs/docker-devmapper.md §4): 24-bit ids walked from ``next_device_id``,
an open transaction around every create and delete closed with
``set_transaction_id``, rollback of an open transaction on restart, retry
with the next id when the pool says EEXIST, a base device formatted once
and verified by UUID, snapshots guarded by the ``dm.min_free_space`` check,
discard-then-delete with deferred deletion of busy devices retried by a
background worker every 30 s.

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
import threading
import time
from pathlib import Path

from .. import Pool
from ..errors import Busy, DeviceExists, DeviceNotFound, NoSpace, NotSupported, UsageError
from ..units import human_size_decimal
from . import baseimage, blockfs
from .options import DeviceSetOptions, join_mount_options, parse_options
from .store import DevInfo, IdAllocator, MetadataStore, Transaction, check_hash
from .dsstatus import deviceset_status

log = logging.getLogger(__name__)

POOL_CONFIG = "pool.json"      # marks a dmthin pool directory
CLEANUP_INTERVAL = 30.0        # Docker's deletion worker ticker


def device_prefix(root: Path) -> str:
    """Docker's ``docker-<major>:<minor>-<inode>`` of the driver home."""
    st = os.stat(root)
    dev = st.st_dev
    major = (dev >> 8) & 0xFFF
    minor = (dev & 0xFF) | ((dev >> 12) & 0xFFF00)
    return f"docker-{major}:{minor}-{st.st_ino}"


class DeviceSet:
    """Thin devices for image layers and containers, Docker's way.

    ``DeviceSet(root, options=(), backend=None)``: *options* are Docker's
    ``dm.*`` strings; *backend* is ``"sim"`` or ``"kernel"`` (default: the
    pool's own, ``"sim"`` for a new pool).  Raises
    :class:`~dmthin.errors.UsageError` for bad options or metadata, and the
    pool's errors.
    """

    remove_retries = 200          # removeDevice: 200 x 100 ms on EBUSY
    retry_interval = 0.1

    def __init__(self, root, options=(), backend: str | None = None,
                 cleanup_interval: float | None = CLEANUP_INTERVAL):
        self.root = Path(root)
        self.options = options if isinstance(options, DeviceSetOptions) \
            else parse_options(options)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.home = self.root / "devicemapper"
        self.mnt_dir = self.root / "mnt"
        self.work_dir = self.root / "tmp"
        for d in (self.mnt_dir, self.work_dir):
            d.mkdir(mode=0o700, exist_ok=True)
        self.store = MetadataStore(self.root / "metadata")
        self.prefix = device_prefix(self.root)
        self._lock = threading.RLock()
        self.devices: dict[str, DevInfo] = {}
        self.ids = IdAllocator()
        self.transaction_id = 0
        self.open_transaction: Transaction | None = None
        self.nr_deleted = 0
        self.base_uuid = ""
        self.base_fs = ""
        self.filesystem = self.options.filesystem or ""
        self._active: dict[str, object] = {}          # hash -> ThinDevice
        self._pending_removal: set[str] = set()
        self._mounts: dict[str, list] = {}            # hash -> [path, count]
        self.pool = self._open_pool(backend)
        self.pool_name = self.options.thin_pool_dev or f"{self.prefix}-pool"
        try:
            self._init_metadata()
            self._setup_base_image()
        except BaseException:
            self.pool.close()
            raise
        self._stop = threading.Event()
        self._worker = None
        if cleanup_interval:
            self._worker = threading.Thread(target=self._deletion_worker,
                                            args=(cleanup_interval,), daemon=True,
                                            name="dmthin-deletion-worker")
            self._worker.start()

    # -- pool ------------------------------------------------------------------
    def _open_pool(self, backend: str | None) -> Pool:
        o = self.options
        if o.thin_pool_dev:
            return Pool.open(o.thin_pool_dev, backend=backend)
        if (self.home / POOL_CONFIG).exists():
            for name, size in (("data", o.loop_data_size), ("metadata", o.loop_metadata_size)):
                path = self.home / name
                have = path.stat().st_size
                if have < size:
                    os.truncate(path, size)      # grows only; the pool sees it on open
                elif have > size:
                    log.warning("devmapper: Can't shrink loopback file %s", path)
            return Pool.open(self.home, backend=backend)
        return Pool.create(self.home, data_size=o.loop_data_size,
                           metadata_size=o.loop_metadata_size, block_size=o.block_size,
                           backend=backend or "sim")

    @property
    def chunk(self) -> int:
        return self.pool.data_block_size

    # -- startup ---------------------------------------------------------------
    def _init_metadata(self) -> None:
        self.transaction_id = self.pool.status().transaction_id
        ds = self.store.load_deviceset()
        self.ids = IdAllocator(int(ds.get("next_device_id", 0)))
        self.base_uuid = ds.get("BaseDeviceUUID", "")
        self.base_fs = ds.get("BaseDeviceFilesystem", "")
        self.devices = self.store.load_devices()
        for info in self.devices.values():
            self.ids.mark_used(info.device_id)
        self.nr_deleted = sum(1 for i in self.devices.values() if i.deleted)
        self.open_transaction = self.store.load_transaction()
        self._process_pending_transaction()

    def _process_pending_transaction(self) -> None:
        t = self.open_transaction
        if t is None or t.open_transaction_id == self.transaction_id:
            return
        if t.open_transaction_id < self.transaction_id:
            log.error("devmapper: Open Transaction id %d is less than pool transaction id %d",
                      t.open_transaction_id, self.transaction_id)
            return
        log.warning("devmapper: Rolling back open transaction: TransactionID=%d hash=%s "
                    "device_id=%d", t.open_transaction_id, t.device_hash, t.device_id)
        try:
            self.pool.delete(t.device_id)
        except (DeviceNotFound, Busy) as err:
            log.error("devmapper: Unable to delete device: %s", err)
        self.store.remove_device(t.device_hash)
        self.devices.pop(t.device_hash, None)
        self.ids.mark_free(t.device_id)
        self.store.remove_transaction()
        self.open_transaction = Transaction(self.transaction_id, "", 0)

    def _save_deviceset(self) -> None:
        self.store.save_deviceset(self.ids.next_id, self.base_uuid, self.base_fs)

    # -- transactions ------------------------------------------------------------
    def _open_tx(self, hash_: str, dev_id: int) -> None:
        self.open_transaction = Transaction(self.transaction_id + 1, hash_, dev_id)
        self.store.save_transaction(self.open_transaction)

    def _refresh_tx(self, dev_id: int) -> None:
        self.open_transaction.device_id = dev_id
        self.store.save_transaction(self.open_transaction)

    def _close_tx(self) -> None:
        new = self.open_transaction.open_transaction_id
        if new != self.transaction_id:
            self.pool.set_transaction_id(self.transaction_id, new)
            self.transaction_id = new

    def _create_register(self, hash_: str, size: int, origin: DevInfo | None) -> DevInfo:
        """createRegisterDevice / createRegisterSnapDevice."""
        dev_id = self.ids.next_free()
        self._open_tx(hash_, dev_id)
        while True:
            try:
                if origin is None:
                    thin = self.pool.create_thin(dev_id, size)
                else:
                    thin = self.pool.create_snap(dev_id, origin.device_id)
            except DeviceExists:
                log.error("devmapper: Device ID %d exists in pool but it is supposed to be "
                          "unused", dev_id)
                dev_id = self.ids.next_free()
                self._refresh_tx(dev_id)
                continue
            except BaseException:
                self.ids.mark_free(dev_id)
                raise
            break
        if hash_ not in self._active:
            thin.deactivate()        # the facade activates new devices; Docker does not
        info = DevInfo(hash_, dev_id, size, self.open_transaction.open_transaction_id)
        try:
            self.store.save_device(info)
            self.devices[hash_] = info
            self._close_tx()
        except BaseException:
            self.devices.pop(hash_, None)
            self.store.remove_device(hash_)
            with contextlib.suppress(Exception):
                self.pool.delete(dev_id)
            self.ids.mark_free(dev_id)
            raise
        self._save_deviceset()
        return info

    # -- base device (dmthin.graph.baseimage) -------------------------------------
    def _setup_base_image(self) -> None:
        baseimage.setup_base_image(self)

    def _grow_fs(self, info: DevInfo) -> None:
        baseimage.grow_fs(self, info)

    def _resize_thin(self, info: DevInfo) -> None:
        baseimage.resize_thin(self, info)

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
        st = self.pool.status()
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
            self._check_free_space()
            pending = base_hash in self._pending_removal
            self._pending_removal.discard(base_hash)     # cancel a deferred removal...
            try:
                info = self._create_register(hash_, base.size, base)
            finally:
                if pending:                              # ...and defer it again after
                    self._deactivate(base, deferred=True)
            if size > base.size:
                info.size = size
                self.store.save_device(info)
                self._grow_fs(info)

    # -- activation -----------------------------------------------------------------------
    def _activate(self, info: DevInfo, ignore_deleted: bool = False):
        if info.deleted and not ignore_deleted:
            raise Busy(f"devmapper: Can't activate device {info.hash} as it is marked for "
                       "deferred deletion")
        thin = self._active.get(info.hash)
        if thin is not None:
            self._pending_removal.discard(info.hash)
            return thin
        thin = self.pool.thin(info.device_id)
        if thin.size != info.size:
            thin.deactivate()
            self._resize_thin(info)
            thin = self.pool.thin(info.device_id)
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

    def activate_device(self, hash_: str):
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
        Raises ``DeviceNotFound``, ``Busy``.
        """
        with self._lock:
            info = self._lookup(hash_)
            if self.options.blkdiscard:
                self._issue_discard(info)
            deferred = self.options.deferred_removal and self.options.deferred_deletion
            self._deactivate(info, deferred)
            self._delete_transaction(info, sync_delete)

    def _issue_discard(self, info: DevInfo) -> None:
        """Docker's issueDiscard: activate (even if marked deleted) and
        discard the whole device, unless something holds it open."""
        thin = self._activate(info, ignore_deleted=True)
        in_use = getattr(thin, "in_use", None)        # not (yet) public on ThinDevice
        if info.hash in self._mounts or (callable(in_use) and in_use()):
            log.debug("devmapper: Device: %s is in use. Not issuing discards.", info.hash)
            return
        try:
            thin.discard(0, thin.size)
        except (Busy, NotSupported) as err:
            log.debug("devmapper: Error discarding block on device: %s (ignoring)", err)

    def _delete_transaction(self, info: DevInfo, sync_delete: bool) -> None:
        self._open_tx(info.hash, info.device_id)
        try:
            busy = None
            try:
                self.pool.delete(info.device_id)
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
            self._close_tx()

    def cleanup_deleted_devices(self) -> None:
        """One pass of the deletion worker: retry deferred removals and
        deferred deletions (errors are logged, as Docker does)."""
        with self._lock:
            for hash_ in list(self._pending_removal):
                info = self.devices.get(hash_)
                if info is not None:
                    with contextlib.suppress(Busy):
                        self._deactivate(info, deferred=True)
            if self.nr_deleted == 0:
                return
            for info in [i for i in self.devices.values() if i.deleted]:
                try:
                    self.delete_device(info.hash, sync_delete=False)
                except Exception as err:     # logged and retried next tick, as Docker does
                    log.warning("devmapper: Deletion of device %s, device_id=%d failed:%s",
                                info.hash, info.device_id, err)

    def _deletion_worker(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.cleanup_deleted_devices()

    # -- mounting (kernel backend) ----------------------------------------------------------
    def mount_device(self, hash_: str, path, mount_label: str = "") -> None:
        """Activate *hash* and mount it at *path* (reference counted).

        Raises ``Busy`` (marked deleted), ``NotSupported`` (simulator:
        mounting needs the kernel backend), ``IOFailure`` (mount failed).
        """
        path = str(path)
        with self._lock:
            info = self._lookup(hash_)
            if info.deleted:
                raise Busy(f"devmapper: Can't mount device {hash_} as it has been marked for "
                           "deferred deletion")
            if hash_ in self._mounts:
                mounted = self._mounts[hash_]
                if mounted[0] != path:
                    raise Busy(f"devmapper: Trying to mount devmapper device in multiple "
                               f"places ({mounted[0]}, {path})")
                mounted[1] += 1
                return
            thin = self._activate(info)
            if thin.path is None:
                raise NotSupported(f"devmapper: mounting {hash_ or 'base'} needs the kernel "
                                   "backend (root and device-mapper); in the simulator use "
                                   "DeviceSet.device_access() or Driver.open_fs()")
            fstype = blockfs.probe_fs_type(thin.path)
            opts = "nouuid" if fstype == "xfs" else ""
            opts = join_mount_options(opts, self.options.mount_options)
            if mount_label:
                opts = join_mount_options(opts, f'context="{mount_label}"')
            blockfs.mount(thin.path, path, fstype, opts)
            self._mounts[hash_] = [path, 1]

    def unmount_device(self, hash_: str, path) -> None:
        """Drop one reference; at zero detach-unmount, remove the mount
        point and deactivate.  Raises ``DeviceNotFound``, ``IOFailure``."""
        with self._lock:
            info = self._lookup(hash_)
            mounted = self._mounts.get(hash_)
            if mounted is None:
                return
            mounted[1] -= 1
            if mounted[1] > 0:
                return
            del self._mounts[hash_]
            blockfs.umount(mounted[0])
            with contextlib.suppress(OSError):
                os.rmdir(mounted[0])
            self._deactivate(info)

    @contextlib.contextmanager
    def device_access(self, hash_: str, write: bool = True):
        """Yield a path for fs tools: the device node (kernel) or an image
        mirror synced back on success (simulator).  The device must not be
        mounted.  Raises ``DeviceNotFound``, ``Busy``."""
        with self._lock:
            info = self._lookup(hash_)
            if hash_ in self._mounts:
                raise Busy(f"devmapper: device {hash_} is mounted at {self._mounts[hash_][0]}; "
                           "unmount it first")
            was_active = hash_ in self._active
            thin = self._activate(info)
            try:
                with blockfs.device_access(thin, self.work_dir, self.chunk, write) as path:
                    yield path
            finally:
                if not was_active:
                    self._deactivate(info)

    # -- pool size, status, shutdown --------------------------------------------------------
    def resize_pool(self, data_size: int | str | None = None,
                    metadata_size: int | str | None = None) -> None:
        """Grow the pool's data/metadata files and reload the pool (Docker's
        ``ResizePool``).  Needs every device inactive; raises ``Busy``,
        ``UsageError`` (shrinking)."""
        from .options import ram_in_bytes
        with self._lock:
            if self._active or self._mounts:
                raise Busy("devmapper: cannot resize the pool while devices are active; "
                           "put or unmount them first")
            if self.options.thin_pool_dev:
                raise UsageError("devmapper: the pool is not driver-managed (dm.thinpooldev); "
                                 "resize it with dmthin directly")
            backend = self.pool.backend
            self.pool.close()
            try:
                for name, size in (("data", data_size), ("metadata", metadata_size)):
                    if size is None:
                        continue
                    nbytes = ram_in_bytes(size) if isinstance(size, str) else int(size)
                    path = self.home / name
                    if nbytes < path.stat().st_size:
                        raise UsageError(f"devmapper: Can't shrink file {path}")
                    os.truncate(path, nbytes)
            finally:
                self.pool = Pool.open(self.home, backend=backend)

    def status(self) -> list[tuple[str, str]]:
        """Docker's ``Status()`` pairs, in Docker's order."""
        with self._lock:
            return deviceset_status(self)

    def shutdown(self) -> None:
        """Stop the worker, save metadata, unmount and deactivate everything
        this set activated, and close the pool.  Safe to call twice."""
        if getattr(self, "_worker", None) is not None:
            self._stop.set()
            self._worker.join()
            self._worker = None
        with self._lock:
            if self.pool is None:
                return
            self._save_deviceset()
            for hash_, (path, _) in list(self._mounts.items()):
                with contextlib.suppress(Exception):
                    blockfs.umount(path)
                    os.rmdir(path)
                del self._mounts[hash_]
            for hash_ in list(self._active):
                info = self.devices.get(hash_)
                if info is not None:
                    with contextlib.suppress(Busy):
                        self._deactivate(info, deferred=False)
            self._active.clear()
            self.pool.close()
            self.pool = None

    def __enter__(self) -> "DeviceSet":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

