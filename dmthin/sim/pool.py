"""The simulated thin-pool target (``SimPoolBackend``).

It reproduces dm-thin.c's pool behaviour over a pool directory:

* **Modes** (``enum pool_mode``): write; out_of_data_space; out of
  metadata space and read-only (both shown as ``ro``); fail.  Messages are
  refused with EOPNOTSUPP from "out of metadata space" on.  A pool whose
  metadata has ``needs_check`` set opens read-only, as the kernel's
  ``set_pool_mode`` refuses write mode until repaired.
* **Commits** (``commit()``): after every successful message, on a flush,
  before status, when a thin is deactivated and on close; when data
  allocation finds no free block (blocks freed in this transaction become
  free); and, if :attr:`SimPoolBackend.commit_period` is set (seconds;
  default off, env ``DMTHIN_SIM_COMMIT_PERIOD``), before an I/O that finds
  the last commit older than that.  The kernel commits every second; the
  simulator has no background thread.  The data file is fdatasync'ed before
  each metadata commit (the kernel flushes the data device first).
* **Data allocation** (``alloc_data_block``): the low water mark event fires
  once when the free count before an allocation is <= the low water mark and
  re-arms on :meth:`SimPoolBackend.resume`; no free block after a commit
  switches to out_of_data_space.  There, with ``error_if_no_space`` a write
  needing a new block fails at once with ENOSPC; otherwise it waits (the
  kernel queues it) until space appears -- another thread's delete or
  discard plus a commit, or :meth:`resize_data` -- or until
  :attr:`no_space_timeout` (default 60 s like the module parameter, env
  ``DMTHIN_SIM_NO_SPACE_TIMEOUT``; 0 waits for ever) passes, after which
  the pool behaves as ``error_if_no_space`` (``do_no_space_timeout``).
* **Metadata space**: status reports ``used = total - max(0, free -
  reserve)`` with ``reserve = min(4096, total / 10)`` (``__set_metadata_reserve``);
  when that reported free count reaches 0 after a commit or allocation the
  pool goes out-of-metadata-space (``ro``).  If the engine itself runs out
  (NoSpace from a mutating call) the transaction is aborted back to the
  last commit, ``needs_check`` is set and the pool goes read-only
  (``metadata_operation_failed``).  The metadata threshold event fires when
  free metadata blocks fall to ``min(1024, metadata blocks / 4)``.
* **Events**: every low-water, metadata-threshold and mode change bumps
  :attr:`event_nr` (the dm device's event counter) and calls listeners
  added with :meth:`add_event_listener`; :meth:`wait_event` blocks like
  ``dmsetup wait``.

``table_line()`` echoes the metadata and data *file paths* where the kernel
echoes the loop devices' ``major:minor``: there are no block devices in the
simulator, and a path is what a user would pass to dmsetup.

Thread safety: one lock serialises everything; a writer waiting for space
releases it.  Event listeners run with the lock held and must not block.
"""
from __future__ import annotations

import enum
import os
import threading
import time

from ..errors import (Busy, DeviceNotFound, DmThinError, InvalidArgument, IOFailure,
                      MetadataError, NoSpace, NotSupported, ThinOSError, UsageError)
from ..pooldir import PoolConfig, PoolDir
from ..target import DiscardMode, NoSpacePolicy, PoolMode, PoolStatus, PoolTable, parse_message
from ..units import SECTOR_SIZE, DataBlocks, MetaBlocks
from .datafile import DataFile
from .events import EventSource
from .thin import SimThin

DEFAULT_NO_SPACE_TIMEOUT = 60.0     # no_space_timeout_secs, dm-thin.c
COMMIT_PERIOD = 1.0                 # COMMIT_PERIOD = HZ, dm-thin.c
METADATA_RESERVE_MAX = 4096         # __set_metadata_reserve
METADATA_THRESHOLD_MAX = 1024       # calc_metadata_threshold
METADATA_WARN_SECTORS = 16 << 21    # THIN_METADATA_MAX_SECTORS_WARNING (16 GiB)
DEFAULT_CACHE_BLOCKS = 8192


class Mode(enum.IntEnum):
    """``enum pool_mode``, in the kernel's degradation order."""
    WRITE = 0
    OUT_OF_DATA_SPACE = 1
    OUT_OF_METADATA_SPACE = 2
    READ_ONLY = 3
    FAIL = 4


class _OutOfDataSpace(Exception):
    """Internal: allocation found no free data block (mode switched)."""


def _env_float(name: str, default: float | None) -> float | None:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"invalid {name}={text!r}: give a number of seconds") from None
    if value < 0:
        raise UsageError(f"invalid {name}={text!r}: must not be negative")
    return value


def _engine():
    from ..thin.metadata import ThinMetadata
    return ThinMetadata


class SimPoolBackend(EventSource):
    """A thin pool simulated over ``POOLDIR/metadata`` and ``POOLDIR/data``.

    Built by :meth:`create` or :meth:`open`; see the module docstring for
    the kernel behaviour it reproduces.
    """

    name = "sim"

    def __init__(self, pooldir: PoolDir, config: PoolConfig, md, data: DataFile):
        self.pooldir = pooldir
        self.config = config
        self._md = md
        self._data = data
        self.block_sectors = md.data_block_size
        self.block_bytes = self.block_sectors * SECTOR_SIZE
        feats = set(config.features)
        self.zero_new_blocks = "skip_block_zeroing" not in feats
        self.discard_enabled = "ignore_discard" not in feats
        self.discard_passdown = self.discard_enabled and "no_discard_passdown" not in feats
        self._requested_error_if_no_space = "error_if_no_space" in feats
        self.error_if_no_space = self._requested_error_if_no_space
        self._read_only_requested = "read_only" in feats
        self.low_water_blocks = config.low_water_mark
        self.no_space_timeout = _env_float("DMTHIN_SIM_NO_SPACE_TIMEOUT", DEFAULT_NO_SPACE_TIMEOUT)
        self.commit_period = _env_float("DMTHIN_SIM_COMMIT_PERIOD", None)
        meta_sectors = min(os.path.getsize(pooldir.metadata_path) // SECTOR_SIZE,
                           METADATA_WARN_SECTORS)
        self.metadata_threshold = min(METADATA_THRESHOLD_MAX, meta_sectors // 8 // 4)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._mode = Mode.WRITE
        self._lwm_triggered = False
        self._meta_low = False
        EventSource.__init__(self, self._cond)
        self._dirty = False
        self._last_commit = time.monotonic()
        self._no_space_deadline: float | None = None
        self._pending_release: set[int] = set()
        self._run: list | None = None           # pending coalesced data write
        self._active: dict[int, int] = {}       # dev_id -> activation count
        self._suspended: set[int] = set()
        self._closed = False
        with self._lock:
            self._set_mode(Mode.READ_ONLY if self._read_only_requested else Mode.WRITE,
                           quiet=True)

    # -- construction ------------------------------------------------------------
    @classmethod
    def create(cls, pooldir: PoolDir, config: PoolConfig) -> "SimPoolBackend":
        """Format new metadata over ``POOLDIR/metadata`` for ``POOLDIR/data``.

        Raises :class:`~dmthin.errors.InvalidArgument` for the ``read_only``
        feature (the kernel never formats metadata read-only).
        """
        if "read_only" in config.features:
            raise InvalidArgument("cannot create a pool with the read_only feature: the kernel "
                                  "never formats metadata read-only; create it without "
                                  "read_only")
        block_bytes = config.data_block_sectors * SECTOR_SIZE
        nr_blocks = os.path.getsize(pooldir.data_path) // block_bytes
        md = _engine().format(pooldir.metadata_path, data_block_size=config.data_block_sectors,
                              nr_data_blocks=nr_blocks, cache_blocks=DEFAULT_CACHE_BLOCKS)
        return cls._attach(pooldir, config, md)

    @classmethod
    def open(cls, pooldir: PoolDir, config: PoolConfig) -> "SimPoolBackend":
        """Open the pool's metadata and data files.

        Raises :class:`~dmthin.errors.MetadataError` for unreadable
        metadata, :class:`~dmthin.errors.InvalidArgument` when the block
        size differs from the metadata's or the data file shrank.
        """
        read_only = "read_only" in config.features
        md = _engine().open(pooldir.metadata_path, read_only=read_only,
                            cache_blocks=DEFAULT_CACHE_BLOCKS)
        try:
            if md.data_block_size != config.data_block_sectors:
                raise InvalidArgument(
                    f"{pooldir.metadata_path}: metadata block size is {md.data_block_size} "
                    f"sectors but {pooldir.config_path} says {config.data_block_sectors}; "
                    "changing the data block size is not supported")
            nr_file = os.path.getsize(pooldir.data_path) // (md.data_block_size * SECTOR_SIZE)
            if nr_file < md.nr_data_blocks:
                raise InvalidArgument(
                    f"{pooldir.data_path} holds {nr_file} data blocks but the metadata expects "
                    f"{md.nr_data_blocks}: the data file shrank; restore its size")
        except BaseException:
            md.close()
            raise
        return cls._attach(pooldir, config, md)

    @classmethod
    def _attach(cls, pooldir: PoolDir, config: PoolConfig, md) -> "SimPoolBackend":
        try:
            data = DataFile(pooldir.data_path, md.data_block_size * SECTOR_SIZE,
                            writable="read_only" not in config.features)
        except OSError:
            md.close()
            raise
        self = cls(pooldir, config, md, data)
        with self._lock:
            self._preresume()
        return self

    # -- modes --------------------------------------------------------------------------
    @property
    def mode(self) -> Mode:
        return self._mode

    def _set_mode(self, new: Mode, quiet: bool = False) -> None:
        old = self._mode
        if new == Mode.WRITE and self._md.needs_check:
            new = old if old != Mode.WRITE else Mode.READ_ONLY
        if old == Mode.FAIL:
            new = old
        if new == Mode.OUT_OF_DATA_SPACE:
            if not self.error_if_no_space and self.no_space_timeout and old != new:
                self._no_space_deadline = time.monotonic() + self.no_space_timeout
        elif new == Mode.WRITE:
            self._no_space_deadline = None
            self.error_if_no_space = self._requested_error_if_no_space
        self._mode = new
        if old != new and not quiet:
            self._event(f"mode:{self._status_mode(new).value}")
        self._cond.notify_all()

    @staticmethod
    def _status_mode(mode: Mode) -> PoolMode:
        if mode == Mode.OUT_OF_DATA_SPACE:
            return PoolMode.OUT_OF_DATA_SPACE
        if mode in (Mode.OUT_OF_METADATA_SPACE, Mode.READ_ONLY):
            return PoolMode.RO
        return PoolMode.RW

    def _read_only(self) -> bool:
        return self._mode >= Mode.OUT_OF_METADATA_SPACE

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgument(f"pool {self.pooldir.path} is closed")

    def _check_not_failed(self) -> None:
        self._check_open()
        if self._mode == Mode.FAIL:
            raise IOFailure(f"pool {self.pooldir.path} has failed (its metadata could not be "
                            "rolled back): run 'dmthin check', then thin_repair")

    def _metadata_failed(self, op: str, err: BaseException) -> None:
        """``metadata_operation_failed``: abort, set needs_check, read-only."""
        self._run = None
        self._pending_release.clear()
        self._dirty = False
        try:
            self._md.abort()
        except (DmThinError, OSError):
            self._set_mode(Mode.FAIL)
            return
        try:
            self._md.set_needs_check()
            self._md.commit()
        except (DmThinError, OSError):
            pass
        self._set_mode(Mode.READ_ONLY)

    def _ro_error(self, what: str) -> IOFailure:
        reason = {Mode.OUT_OF_METADATA_SPACE: "out of metadata space",
                  Mode.READ_ONLY: "read-only"}.get(self._mode, self._mode.name.lower())
        return IOFailure(f"{what}: pool {self.pooldir.path} is {reason}"
                         + ("; it needs 'dmthin check' (needs_check is set)"
                            if self._md.needs_check else
                            "; grow its metadata or reopen it writable"))

    # -- commit -------------------------------------------------------------------------
    def _commit(self) -> bool:
        """The kernel's ``commit()``: False if the pool is read-only or the
        commit failed (the pool then went read-only)."""
        if self._mode >= Mode.OUT_OF_METADATA_SPACE:
            return False
        try:
            self._flush_run()
            if self._dirty:
                self._data.sync()
                self._md.commit()
        except (DmThinError, OSError) as err:
            self._metadata_failed("commit", err)
            return False
        self._dirty = False
        self._last_commit = time.monotonic()
        if self._pending_release:
            # discarded with passdown (SimThin.discard chose them); none can
            # have been reallocated: blocks freed in a transaction are not
            # allocatable before its commit
            blocks = sorted(self._pending_release)
            self._pending_release.clear()
            self._data.release(blocks)
        self._check_metadata_space()
        self._check_data_space()
        return True

    def _maybe_periodic_commit(self) -> None:
        if self.commit_period and self._dirty and \
                time.monotonic() - self._last_commit >= self.commit_period:
            self._commit()

    def _free_metadata_reported(self) -> int:
        total = self._md.nr_metadata_blocks
        reserve = min(METADATA_RESERVE_MAX, total // 10)
        return max(0, self._md.nr_free_metadata_blocks() - reserve)

    def _check_metadata_space(self) -> None:
        if self._free_metadata_reported() == 0 and \
                self._mode not in (Mode.OUT_OF_METADATA_SPACE, Mode.READ_ONLY):
            self._set_mode(Mode.OUT_OF_METADATA_SPACE)
        self._check_metadata_threshold()

    def _check_metadata_threshold(self) -> None:
        low = self._md.nr_free_metadata_blocks() <= self.metadata_threshold
        if low and not self._meta_low:
            self._event("metadata_low_water_mark")
        self._meta_low = low

    def _check_data_space(self) -> None:
        if self._mode == Mode.OUT_OF_DATA_SPACE and self._md.nr_free_data_blocks():
            self._set_mode(Mode.WRITE)

    # -- data allocation ---------------------------------------------------------------
    def _alloc_data_block(self) -> int:
        """``alloc_data_block``; raises _OutOfDataSpace (mode switched) or
        IOFailure (metadata failure)."""
        md = self._md
        free = md.nr_free_data_blocks()
        if free <= self.low_water_blocks and not self._lwm_triggered:
            self._lwm_triggered = True
            self._event("low_water_mark")
        if not free:
            if not self._commit():
                raise _OutOfDataSpace()
            if not md.nr_free_data_blocks():
                self._set_mode(Mode.OUT_OF_DATA_SPACE)
                raise _OutOfDataSpace()
        try:
            block = md.alloc_data_block()
        except NoSpace as err:
            # The kernel switches to out_of_data_space on any ENOSPC here, also
            # when the only free blocks were freed in this transaction (not
            # allocatable before a commit); its next commit switches back.
            if md.nr_free_data_blocks() == 0 or md.nr_free_metadata_blocks() > 0:
                self._set_mode(Mode.OUT_OF_DATA_SPACE)
                raise _OutOfDataSpace() from None
            self._metadata_failed("alloc_data_block", err)
            raise self._ro_error("allocating a data block") from err
        except (MetadataError, OSError) as err:
            self._metadata_failed("alloc_data_block", err)
            raise self._ro_error("allocating a data block") from err
        self._dirty = True
        self._check_metadata_threshold()
        if self._free_metadata_reported() == 0:
            self._commit()
        return block

    def _provision(self, what: str) -> int | None:
        """Allocate a data block for a write, honouring the pool mode.

        Returns None after waiting for space (the caller must look the block
        up again).  Raises NoSpace (error_if_no_space, or the queue timed
        out) or IOFailure (read-only pool).
        """
        if self._mode == Mode.WRITE:
            try:
                return self._alloc_data_block()
            except _OutOfDataSpace:
                pass
        if self._mode == Mode.OUT_OF_DATA_SPACE:
            if self.error_if_no_space:
                raise NoSpace(f"{what}: pool {self.pooldir.path} is out of data space; delete "
                              "or discard data, or grow the pool")
            self._wait_for_space()
            return None
        if self._mode == Mode.WRITE:
            return None
        raise self._ro_error(what)

    def _wait_for_space(self) -> None:
        """Queue a writer while out of data space (``retry_on_resume``)."""
        self._flush_run()
        while self._mode == Mode.OUT_OF_DATA_SPACE and not self.error_if_no_space \
                and not self._closed:
            deadline = self._no_space_deadline
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self.error_if_no_space = True          # do_no_space_timeout
                self._event("error_if_no_space")
                break
            wait = COMMIT_PERIOD if deadline is None else min(COMMIT_PERIOD, deadline - now)
            self._cond.wait(wait)
            if self._mode == Mode.OUT_OF_DATA_SPACE:
                self._commit()                           # the kernel's periodic commit
        self._check_open()

    # -- pending data writes ------------------------------------------------------------
    def _queue_write(self, block: int, offset: int, part) -> None:
        """Queue a write, coalescing runs that are contiguous in the data file."""
        pos = block * self.block_bytes + offset
        run = self._run
        if run is not None and run[1] == pos and run[2] < (8 << 20):
            run[3].append(part)
            run[1] += len(part)
            run[2] += len(part)
            return
        self._flush_run()
        self._run = [pos, pos + len(part), len(part), [part]]

    def _flush_run(self) -> None:
        run, self._run = self._run, None
        if run is not None:
            self._data.write(0, run[0], run[3])

    # -- the PoolBackend interface ----------------------------------------------------
    def message(self, text: str) -> str | None:
        """Process a pool message as ``pool_message`` does, then commit.

        Raises InvalidArgument (bad syntax, transaction id mismatch),
        DeviceExists, DeviceNotFound, Busy (deleting an active thin, or a
        metadata snapshot already held), NoSpace (out of metadata space: the
        pool goes read-only) and NotSupported (the pool is read-only).
        """
        msg = parse_message(text)
        with self._lock:
            self._check_not_failed()
            if self._mode >= Mode.OUT_OF_METADATA_SPACE:
                raise NotSupported(f"pool {self.pooldir.path} is read-only or out of metadata "
                                   f"space: it refuses the message '{msg}'")
            md = self._md
            cmd, args = msg.command, msg.args
            try:
                if cmd == "create_thin":
                    md.create_thin(args[0])
                elif cmd == "create_snap":
                    md.create_snap(args[0], args[1])
                elif cmd == "delete":
                    if self._active.get(args[0]):
                        raise Busy(f"thin device {args[0]} is active; deactivate it before "
                                   "deleting it")
                    md.delete(args[0])
                elif cmd == "set_transaction_id":
                    md.set_transaction_id(args[0], args[1])
                elif cmd == "reserve_metadata_snap":
                    self._commit()
                    md.reserve_metadata_snap()
                elif cmd == "release_metadata_snap":
                    md.release_metadata_snap()
            except NoSpace as err:
                self._metadata_failed(cmd, err)
                raise NoSpace(f"{msg}: pool {self.pooldir.path} ran out of metadata space; "
                              "the transaction was rolled back and the pool is read-only") \
                    from err
            except ThinOSError:
                raise                   # the kernel's refusals: EEXIST, ENODATA, EINVAL...
            except (MetadataError, OSError) as err:
                self._metadata_failed(cmd, err)
                raise
            self._dirty = True
            self._commit()
        return None

    def status(self) -> PoolStatus:
        """The pool status (``pool_status``), after a commit.

        Raises IOFailure if the pool has failed (the kernel prints ``Fail``).
        """
        with self._lock:
            self._check_not_failed()
            self._commit()
            md = self._md
            total_meta = md.nr_metadata_blocks
            total_data = md.nr_data_blocks
            if self.discard_passdown:
                discard = DiscardMode.PASSDOWN
            elif self.discard_enabled:
                discard = DiscardMode.NO_PASSDOWN
            else:
                discard = DiscardMode.IGNORE
            return PoolStatus(
                transaction_id=md.transaction_id,
                used_metadata_blocks=MetaBlocks(total_meta - self._free_metadata_reported()),
                total_metadata_blocks=MetaBlocks(total_meta),
                used_data_blocks=DataBlocks(total_data - md.nr_free_data_blocks()),
                total_data_blocks=DataBlocks(total_data),
                held_root=md.held_root or None,
                mode=self._status_mode(self._mode),
                discard=discard,
                no_space_policy=NoSpacePolicy.ERROR if self.error_if_no_space
                else NoSpacePolicy.QUEUE,
                needs_check=bool(md.needs_check),
                metadata_low_watermark=self.metadata_threshold)

    def table_line(self) -> str:
        """The pool table as the kernel echoes it, with the metadata and data
        file paths in place of the devices' ``major:minor``."""
        with self._lock:
            self._check_open()
            length = os.path.getsize(self.pooldir.data_path) // SECTOR_SIZE
            return PoolTable(length, str(self.pooldir.metadata_path.resolve()),
                             str(self.pooldir.data_path.resolve()), self.block_sectors,
                             self.low_water_blocks, tuple(self.config.features)).to_line()

    def thin_ids(self) -> list[int]:
        """Ids of the thin devices in the metadata (InvalidArgument if closed)."""
        with self._lock:
            self._check_open()
            return sorted(self._md.device_ids())

    def activate_thin(self, dev_id: int, size: int) -> SimThin:
        """Activate thin *dev_id* with *size* bytes; raise DeviceNotFound
        (ENODATA) if the metadata has no such device."""
        with self._lock:
            self._check_not_failed()
            if not self._md.has_device(dev_id):
                raise DeviceNotFound(f"no thin device {dev_id} in pool {self.pooldir.path}")
            self._active[dev_id] = self._active.get(dev_id, 0) + 1
            return SimThin(self, dev_id, size)

    def _deactivate(self, dev_id: int) -> None:
        with self._lock:
            count = self._active.get(dev_id, 0) - 1
            if count > 0:
                self._active[dev_id] = count
            else:
                self._active.pop(dev_id, None)
                self._suspended.discard(dev_id)
                self._cond.notify_all()
            if not self._closed:
                self._commit()

    def suspend_thin(self, dev_id: int) -> None:
        """Suspend an active thin: its I/O waits until :meth:`resume_thin`."""
        with self._lock:
            self._check_open()
            self._flush_run()
            self._suspended.add(dev_id)

    def resume_thin(self, dev_id: int) -> None:
        """Resume a suspended thin; its waiting I/O proceeds."""
        with self._lock:
            self._suspended.discard(dev_id)
            self._cond.notify_all()

    def _wait_resumed(self, dev_id: int) -> None:
        while dev_id in self._suspended and not self._closed:
            self._cond.wait()

    # -- pool suspend/resume, growing --------------------------------------------------
    def _preresume(self) -> None:
        """``pool_preresume``: take up a grown data or metadata file (the
        metadata first, as ``maybe_resize_metadata_dev``), commit if so."""
        md = self._md
        if "read_only" not in self.config.features:
            nr_meta = md.metadata_file_blocks()
            if nr_meta > md.nr_metadata_blocks and not md.needs_check:
                if self._mode == Mode.OUT_OF_METADATA_SPACE:
                    self._set_mode(Mode.WRITE)
                try:
                    md.resize_metadata(nr_meta)
                except (DmThinError, OSError) as err:
                    self._metadata_failed("resize_metadata", err)
                    return
                self._dirty = True
                self._commit()
        nr_file = self._data.nr_blocks()
        if nr_file > self._md.nr_data_blocks and self._mode < Mode.OUT_OF_METADATA_SPACE \
                and not self._md.needs_check:
            try:
                self._md.resize_data(nr_file)
            except (DmThinError, OSError) as err:
                self._metadata_failed("resize_data", err)
                return
            self._dirty = True
            self._commit()

    def resume(self) -> None:
        """Suspend and resume the pool, as after a table reload: take up a
        grown data file, re-arm the low water mark, retry queued writers.
        Raises IOFailure if the pool has failed."""
        with self._lock:
            self._check_not_failed()
            self._commit()
            if self._mode == Mode.OUT_OF_DATA_SPACE:     # a reload rebinds the target
                self._set_mode(Mode.READ_ONLY if self._read_only_requested else Mode.WRITE)
            self._preresume()
            self._lwm_triggered = False
            self._cond.notify_all()

    def resize_data(self, size: int) -> None:
        """Grow the data file to *size* bytes and resume (what Docker's
        ``ResizePool`` does: truncate, reload, resume).

        Raises InvalidArgument for a size below the current one.
        """
        with self._lock:
            self._check_not_failed()
            current = self._data.size()
            if size < current:
                raise InvalidArgument(f"cannot shrink the data file of {self.pooldir.path} from "
                                      f"{current} to {size} bytes")
            os.truncate(self.pooldir.data_path, size)
            self.resume()

    def close(self) -> None:
        """Commit and close the files; later calls raise InvalidArgument."""
        with self._lock:
            if self._closed:
                return
            try:
                if self._mode < Mode.OUT_OF_METADATA_SPACE:
                    self._commit()
            finally:
                self._closed = True
                self._cond.notify_all()
                self._md.close()
                self._data.close()

    def __repr__(self) -> str:
        return f"<SimPoolBackend {str(self.pooldir.path)!r} {self._mode.name.lower()}>"

    @property
    def metadata(self):
        """The open :class:`~dmthin.thin.metadata.ThinMetadata` (tests, tools)."""
        return self._md


__all__ = ["SimPoolBackend", "Mode"]
