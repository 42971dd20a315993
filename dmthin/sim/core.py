"""The simulated pool's core (:class:`SimCore`): what dm-thin.c's pool does
between its thin devices' I/O and its metadata engine.

* **Modes** (:class:`~dmthin.sim.mode.Mode`) change as ``set_pool_mode``
  changes them; needs_check keeps a pool out of write mode.
* **Commits** (:meth:`SimCore.commit`): the data file is fdatasync'ed first
  (the kernel flushes the data device first); data blocks discarded with
  passdown are released after it.  If :attr:`SimCore.commit_period` is set
  (seconds; default off, env ``DMTHIN_SIM_COMMIT_PERIOD``), an I/O that
  finds the last commit older than that commits first: the kernel commits
  every second, the simulator has no background thread.
* **Data allocation** (:meth:`SimCore.provision`): the low water mark event
  fires once when the free count before an allocation is <= the mark.  No
  free block: commit (blocks freed in the transaction become free), and if
  still none, out_of_data_space.  There a write needing a block fails with
  ENOSPC under ``error_if_no_space``; else it waits (the kernel queues it)
  until space appears or :attr:`SimCore.no_space_timeout` passes (default
  60 s like the module parameter, env ``DMTHIN_SIM_NO_SPACE_TIMEOUT``; 0 waits
  for ever), after which the pool behaves as ``error_if_no_space``.
* **Metadata space**: free metadata is counted less the reserve
  (:func:`~dmthin.sim.params.metadata_reserve`); at 0 after a commit or an
  allocation the pool goes out-of-metadata-space (``ro``).  When the engine
  fails (NoSpace or I/O error from a mutating call) the transaction is
  aborted, needs_check set and the pool goes read-only
  (``metadata_operation_failed``: :meth:`SimCore.fail_metadata`).  The
  threshold event fires when free metadata blocks fall to the threshold.
* **Flush** of a thin device: :meth:`SimCore.flush_thin`.
* **Mapping lookups** (:meth:`SimCore.lookup`) go through a bounded cache
  of ``(data block, time)`` per device and virtual block, as the kernel's
  lookups hit its block cache.  It holds what the engine says and never
  whether a block is shared: that depends on the device's snapshotted time,
  which the caller reads fresh from the device's details.  Whatever changes
  a mapping goes through the core and forgets it: :meth:`insert_mapping`,
  :meth:`forget_mappings` (discard, delete, a new device id), an abort
  (:meth:`fail_metadata`) forgets all.  A commit changes no mapping.
  :meth:`SimCore.write_mapped` writes a mapped, unshared block in place
  from the cache: the path of most writes.

Thread safety: one lock (:attr:`SimCore.lock`) serialises everything; a
writer waiting for space or for a suspended device releases it.  Methods
in sections marked "lock held" must be called inside ``with core.lock``.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from ..errors import DmThinError, IOFailure, MetadataError, NoSpace
from ..units import SECTOR_SIZE
from .datafile import Chunk, DataFile
from .engine import MetadataEngine
from .mode import Mode, PoolModes
from .params import (
    COMMIT_PERIOD,
    COMMIT_PERIOD_ENV,
    DEFAULT_NO_SPACE_TIMEOUT,
    NO_SPACE_TIMEOUT_ENV,
    env_seconds,
    metadata_reserve,
)
from .writes import WriteQueue

#: mappings the lookup cache takes in (over all devices) before it starts over
LOOKUP_CACHE_BLOCKS = 1 << 16
#: a mapping the cache does not hold (None means "unmapped")
_MISS = (-1, -1)


class _OutOfDataSpace(Exception):
    """Internal: allocation found no free data block (mode switched)."""


class SimCore(PoolModes):
    """The pool state shared by :class:`~dmthin.sim.pool.SimPoolBackend` and
    its :class:`~dmthin.sim.thin.SimThin` devices.

    *name* names the pool in messages; *features*, *low_water_blocks*: the
    pool table's; *threshold*: :func:`~dmthin.sim.params.metadata_threshold`.
    The core owns *md* and *data* and closes them in :meth:`close`.

    Raises :class:`~dmthin.errors.UsageError` for a bad
    ``DMTHIN_SIM_NO_SPACE_TIMEOUT`` or ``DMTHIN_SIM_COMMIT_PERIOD``.
    """

    def __init__(self, name: str, md: MetadataEngine, data: DataFile, features: Iterable[str],
                 low_water_blocks: int, threshold: int, view_only: bool = False):
        feats = set(features)
        #: opened read-only by the user (``Pool.open(readonly=True)``): the
        #: files are open O_RDONLY, nothing is ever written or committed, and
        #: the pool shows the mode its metadata gives it
        self.view_only = view_only
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        PoolModes.__init__(self, name, self.cond, md, "error_if_no_space" in feats,
                           env_seconds(NO_SPACE_TIMEOUT_ENV, DEFAULT_NO_SPACE_TIMEOUT))
        self.data = data
        self.block_sectors = md.data_block_sectors
        self.block_bytes = self.block_sectors * SECTOR_SIZE
        self.zero_new_blocks = "skip_block_zeroing" not in feats
        self.discard_enabled = "ignore_discard" not in feats
        self.discard_passdown = self.discard_enabled and "no_discard_passdown" not in feats
        #: the table's ``read_only`` feature: the files are open read-only
        self.read_only_table = "read_only" in feats
        self.low_water_blocks = low_water_blocks
        self.metadata_threshold = threshold
        self.commit_period = env_seconds(COMMIT_PERIOD_ENV, None)
        self._lwm_triggered = False
        self._meta_low = False
        self._dirty = False
        self._last_commit = time.monotonic()
        self._pending_release: set[int] = set()
        #: a data block was allocated from the metadata reserve: commit once
        #: its mapping is inserted
        self._commit_after_insert = False
        self._writes = WriteQueue(data)
        self._suspended: set[int] = set()
        #: dev_id -> {vblock: (data block, time), or None: unmapped}
        self._lookups: dict[int, dict[int, tuple[int, int] | None]] = {}
        self._lookups_taken = 0         # entries added since the cache was last emptied
        with self.lock:
            self.set_mode(Mode.READ_ONLY if self.read_only_table else Mode.WRITE, quiet=True)

    # -- failures (lock held) ---------------------------------------------------------
    def fail_metadata(self, op: str, err: BaseException) -> None:
        """``metadata_operation_failed`` after *op* raised *err*: abort the
        transaction, set needs_check, go read-only (or fail, if even the abort
        failed)."""
        self._writes.drop()
        self._pending_release.clear()
        self._lookups.clear()           # the abort reverts mappings
        self._dirty = False
        self._commit_after_insert = False
        try:
            self.metadata.abort()
        except (DmThinError, OSError):
            self.set_mode(Mode.FAIL)
            return
        try:
            self.metadata.set_needs_check()
            self.metadata.commit()
        except (DmThinError, OSError):
            pass
        self.set_mode(Mode.READ_ONLY)

    # -- commit (lock held) -------------------------------------------------------------
    def mark_dirty(self) -> None:
        """Note an uncommitted metadata change."""
        self._dirty = True

    def release_on_commit(self, blocks: Iterable[int]) -> None:
        """Punch the data *blocks* after the next commit (discard passdown)."""
        self._pending_release.update(blocks)

    def commit(self) -> bool:
        """The kernel's ``commit()``: False if the pool is read-only or the
        commit failed (the pool then went read-only)."""
        if self._mode >= Mode.OUT_OF_METADATA_SPACE:
            return False
        if self.view_only:
            return True                 # nothing can have changed
        try:
            self._writes.flush()
            if self._dirty:
                self.data.sync()
                self.metadata.commit()
        except (DmThinError, OSError) as err:
            self.fail_metadata("commit", err)
            return False
        self._dirty = False
        self._last_commit = time.monotonic()
        if self._pending_release:
            # blocks freed in a transaction are not allocatable before its
            # commit, so none of these can have been reallocated
            blocks = sorted(self._pending_release)
            self._pending_release.clear()
            self.data.release(blocks)
        self._check_metadata_space()
        if self._mode == Mode.OUT_OF_DATA_SPACE and self.metadata.nr_free_data_blocks():
            self.set_mode(Mode.WRITE)
        return True

    def maybe_periodic_commit(self) -> None:
        """Commit if :attr:`commit_period` has passed since the last commit."""
        if self.commit_period and self._dirty and \
                time.monotonic() - self._last_commit >= self.commit_period:
            self.commit()

    def free_metadata_reported(self) -> int:
        """Free metadata blocks less the reserve, as the status counts them."""
        reserve = metadata_reserve(self.metadata.nr_metadata_blocks)
        return max(0, self.metadata.nr_free_metadata_blocks() - reserve)

    def _check_metadata_space(self) -> None:
        if self.free_metadata_reported() == 0 and \
                self._mode not in (Mode.OUT_OF_METADATA_SPACE, Mode.READ_ONLY):
            self.set_mode(Mode.OUT_OF_METADATA_SPACE)
        self._check_metadata_threshold()

    def _check_metadata_threshold(self) -> None:
        low = self.metadata.nr_free_metadata_blocks() <= self.metadata_threshold
        if low and not self._meta_low:
            self._event("metadata_low_water_mark")
        self._meta_low = low

    # -- data allocation (lock held) ---------------------------------------------------
    def _alloc_data_block(self) -> int:
        """``alloc_data_block``; raises _OutOfDataSpace (mode switched) or
        IOFailure (metadata failure)."""
        md = self.metadata
        free = md.nr_free_data_blocks()
        if free <= self.low_water_blocks and not self._lwm_triggered:
            self._lwm_triggered = True
            self._event("low_water_mark")
        if not free:
            if not self.commit():
                raise _OutOfDataSpace()
            if not md.nr_free_data_blocks():
                self.set_mode(Mode.OUT_OF_DATA_SPACE)
                raise _OutOfDataSpace()
        try:
            block = md.alloc_data_block()
        except NoSpace as err:
            # The kernel switches to out_of_data_space on any ENOSPC here, also
            # when the only free blocks were freed in this transaction (not
            # allocatable before a commit); its next commit switches back.
            if md.nr_free_data_blocks() == 0 or md.nr_free_metadata_blocks() > 0:
                self.set_mode(Mode.OUT_OF_DATA_SPACE)
                raise _OutOfDataSpace() from None
            self.fail_metadata("alloc_data_block", err)
            raise self.ro_error("allocating a data block") from err
        except (MetadataError, OSError) as err:
            self.fail_metadata("alloc_data_block", err)
            raise self.ro_error("allocating a data block") from err
        self._dirty = True
        self._check_metadata_threshold()
        # The kernel commits here, "before we use up the metadata reserve",
        # which commits the new block's allocation without its mapping: a
        # pool that then stays out of metadata space (no later commit) keeps
        # a leaked block (thin_check 1.1.0 flags it).  The simulator commits
        # once the mapping is in (insert_mapping), from the same reserve.
        self._commit_after_insert = self.free_metadata_reported() == 0
        return block

    def provision(self, what: str) -> int | None:
        """Allocate a data block for *what* (a write), honouring the mode.

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
                raise NoSpace(f"{what}: pool {self.name} is out of data space; delete "
                              "or discard data, or grow the pool")
            self._wait_for_space()
            return None
        if self._mode == Mode.WRITE:
            return None
        raise self.ro_error(what)

    def _wait_for_space(self) -> None:
        """Queue a writer while out of data space (``retry_on_resume``)."""
        self._writes.flush()
        while self._mode == Mode.OUT_OF_DATA_SPACE and not self.error_if_no_space \
                and not self._closed:
            wait = self.no_space_wait(COMMIT_PERIOD)
            if wait is None:
                break
            self.cond.wait(wait)
            if self._mode == Mode.OUT_OF_DATA_SPACE:
                self.commit()                           # the kernel's periodic commit
        self.check_open()

    # -- mappings (lock held) ------------------------------------------------------------
    def lookup(self, dev_id: int, vblock: int) -> tuple[int, int] | None:
        """``(data block, time)`` of *vblock* of thin *dev_id*, or None if it
        is unmapped: the engine's lookup, through the cache.  Whether the
        block is shared is for the caller to decide from fresh device
        details (``snapshotted_time > time``).

        Raises IOFailure if the metadata cannot be read.
        """
        cache = self._lookups.get(dev_id)
        if cache is None:
            cache = self._lookups[dev_id] = {}
        else:
            hit = cache.get(vblock, _MISS)
            if hit is not _MISS:
                return hit
        try:
            found = self.metadata.lookup(dev_id, vblock)
        except (MetadataError, OSError) as err:
            raise IOFailure(f"looking up block {vblock} of thin device {dev_id} failed: "
                            f"{err}") from err
        hit = None if found is None else (found[0], found[1])
        if self._lookups_taken >= LOOKUP_CACHE_BLOCKS:
            self._lookups.clear()
            self._lookups_taken = 0
            cache = self._lookups[dev_id] = {}
        self._lookups_taken += 1
        cache[vblock] = hit
        return hit

    def forget_mappings(self, dev_id: int, begin: int = 0, end: int | None = None) -> None:
        """Drop the cached mappings of *dev_id* in ``[begin, end)`` (from
        *begin* on if *end* is None): they are about to change, or the
        device is deleted, new or no longer active."""
        if begin == 0 and end is None:
            self._lookups.pop(dev_id, None)
            return
        cache = self._lookups.get(dev_id)
        if not cache:
            return
        if end is not None and end - begin < len(cache):
            for v in range(begin, end):
                cache.pop(v, None)
        else:
            for v in [v for v in cache if v >= begin and (end is None or v < end)]:
                del cache[v]

    def insert_mapping(self, dev_id: int, vblock: int, block: int) -> None:
        """Map *vblock* of *dev_id* to data *block*.  On a metadata failure
        the pool goes read-only and this raises IOFailure."""
        cache = self._lookups.get(dev_id)
        if cache is not None:
            cache.pop(vblock, None)
        try:
            self.metadata.insert(dev_id, vblock, block)
        except NoSpace as err:
            self.fail_metadata("insert", err)
            raise self.ro_error(f"write to thin device {dev_id}") from err
        except (MetadataError, OSError) as err:
            if isinstance(err, DmThinError) and not isinstance(err, MetadataError):
                raise
            self.fail_metadata("insert", err)
            raise IOFailure(f"write to thin device {dev_id}: metadata update failed: "
                            f"{err}") from err
        self._dirty = True
        if self._commit_after_insert:
            self._commit_after_insert = False
            self.commit()

    # -- data writes (lock held) -----------------------------------------------------------
    def queue_write(self, block: int, offset: int, part: Chunk) -> None:
        """Queue *part* for byte *offset* of data *block* (coalesced with its
        neighbours; written by :meth:`flush_writes` or the next commit)."""
        self._writes.queue(block * self.block_bytes + offset, part)

    def flush_writes(self) -> None:
        """Write the queued data (IOFailure if the data file fails)."""
        self._writes.flush()

    def read_block(self, dev_id: int, vblock: int, offset: int, length: int) -> bytes:
        """*length* bytes at byte *offset* of *vblock* of thin *dev_id*
        (inside that block): zeros if it is unmapped, else one ``pread``.

        Raises IOFailure if the metadata or the data file cannot be read.
        """
        cache = self._lookups.get(dev_id)
        hit = _MISS if cache is None else cache.get(vblock, _MISS)
        if hit is _MISS:
            hit = self.lookup(dev_id, vblock)
        if hit is None:
            return bytes(length)
        return self.data.pread(hit[0] * self.block_bytes + offset, length)

    def write_mapped(self, dev_id: int, vblock: int, offset: int, part: Chunk) -> bool:
        """Write *part* at byte *offset* of *vblock* of thin *dev_id* now, in
        place, if the block is mapped and not shared (the common case, after
        the queued data); False, having written nothing, if it is unmapped or
        shared (the caller provisions or breaks sharing).

        Raises IOFailure if the metadata or the data file fails.
        """
        cache = self._lookups.get(dev_id)
        hit = _MISS if cache is None else cache.get(vblock, _MISS)
        if hit is _MISS:
            hit = self.lookup(dev_id, vblock)
        if hit is None or self.metadata.snapshotted_time(dev_id) > hit[1]:
            return False
        self._writes.flush()
        self.data.pwrite(hit[0] * self.block_bytes + offset, part)
        return True

    def flush_thin(self, dev_id: int) -> None:
        """A flush (REQ_PREFLUSH) of thin *dev_id*: commit if anything changed.

        Out of data space, the kernel treats the empty flush bio as a write to
        block 0 (``__process_bio_read_only``): with block 0 unmapped it fails
        with NoSpace under error_if_no_space (else waits like a write), and
        with IOFailure on a read-only pool.  IOFailure also if the commit failed.
        """
        self._writes.flush()
        while self._mode in (Mode.OUT_OF_DATA_SPACE, Mode.OUT_OF_METADATA_SPACE,
                             Mode.READ_ONLY) and self.metadata.lookup(dev_id, 0) is None:
            if self._mode != Mode.OUT_OF_DATA_SPACE:
                raise self.ro_error(f"flush of thin device {dev_id}")
            if self.error_if_no_space:
                raise NoSpace(f"flush of thin device {dev_id}: the pool is out of data space "
                              "and its block 0 is unmapped; delete or discard data, or grow "
                              "the pool")
            self._wait_for_space()
        if self._dirty and not self.commit():
            raise IOFailure(f"flush of thin device {dev_id}: the metadata commit failed; the "
                            "pool is read-only")
        self.data.sync()

    # -- suspended devices (lock held) -----------------------------------------------------
    def suspend(self, dev_id: int) -> None:
        """Hold the I/O of thin *dev_id* until :meth:`unsuspend`."""
        self._writes.flush()
        self._suspended.add(dev_id)

    def unsuspend(self, dev_id: int) -> None:
        """Let the held I/O of thin *dev_id* proceed."""
        self._suspended.discard(dev_id)
        self.cond.notify_all()

    def enter_io(self, dev_id: int) -> None:
        """Before an I/O to thin *dev_id*: wait while it is suspended, then
        raise InvalidArgument (closed pool) or IOFailure (failed pool)."""
        if dev_id in self._suspended:
            self.wait_resumed(dev_id)
        if self._closed or self._mode == Mode.FAIL:
            self.check_not_failed()

    def enter_write(self, dev_id: int) -> None:
        """Before a write or discard to thin *dev_id*: :meth:`enter_io`, then
        :meth:`maybe_periodic_commit`."""
        if dev_id in self._suspended:
            self.wait_resumed(dev_id)
        if self._closed or self._mode == Mode.FAIL:
            self.check_not_failed()
        if self.commit_period and self._dirty:
            self.maybe_periodic_commit()

    def wait_resumed(self, dev_id: int) -> None:
        """Wait while thin *dev_id* is suspended (and the pool open)."""
        while dev_id in self._suspended and not self._closed:
            self.cond.wait()

    # -- resume, close (lock held) -------------------------------------------------------
    def preresume(self) -> None:
        """``pool_preresume``: take up a grown data or metadata file (the
        metadata first, as ``maybe_resize_metadata_dev``), commit if so."""
        md = self.metadata
        if self.view_only:
            return                      # growing would write the metadata
        if not self.read_only_table:
            nr_meta = md.metadata_file_blocks()
            if nr_meta > md.nr_metadata_blocks and not md.needs_check:
                if self._mode == Mode.OUT_OF_METADATA_SPACE:
                    self.set_mode(Mode.WRITE)
                try:
                    md.resize_metadata(nr_meta)
                except (DmThinError, OSError) as err:
                    self.fail_metadata("resize_metadata", err)
                    return
                self._dirty = True
                self.commit()
        nr_file = self.data.nr_blocks()
        if nr_file > md.nr_data_blocks and not self.read_only and not md.needs_check:
            try:
                md.resize_data(nr_file)
            except (DmThinError, OSError) as err:
                self.fail_metadata("resize_data", err)
                return
            self._dirty = True
            self.commit()

    def rearm_low_water_mark(self) -> None:
        """Let the low water mark event fire again (a resume re-arms it)."""
        self._lwm_triggered = False

    def close(self) -> None:
        """Mark the pool closed, wake every waiter, close the files (without
        committing: commit first)."""
        self._closed = True
        self._lookups.clear()
        self.cond.notify_all()
        self.metadata.close()
        self.data.close()


__all__ = ["Chunk", "Mode", "SimCore"]
