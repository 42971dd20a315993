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
  write then reports the first error (observed on 6.1 with the fidelity traces).
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

from collections.abc import Callable

from ..errors import DmThinError, IOFailure, MetadataError, NoSpace, NotSupported
from ..target import ThinStatus
from ..units import SECTOR_SIZE
from .core import Chunk, SimCore

_MAPPINGS_CHUNK = 4096

#: ``(snapshotted time, {vblock: (data block, time)})`` of a block range
_RangeMap = tuple[int, dict[int, tuple[int, int]]]


class SimThin:
    """One active thin device of a simulated pool.

    *core* is the pool's :class:`~dmthin.sim.core.SimCore`; *on_deactivate*
    is called with the device id once :meth:`deactivate` ran.
    """

    #: no device node: a simulated device is reached through this object only
    path: str | None = None
    #: no device-mapper names in the simulator
    name: str | None = None
    #: activation is per process
    activated = True

    def __init__(self, core: SimCore, dev_id: int, size: int,
                 on_deactivate: Callable[[int], None]):
        self._core = core
        self.dev_id = dev_id
        self.size = size
        self._on_deactivate = on_deactivate
        self._active = True

    def __repr__(self) -> str:
        return f"<SimThin {self.dev_id} of pool {self._core.name!r}>"

    def _enter(self) -> SimCore:
        """Common checks with the pool lock held; returns the core."""
        core = self._core
        if not self._active:
            raise IOFailure(f"thin device {self.dev_id} is not active")
        core.enter_io(self.dev_id)
        return core

    # -- read ---------------------------------------------------------------------------
    def read(self, offset: int, length: int) -> bytes:
        """Read *length* bytes at *offset*; unmapped space reads as zeros.

        Raises IOFailure (EIO) if the data file or the metadata cannot be read.
        """
        if not length:
            return b""
        core = self._core
        bs = core.block_bytes
        first, boff = divmod(offset, bs)
        with core.lock:
            if not self._active:
                raise IOFailure(f"thin device {self.dev_id} is not active")
            core.enter_io(self.dev_id)
            if boff + length <= bs:            # one block: one pread, no buffer
                return core.read_block(self.dev_id, first, boff, length)
            out = bytearray(length)
            view = memoryview(out)
            last = (offset + length - 1) // bs
            try:
                mappings = [(v, d) for v, d, _t in
                            core.metadata.mappings(self.dev_id, first, last + 1)]
            except (MetadataError, OSError) as err:
                raise IOFailure(f"reading the mappings of thin device {self.dev_id} failed: "
                                f"{err}") from err
            # one read per run of blocks adjacent in both the device and the data file
            pos = vstart = vend = -1
            for vblock, dblock in mappings:
                start = max(offset, vblock * bs)
                end = min(offset + length, (vblock + 1) * bs)
                bpos = dblock * bs + (start - vblock * bs)
                if vend >= 0 and pos + (vend - vstart) == bpos and vend == start - offset:
                    vend = end - offset
                    continue
                if vend >= 0:
                    core.data.read_into(0, pos, view[vstart:vend])
                pos, vstart, vend = bpos, start - offset, end - offset
            if vend >= 0:
                core.data.read_into(0, pos, view[vstart:vend])
        return bytes(out)

    # -- write ---------------------------------------------------------------------------
    def write(self, offset: int, data: Chunk) -> int:
        """Write *data* at *offset*; returns ``len(data)``.

        Raises NoSpace (ENOSPC: out of data space under error_if_no_space, or
        after the no-space timeout), IOFailure (EIO: a read-only pool asked
        for a new block, or a metadata/data file failure).
        """
        if type(data) is not bytes:
            data = memoryview(data).cast("B")
        total = len(data)
        if not total:
            return 0
        core = self._core
        vblock, boff = divmod(offset, core.block_bytes)
        with core.lock:
            if not self._active:
                raise IOFailure(f"thin device {self.dev_id} is not active")
            core.enter_write(self.dev_id)
            # one block, mapped and not shared (the common case): in place
            if boff + total <= core.block_bytes and \
                    core.write_mapped(self.dev_id, vblock, boff, data):
                return total
            try:
                self._write_locked(core, offset, memoryview(data))
            finally:
                core.flush_writes()
        return total

    def _write_locked(self, core: SimCore, offset: int, view: memoryview) -> None:
        bs = core.block_bytes
        md = core.metadata
        dev = self.dev_id
        total = len(view)
        last = (offset + total - 1) // bs
        maps = self._mappings(core, offset // bs, last) if last > offset // bs else None
        failed: DmThinError | None = None
        hit: tuple[int, int, bool] | None
        i = 0
        while i < total:
            vblock, boff = divmod(offset + i, bs)
            chunk = min(bs - boff, total - i)
            part = view[i:i + chunk]
            whole = chunk == bs
            if maps is not None:
                snap_time, m = maps[0], maps[1].get(vblock)
            else:
                m = core.lookup(dev, vblock)
                snap_time = 0 if m is None else md.snapshotted_time(dev)
            hit = None if m is None else (m[0], m[1], snap_time > m[1])
            if hit is not None and not hit[2]:
                core.queue_write(hit[0], boff, part)
                i += chunk
                continue
            try:
                old = None
                if hit is not None and not whole:
                    # read the shared block before allocating: a block that
                    # cannot be read (EIO) must not cost a data block
                    core.flush_writes()
                    old = bytearray(bs)
                    core.data.read_into(hit[0], 0, memoryview(old))
                new = core.provision(f"write to thin device {dev}")
            except (NoSpace, IOFailure) as err:
                # dm splits a bio per data block and each part completes on
                # its own: the other blocks are still written (fidelity trace)
                failed = failed or err
                i += chunk
                continue
            if new is None:
                core.check_not_failed()
                core.wait_resumed(dev)
                if maps is not None:           # waited for space: look up again
                    maps = self._mappings(core, vblock, last)
                continue
            if hit is not None:                # break sharing
                if old is None:
                    core.queue_write(new, 0, part)
                else:
                    old[boff:boff + chunk] = part
                    core.queue_write(new, 0, old)
            else:                              # provision
                if not whole and core.zero_new_blocks:
                    core.data.zero(new)
                elif not whole:
                    self._zero_sector_edges(core, new, boff, chunk)
                core.queue_write(new, boff, part)
            core.insert_mapping(dev, vblock, new)
            i += chunk
        if failed is not None:
            raise failed

    @staticmethod
    def _zero_sector_edges(core: SimCore, block: int, boff: int, length: int) -> None:
        """Without zeroing, a write into a new block still fills the rest of
        the 512-byte sectors it touches with zeros: on a block device a
        byte-level write is a read-modify-write of whole sectors, and the
        read of an unprovisioned block returns zeros."""
        head = boff - boff % SECTOR_SIZE
        end = boff + length
        tail = min(-(-end // SECTOR_SIZE) * SECTOR_SIZE, core.block_bytes)
        if head < boff:
            core.data.zero(block, head, boff - head)
        if end < tail:
            core.data.zero(block, end, tail - end)

    def _mappings(self, core: SimCore, first: int, last: int) -> _RangeMap:
        """The mappings of ``[first, last]``: one btree walk instead of a
        lookup per block.  Valid until the lock is released; the write only
        changes blocks it has passed."""
        try:
            md = core.metadata
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
        core = self._core
        if not core.discard_enabled:
            raise NotSupported(f"discard on thin device {self.dev_id}: the pool has "
                               "ignore_discard")
        with core.lock:
            self._enter()
            if core.read_only:
                return                         # process_bio_success
            core.maybe_periodic_commit()
            bs = core.block_bytes
            begin = -(-offset // bs)
            end = (offset + length) // bs
            md = core.metadata
            while begin < end:
                try:
                    if not core.discard_passdown:
                        # process_prepared_discard_no_passdown: one remove_range
                        # over the whole range, mapped or not: it still shadows
                        # the top-level leaf and marks the details changed
                        # (+2 metadata blocks under a held metadata snapshot)
                        core.forget_mappings(self.dev_id, begin, end)
                        md.remove_range(self.dev_id, begin, end)
                        core.mark_dirty()
                        break
                    # passdown (process_prepared_discard_passdown_pt1): a block
                    # the lookup calls shared is passed down only if no one
                    # else holds it; an unshared one always, even if a held
                    # metadata snapshot still counts it (observed on 6.1)
                    snap_time = md.details(self.dev_id).snapshotted_time
                    batch = []
                    last = begin
                    for v, d, t in md.mappings(self.dev_id, begin, end):
                        batch.append((d, snap_time > t))
                        last = v
                        if len(batch) >= _MAPPINGS_CHUNK:
                            break
                    if not batch:
                        break
                    core.forget_mappings(self.dev_id, begin, last + 1)
                    md.remove_range(self.dev_id, begin, last + 1)
                    core.release_on_commit(d for d, shared in batch
                                           if not shared or md.data_block_count(d) == 0)
                except (MetadataError, NoSpace, OSError) as err:
                    if isinstance(err, DmThinError) and not isinstance(err, (MetadataError,
                                                                              NoSpace)):
                        raise
                    core.fail_metadata("remove_range", err)
                    raise core.ro_error(f"discard on thin device {self.dev_id}") from err
                core.mark_dirty()
                begin = last + 1

    # -- the rest ---------------------------------------------------------------------------
    def flush(self) -> None:
        """Commit the pool's metadata if it changed (and sync the data file):
        :meth:`~dmthin.sim.core.SimCore.flush_thin`, which also says how a
        flush fails when the pool is out of space (NoSpace, IOFailure)."""
        with self._core.lock:
            self._enter().flush_thin(self.dev_id)

    def status(self) -> ThinStatus:
        """``<mapped sectors> <highest mapped sector|->``."""
        with self._core.lock:
            core = self._core
            core.check_not_failed()
            md = core.metadata
            return ThinStatus.from_blocks(md.details(self.dev_id).mapped_blocks,
                                          md.highest_mapped_block(self.dev_id),
                                          core.block_sectors)

    def resize(self, size: int) -> None:
        """Change the size (the simulated table's length)."""
        with self._core.lock:
            self.size = size

    def deactivate(self) -> None:
        """Deactivate the device (the pool commits)."""
        if self._active:
            self._active = False
            self._on_deactivate(self.dev_id)

    def release(self) -> None:
        """Keeping a simulated device active past its pool is not possible:
        the same as :meth:`deactivate`."""
        self.deactivate()

    def in_use(self) -> bool:
        """Nothing outside this process can open a simulated device."""
        return False
