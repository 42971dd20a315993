"""An active simulated thin device (``SimThin``): the thin target's I/O.

What dm-thin.c does per data block, reproduced:

* **read**: a mapped block is read from the data file; an unmapped one
  reads as zeros (``zero_fill_bio``).
* **write** to a mapped block that is not shared goes in place.  To an
  unmapped block it provisions a new data block (``provision_block``): the
  new block is zeroed first (``schedule_zero``; a hole is punched in the
  data file) unless the write covers the whole block or the pool has
  ``skip_block_zeroing``.  To a shared block (``lookup().shared``: mapped
  before the device's last snapshot) it breaks sharing (``break_sharing``):
  a new block gets a copy of the old one, except when the write covers the
  whole block.  The other device keeps the old block.  A block that cannot
  get a new one (no space, read-only pool) fails alone: dm splits the bio
  per data block, so the write's other blocks are still written and the
  write then reports the first error (observed on 6.1; tools/trace.py).
* **discard** unmaps the whole data blocks inside the range
  (``get_bio_block_range`` rounds the start up and the end down; partial
  blocks at the edges are left alone, as observed on 6.1: tests/traces/discard-edges).
  With discard passdown, data blocks whose reference count fell to 0 have
  their bytes released (a punched hole) at the next commit, so the last
  commit never maps released bytes; ``ignore_discard`` refuses discards
  with EOPNOTSUPP; a read-only pool completes them without effect.
* **flush** commits the pool if anything changed (REQ_PREFLUSH).

Byte offsets and lengths come from :class:`dmthin.ThinDevice`, which has
already checked them against the device size.
"""
from __future__ import annotations

from ..errors import DmThinError, IOFailure, MetadataError, NoSpace, NotSupported
from ..target import ThinStatus
from ..units import SECTOR_SIZE

_MAPPINGS_CHUNK = 4096


class SimThin:
    """One active thin device of a :class:`~dmthin.sim.pool.SimPoolBackend`."""

    path = None

    def __init__(self, pool, dev_id: int, size: int):
        self._pool = pool
        self.dev_id = dev_id
        self.size = size
        self._active = True

    def __repr__(self) -> str:
        return f"<SimThin {self.dev_id} of {self._pool!r}>"

    def _enter(self):
        """Common checks with the pool lock held; returns the pool."""
        pool = self._pool
        if not self._active:
            raise IOFailure(f"thin device {self.dev_id} is not active")
        pool._wait_resumed(self.dev_id)
        pool._check_not_failed()
        return pool

    # -- read ---------------------------------------------------------------------------
    def read(self, offset: int, length: int) -> bytes:
        """Read *length* bytes at *offset*; unmapped space reads as zeros.

        Raises IOFailure (EIO) if the data file or the metadata cannot be read.
        """
        out = bytearray(length)
        view = memoryview(out)
        if not length:
            return b""
        with self._pool._lock:
            pool = self._enter()
            bs = pool.block_bytes
            first = offset // bs
            last = (offset + length - 1) // bs
            try:
                if first == last:
                    hit = pool._md.lookup(self.dev_id, first)
                    mappings = [] if hit is None else [(first, hit[0])]
                else:
                    mappings = [(v, d) for v, d, _t in
                                pool._md.mappings(self.dev_id, first, last + 1)]
            except (MetadataError, OSError) as err:
                raise IOFailure(f"reading the mappings of thin device {self.dev_id} failed: "
                                f"{err}") from err
            run = None          # [data file pos, view start, view end]
            for vblock, dblock in mappings:
                start = max(offset, vblock * bs)
                end = min(offset + length, (vblock + 1) * bs)
                pos = dblock * bs + (start - vblock * bs)
                vstart = start - offset
                if run is not None and run[0] + (run[2] - run[1]) == pos and run[2] == vstart:
                    run[2] = end - offset
                    continue
                if run is not None:
                    pool._data.read_into(0, run[0], view[run[1]:run[2]])
                run = [pos, vstart, end - offset]
            if run is not None:
                pool._data.read_into(0, run[0], view[run[1]:run[2]])
        return bytes(out)

    # -- write ---------------------------------------------------------------------------
    def write(self, offset: int, data) -> int:
        """Write *data* at *offset*; returns ``len(data)``.

        Raises NoSpace (ENOSPC: out of data space under error_if_no_space, or
        after the no-space timeout), IOFailure (EIO: a read-only pool asked
        for a new block, or a metadata/data file failure).
        """
        view = memoryview(data).cast("B")
        total = len(view)
        if not total:
            return 0
        with self._pool._lock:
            pool = self._enter()
            pool._maybe_periodic_commit()
            try:
                self._write_locked(pool, offset, view)
            finally:
                try:
                    pool._flush_run()
                except IOFailure:
                    pool._run = None
                    raise
        return total

    def _write_locked(self, pool, offset: int, view: memoryview) -> None:
        bs = pool.block_bytes
        md = pool._md
        dev = self.dev_id
        total = len(view)
        last = (offset + total - 1) // bs
        maps = self._mappings(pool, offset // bs, last) if last > offset // bs else None
        failed = None
        i = 0
        while i < total:
            vblock, boff = divmod(offset + i, bs)
            chunk = min(bs - boff, total - i)
            part = view[i:i + chunk]
            whole = chunk == bs
            if maps is not None:
                m = maps[1].get(vblock)
                hit = None if m is None else (m[0], m[1], maps[0] > m[1])
            else:
                try:
                    hit = md.lookup(dev, vblock)
                except (MetadataError, OSError) as err:
                    raise IOFailure(f"looking up block {vblock} of thin device {dev} failed: "
                                    f"{err}") from err
            if hit is not None and not hit[2]:
                pool._queue_write(hit[0], boff, part)
                i += chunk
                continue
            try:
                new = pool._provision(f"write to thin device {dev}")
            except (NoSpace, IOFailure) as err:
                # dm splits a bio per data block and each part completes on
                # its own: the other blocks are still written (fidelity trace)
                failed = failed or err
                i += chunk
                continue
            if new is None:
                pool._check_not_failed()
                pool._wait_resumed(dev)
                if maps is not None:           # waited for space: look up again
                    maps = self._mappings(pool, vblock, last)
                continue
            if hit is not None:                # break sharing
                if whole:
                    pool._queue_write(new, 0, part)
                else:
                    pool._flush_run()
                    buf = bytearray(bs)
                    pool._data.read_into(hit[0], 0, memoryview(buf))
                    buf[boff:boff + chunk] = part
                    pool._queue_write(new, 0, buf)
            else:                              # provision
                if not whole and pool.zero_new_blocks:
                    pool._data.zero(new)
                elif not whole:
                    self._zero_sector_edges(pool, new, boff, chunk)
                pool._queue_write(new, boff, part)
            try:
                md.insert(dev, vblock, new)
            except NoSpace as err:
                pool._metadata_failed("insert", err)
                raise pool._ro_error(f"write to thin device {dev}") from err
            except (MetadataError, OSError) as err:
                if isinstance(err, DmThinError) and not isinstance(err, MetadataError):
                    raise
                pool._metadata_failed("insert", err)
                raise IOFailure(f"write to thin device {dev}: metadata update failed: "
                                f"{err}") from err
            pool._dirty = True
            i += chunk
        if failed is not None:
            raise failed

    @staticmethod
    def _zero_sector_edges(pool, block: int, boff: int, length: int) -> None:
        """Without zeroing, a write into a new block still fills the rest of
        the 512-byte sectors it touches with zeros: on a block device a
        byte-level write is a read-modify-write of whole sectors, and the
        read of an unprovisioned block returns zeros."""
        head = boff - boff % SECTOR_SIZE
        end = boff + length
        tail = min(-(-end // SECTOR_SIZE) * SECTOR_SIZE, pool.block_bytes)
        if head < boff:
            pool._data.zero(block, head, boff - head)
        if end < tail:
            pool._data.zero(block, end, tail - end)

    def _mappings(self, pool, first: int, last: int):
        """(snapshotted time, {vblock: (data block, time)}) for a range: one
        btree walk instead of a lookup per block.  Valid until the lock is
        released; the write only changes blocks it has passed."""
        try:
            md = pool._md
            snap_time = md.details(self.dev_id).snapshotted_time
            return snap_time, {v: (d, t) for v, d, t in md.mappings(self.dev_id, first,
                                                                    last + 1)}
        except (MetadataError, OSError) as err:
            raise IOFailure(f"reading the mappings of thin device {self.dev_id} failed: "
                            f"{err}") from err

    # -- discard --------------------------------------------------------------------------
    def discard(self, offset: int, length: int) -> None:
        """Unmap the whole data blocks inside ``[offset, offset+length)``.

        Raises NotSupported (EOPNOTSUPP) under ``ignore_discard``, IOFailure
        on a metadata failure.
        """
        pool = self._pool
        if not pool.discard_enabled:
            raise NotSupported(f"discard on thin device {self.dev_id}: the pool has "
                               "ignore_discard")
        with pool._lock:
            self._enter()
            if pool._read_only():
                return                         # process_bio_success
            pool._maybe_periodic_commit()
            bs = pool.block_bytes
            begin = -(-offset // bs)
            end = (offset + length) // bs
            md = pool._md
            while begin < end:
                try:
                    if not pool.discard_passdown:
                        # process_prepared_discard_no_passdown: one remove_range
                        # over the whole range, mapped or not: it still shadows
                        # the top-level leaf and marks the details changed
                        # (+2 metadata blocks under a held metadata snapshot)
                        md.remove_range(self.dev_id, begin, end)
                        pool._dirty = True
                        break
                    # passdown (process_prepared_discard_passdown_pt1): a block
                    # the lookup calls shared is passed down only if no one
                    # else holds it; an unshared one always, even if a held
                    # metadata snapshot still counts it (observed on 6.1)
                    snap_time = md.details(self.dev_id).snapshotted_time
                    batch = []
                    for v, d, t in md.mappings(self.dev_id, begin, end):
                        batch.append((d, snap_time > t))
                        last = v
                        if len(batch) >= _MAPPINGS_CHUNK:
                            break
                    if not batch:
                        break
                    md.remove_range(self.dev_id, begin, last + 1)
                    if pool.discard_passdown:
                        pool._pending_release.update(
                            d for d, shared in batch
                            if not shared or md.data_block_count(d) == 0)
                except (MetadataError, NoSpace, OSError) as err:
                    if isinstance(err, DmThinError) and not isinstance(err, (MetadataError,
                                                                              NoSpace)):
                        raise
                    pool._metadata_failed("remove_range", err)
                    raise pool._ro_error(f"discard on thin device {self.dev_id}") from err
                pool._dirty = True
                begin = last + 1

    # -- the rest ---------------------------------------------------------------------------
    def flush(self) -> None:
        """Commit the pool's metadata if it changed (and sync the data file).

        Raises IOFailure if the commit failed.  Out of data space, the
        kernel treats the empty flush bio as a write to block 0
        (``__process_bio_read_only``): with block 0 unmapped it fails with
        ENOSPC under error_if_no_space (else waits like a write), and with
        EIO on a read-only pool (the ENOSPC case observed on 6.1 with
        tools/trace.py; the read-only case follows the same kernel path,
        not yet observed).
        """
        from .pool import Mode
        with self._pool._lock:
            pool = self._enter()
            pool._flush_run()
            while pool._mode in (Mode.OUT_OF_DATA_SPACE, Mode.OUT_OF_METADATA_SPACE,
                                 Mode.READ_ONLY) and pool._md.lookup(self.dev_id, 0) is None:
                if pool._mode != Mode.OUT_OF_DATA_SPACE:
                    raise pool._ro_error(f"flush of thin device {self.dev_id}")
                if pool.error_if_no_space:
                    raise NoSpace(f"flush of thin device {self.dev_id}: the pool is out of "
                                  "data space and its block 0 is unmapped; delete or discard "
                                  "data, or grow the pool")
                pool._wait_for_space()
            if pool._dirty and not pool._commit():
                raise IOFailure(f"flush of thin device {self.dev_id}: the metadata commit "
                                "failed; the pool is read-only")
            pool._data.sync()

    def status(self) -> ThinStatus:
        """``<mapped sectors> <highest mapped sector|->``."""
        with self._pool._lock:
            pool = self._pool
            pool._check_not_failed()
            md = pool._md
            return ThinStatus.from_blocks(md.details(self.dev_id).mapped_blocks,
                                          md.highest_mapped_block(self.dev_id),
                                          pool.block_sectors)

    def resize(self, size: int) -> None:
        """Change the size (the simulated table's length)."""
        with self._pool._lock:
            self.size = size

    def deactivate(self) -> None:
        """Deactivate the device (the pool commits)."""
        if self._active:
            self._active = False
            self._pool._deactivate(self.dev_id)

    def in_use(self) -> bool:
        """Nothing outside this process can open a simulated device."""
        return False
