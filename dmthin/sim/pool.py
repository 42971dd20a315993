"""The simulated thin-pool target (``SimPoolBackend``): the PoolBackend
surface of dm-thin.c's pool over a pool directory.

The pool's behaviour between I/O and metadata -- modes, commits, data
allocation, the no-space policy, metadata exhaustion, events -- lives in
:class:`~dmthin.sim.core.SimCore`; its thin devices' I/O in
:class:`~dmthin.sim.thin.SimThin`.  This module adds what the kernel's
target interface does around them:

* **Messages** (``pool_message``): processed, then committed.  Refused with
  EOPNOTSUPP from "out of metadata space" on.
* **Status** (``pool_status``), after a commit, and the table line.
  ``table_line()`` echoes the metadata and data *file paths* where the
  kernel echoes the loop devices' ``major:minor``: there are no block
  devices in the simulator, and a path is what a user would pass to dmsetup.
* **Activation**, and suspending a thin (its I/O waits until resumed).
* **Resume** (``pool_preresume``/``pool_resume``): takes up a grown data or
  metadata file, leaves out_of_data_space, re-arms the low water mark.
  Opening a pool is its first resume; a pool whose metadata has
  ``needs_check`` set opens read-only.
* **Commits** also happen when a thin is deactivated and on close.

The metadata engine is a parameter of :meth:`SimPoolBackend.create` and
:meth:`SimPoolBackend.open` (:class:`~dmthin.sim.engine.MetadataEngineFactory`,
default :class:`~dmthin.thin.metadata.ThinMetadata`).

Thread safety: the core's lock serialises everything; event listeners run
with it held and must not block.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..backend import BackendInfo, MetadataReader, PoolSpec
from ..blockdev import is_block_device, path_size
from ..errors import (
    Busy,
    DeviceNotFound,
    InvalidArgument,
    MetadataError,
    NoSpace,
    NotSupported,
    ThinOSError,
    UsageError,
)
from ..target import (
    DiscardMode,
    Message,
    NoSpacePolicy,
    PoolStatus,
    PoolTable,
    parse_message,
)
from ..thin.metadata import ThinMetadata
from ..units import SECTOR_SIZE, DataBlocks, MetaBlocks
from .core import Mode, SimCore
from .datafile import DataFile
from .engine import MetadataEngine, MetadataEngineFactory
from .params import metadata_threshold
from .thin import SimThin

DEFAULT_CACHE_BLOCKS = 8192


def _files(spec: PoolSpec) -> tuple[Path, Path]:
    """The data and metadata files of *spec* (the simulator needs both)."""
    if spec.data_path is None or spec.metadata_path is None:
        raise UsageError(f"{spec.path}: the simulator needs the pool's data and metadata "
                         "files; it cannot attach to a device-mapper device")
    return spec.data_path, spec.metadata_path


class SimPoolBackend:
    """A thin pool simulated over ``POOLDIR/metadata`` and ``POOLDIR/data``.

    Built by :meth:`create` or :meth:`open`; the constructor takes an open
    metadata engine *md* and data file *data*, and owns them from then on.
    """

    name = "sim"

    def __init__(self, spec: PoolSpec, md: MetadataEngine, data: DataFile):
        self.spec = spec
        self.path = spec.path
        self.data_path, self.metadata_path = _files(spec)
        self.core = SimCore(str(spec.path), md, data, spec.features, spec.low_water_mark,
                            metadata_threshold(path_size(self.metadata_path)),
                            view_only=spec.readonly)
        self._active: dict[int, int] = {}       # dev_id -> activation count

    # -- construction ------------------------------------------------------------
    @classmethod
    def available(cls) -> None:
        """The simulator runs anywhere."""

    @classmethod
    def create(cls, spec: PoolSpec,
               engine: MetadataEngineFactory = ThinMetadata) -> SimPoolBackend:
        """Format new metadata over ``POOLDIR/metadata`` for ``POOLDIR/data``
        with *engine*.

        Raises :class:`~dmthin.errors.InvalidArgument` for the ``read_only``
        feature (the kernel never formats metadata read-only).
        """
        data_path, metadata_path = _files(spec)
        if "read_only" in spec.features:
            raise InvalidArgument("cannot create a pool with the read_only feature: the kernel "
                                  "never formats metadata read-only; create it without "
                                  "read_only")
        block_bytes = spec.data_block_sectors * SECTOR_SIZE
        nr_blocks = path_size(data_path) // block_bytes
        md = engine.format(metadata_path, data_block_sectors=spec.data_block_sectors,
                           nr_data_blocks=nr_blocks, cache_blocks=DEFAULT_CACHE_BLOCKS)
        return cls._attach(spec, md)

    @classmethod
    def open(cls, spec: PoolSpec,
             engine: MetadataEngineFactory = ThinMetadata) -> SimPoolBackend:
        """Open the pool's metadata (with *engine*) and data files.

        Raises :class:`~dmthin.errors.MetadataError` for unreadable
        metadata, :class:`~dmthin.errors.InvalidArgument` when the block
        size differs from the metadata's or the data file shrank.
        """
        data_path, metadata_path = _files(spec)
        read_only = "read_only" in spec.features or spec.readonly
        md = engine.open(metadata_path, read_only=read_only,
                         cache_blocks=DEFAULT_CACHE_BLOCKS)
        try:
            if md.data_block_sectors != spec.data_block_sectors:
                raise InvalidArgument(
                    f"{metadata_path}: metadata block size is {md.data_block_sectors} "
                    f"sectors but the pool's config says {spec.data_block_sectors}; "
                    "changing the data block size is not supported")
            nr_file = path_size(data_path) // (md.data_block_sectors * SECTOR_SIZE)
            if nr_file < md.nr_data_blocks:
                raise InvalidArgument(
                    f"{data_path} holds {nr_file} data blocks but the metadata expects "
                    f"{md.nr_data_blocks}: the data file shrank; restore its size")
        except BaseException:
            md.close()
            raise
        return cls._attach(spec, md)

    @classmethod
    def _attach(cls, spec: PoolSpec, md: MetadataEngine) -> SimPoolBackend:
        try:
            data = DataFile(_files(spec)[0], md.data_block_sectors * SECTOR_SIZE,
                            writable="read_only" not in spec.features and not spec.readonly)
        except OSError:
            md.close()
            raise
        self = cls(spec, md, data)
        with self.core.lock:
            self.core.preresume()
        return self

    # -- state ---------------------------------------------------------------------------
    @property
    def mode(self) -> Mode:
        """The pool mode (``enum pool_mode``)."""
        return self.core.mode

    @property
    def metadata(self) -> MetadataEngine:
        """The open metadata engine (tests, tools), to read: a change made
        through it bypasses the pool, and its cache of mappings."""
        return self.core.metadata

    @property
    def event_nr(self) -> int:
        """The pool device's event counter (``dmsetup info``'s "Events")."""
        return self.core.event_nr

    def wait_event(self, event_nr: int, timeout: float | None = None) -> int:
        """Wait until :attr:`event_nr` exceeds *event_nr* (``dmsetup wait``);
        return it.  Raises :class:`~dmthin.errors.TimedOut`."""
        return self.core.wait_event(event_nr, timeout)

    # -- messages -----------------------------------------------------------------------
    def message(self, msg: str | Message) -> str | None:
        """Process a pool message (text is parsed first) as ``pool_message``
        does, then commit.

        Raises InvalidArgument (bad syntax, transaction id mismatch),
        DeviceExists, DeviceNotFound, Busy (deleting an active thin, or a
        metadata snapshot already held), NoSpace (out of metadata space: the
        pool goes read-only) and NotSupported (the pool is read-only).
        """
        if isinstance(msg, str):
            msg = parse_message(msg)
        core = self.core
        with core.lock:
            core.check_not_failed()
            if core.read_only:
                raise NotSupported(f"pool {self.path} is read-only or out of metadata "
                                   f"space: it refuses the message '{msg}'")
            try:
                self._apply(msg)
            except NoSpace as err:
                core.fail_metadata(msg.command, err)
                raise NoSpace(f"{msg}: pool {self.path} ran out of metadata space; "
                              "the transaction was rolled back and the pool is read-only") \
                    from err
            except ThinOSError:
                raise                   # the kernel's refusals: EEXIST, ENODATA, EINVAL...
            except (MetadataError, OSError) as err:
                core.fail_metadata(msg.command, err)
                raise
            core.mark_dirty()
            core.commit()
        return None

    def _apply(self, msg: Message) -> None:
        """Apply *msg* to the metadata (lock held; the caller commits)."""
        core = self.core
        md = core.metadata
        match msg.command, msg.args:
            case "create_thin", (dev_id,):
                core.forget_mappings(dev_id)
                md.create_thin(dev_id)
            case "create_snap", (dev_id, origin_id):
                # the origin's mappings stay as they are: only its snapshotted
                # time changes, which the I/O reads fresh from its details
                core.forget_mappings(dev_id)
                md.create_snap(dev_id, origin_id)
            case "delete", (dev_id,):
                if self._active.get(dev_id):
                    raise Busy(f"thin device {dev_id} is active; deactivate it before "
                               "deleting it")
                core.forget_mappings(dev_id)
                md.delete(dev_id)
            case "set_transaction_id", (old, new):
                md.set_transaction_id(old, new)
            case "reserve_metadata_snap", ():
                self.core.commit()
                md.reserve_metadata_snap()
            case "release_metadata_snap", ():
                md.release_metadata_snap()
            case _:
                raise InvalidArgument(f"unknown thin pool message '{msg}'")

    # -- status ---------------------------------------------------------------------------
    def status(self) -> PoolStatus:
        """The pool status (``pool_status``), after a commit.

        Raises IOFailure if the pool has failed (the kernel prints ``Fail``).
        """
        core = self.core
        with core.lock:
            core.check_not_failed()
            core.commit()
            md = core.metadata
            total_meta = md.nr_metadata_blocks
            total_data = md.nr_data_blocks
            if core.discard_passdown:
                discard = DiscardMode.PASSDOWN
            elif core.discard_enabled:
                discard = DiscardMode.NO_PASSDOWN
            else:
                discard = DiscardMode.IGNORE
            return PoolStatus(
                transaction_id=md.transaction_id,
                used_metadata_blocks=MetaBlocks(total_meta - core.free_metadata_reported()),
                total_metadata_blocks=MetaBlocks(total_meta),
                used_data_blocks=DataBlocks(total_data - md.nr_free_data_blocks()),
                total_data_blocks=DataBlocks(total_data),
                held_root=md.held_root or None,
                mode=core.mode.status,
                discard=discard,
                no_space_policy=NoSpacePolicy.ERROR if core.error_if_no_space
                else NoSpacePolicy.QUEUE,
                needs_check=bool(md.needs_check),
                metadata_low_watermark=core.metadata_threshold)

    def table_line(self) -> str:
        """The pool table as the kernel echoes it, with the metadata and data
        file paths in place of the devices' ``major:minor``."""
        with self.core.lock:
            self.core.check_open()
            length = self.core.data.size() // SECTOR_SIZE
            return PoolTable(length, str(self.metadata_path.resolve()),
                             str(self.data_path.resolve()), self.core.block_sectors,
                             self.core.low_water_blocks, tuple(self.spec.features)).to_line()

    def thin_ids(self, read_ids: MetadataReader | None = None) -> list[int]:
        """Ids of the thin devices in the metadata, committed or not
        (InvalidArgument if closed); *read_ids* is not needed here."""
        with self.core.lock:
            self.core.check_open()
            return sorted(self.core.metadata.device_ids())

    # -- thin devices -----------------------------------------------------------------------
    def active_thins(self) -> list[SimThin]:
        """Activation is per process in the simulator: none at open."""
        return []

    def info(self) -> BackendInfo:
        """No kernel devices in the simulator."""
        return BackendInfo()

    def activate_thin(self, dev_id: int, size: int, name: str | None = None) -> SimThin:
        """Activate thin *dev_id* with *size* bytes; raise DeviceNotFound
        (ENODATA) if the metadata has no such device."""
        with self.core.lock:
            self.core.check_not_failed()
            if not self.core.metadata.has_device(dev_id):
                raise DeviceNotFound(f"no thin device {dev_id} in pool {self.path}")
            self._active[dev_id] = self._active.get(dev_id, 0) + 1
            return SimThin(self.core, dev_id, size, self._deactivate)

    def _deactivate(self, dev_id: int) -> None:
        core = self.core
        with core.lock:
            count = self._active.get(dev_id, 0) - 1
            if count > 0:
                self._active[dev_id] = count
            else:
                self._active.pop(dev_id, None)
                core.forget_mappings(dev_id)        # keep the cache to active devices
                core.unsuspend(dev_id)
            if not core.closed:
                core.commit()

    def suspend_thin(self, dev_id: int) -> None:
        """Suspend an active thin: its I/O waits until :meth:`resume_thin`."""
        with self.core.lock:
            self.core.check_open()
            self.core.suspend(dev_id)

    def resume_thin(self, dev_id: int) -> None:
        """Resume a suspended thin; its waiting I/O proceeds."""
        with self.core.lock:
            self.core.unsuspend(dev_id)

    # -- pool suspend/resume, growing --------------------------------------------------
    def resume(self) -> None:
        """Suspend and resume the pool, as after a table reload: take up a
        grown data file, re-arm the low water mark, retry queued writers.
        Raises IOFailure if the pool has failed."""
        core = self.core
        with core.lock:
            core.check_not_failed()
            core.commit()
            if core.mode == Mode.OUT_OF_DATA_SPACE:     # a reload rebinds the target
                core.set_mode(Mode.READ_ONLY if core.read_only_table else Mode.WRITE)
            core.preresume()
            core.rearm_low_water_mark()
            core.cond.notify_all()

    def resize_data(self, size: int) -> None:
        """Grow the data file to *size* bytes and resume (what Docker's
        ``ResizePool`` does: truncate, reload, resume).

        Raises InvalidArgument for a size below the current one.
        """
        with self.core.lock:
            self.core.check_not_failed()
            current = self.core.data.size()
            if size < current:
                raise InvalidArgument(f"cannot shrink the data file of {self.path} from "
                                      f"{current} to {size} bytes")
            self._grow(self.data_path, "data", current, size)
            self.resume()

    def resize_metadata(self, size: int) -> None:
        """Grow the metadata file to *size* bytes and resume: the pool takes
        up the new space (``maybe_resize_metadata_dev``).

        Raises InvalidArgument for a size below the current one.
        """
        with self.core.lock:
            self.core.check_not_failed()
            current = path_size(self.metadata_path)
            if size < current:
                raise InvalidArgument(f"cannot shrink the metadata file of {self.path} "
                                      f"from {current} to {size} bytes")
            self._grow(self.metadata_path, "metadata", current, size)
            self.resume()

    def _grow(self, path: Path, what: str, current: int, size: int) -> None:
        """Grow the file *path* to *size* bytes; a block device cannot be
        grown from here (InvalidArgument naming the device) unless it
        already holds *size* bytes."""
        if is_block_device(path):
            if size > current:
                raise InvalidArgument(f"the {what} of pool {self.path} is the block device "
                                      f"{path} of {current} bytes: grow the device itself "
                                      "first")
            return
        os.truncate(path, size)

    def deactivate(self) -> None:
        """Activation lasts as long as this object: :meth:`close`."""
        self.close()

    def close(self, keep_active: bool = False) -> None:
        """Commit and close the files; later calls raise InvalidArgument.
        *keep_active* has no meaning here (activation is per process)."""
        core = self.core
        with core.lock:
            if core.closed:
                return
            try:
                if not core.read_only:
                    core.commit()
            finally:
                core.close()

    def __repr__(self) -> str:
        return f"<SimPoolBackend {str(self.path)!r} {self.core.mode.name.lower()}>"


__all__ = ["SimPoolBackend"]
