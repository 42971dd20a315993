"""Walk thin metadata and emit IR events (the producer side of thin_dump).

Read-only and streaming: the device-details tree is read into a dict (one
entry per device), then each device's mapping subtree is walked one leaf at
a time, so memory stays bounded by the block cache whatever the number of
mappings.  Semantics follow ``thin_dump`` 0.9.0: devices come in the order of
the top-level mapping tree, runs of mappings are grouped across leaves, the
superblock's ``nr_data_blocks`` is the data space map's size (0 in a
metadata snapshot, whose space-map roots are zeroed), and ``metadata_snap``
is never emitted.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

from ..errors import MetadataError
from ..pdata.block import BlockManager
from ..pdata.btree.walk import iter_items
from ..pdata.checksum import Buffer
from .accel import ffi, lib
from .format import MAPPING_VALUE_SIZE
from .ir import MetadataVisitor, RunBuilder, Superblock, to_map
from .reader import (
    iter_mapping_leaf_nodes,
    iter_mapping_leaves,
    mapping_leaf_batches,
    open_block_manager,
    read_details,
    select_superblock,
)
from .xml import XmlWriter

#: lines a leaf's runs can take at most (entries of a leaf with 8-byte values, + 1)
_LEAF_TEXT = 255

__all__ = ["dump", "total_mapped", "open_block_manager", "select_superblock", "read_details",
           "iter_mapping_leaves"]


class _XmlRuns:
    """:class:`~dmthin.thin.ir.RunBuilder` and :meth:`XmlWriter.map_runs
    <dmthin.thin.xml.XmlWriter.map_runs>` in one accelerator loop
    (``dm_xml_leaf_runs``): a leaf's mappings in, thin_dump's lines out."""

    def __init__(self, writer: XmlWriter):
        self.write = writer.write
        self.ind = ffi.new("char[]", writer.indent.encode())
        self.state = ffi.new("uint64_t[6]")
        self.cap = (160 + len(writer.indent)) * 1024
        self.out = ffi.new("char[]", self.cap)
        self.indent = writer.indent.encode()
        self.batch_cap = 0
        self.batch_out: Any = None
        self.entries = ffi.new("uint64_t[1]")

    def add_blocks(self, blocks: Any, n: int) -> int:
        """Write the runs *n* validated mapping leaves in a row (cdata, as
        :class:`~dmthin.pdata.btree.cwalk.LeafBatches` hands out) complete;
        return their number of mappings."""
        need = n * _LEAF_TEXT * (200 + len(self.indent))
        if need > self.batch_cap:
            self.batch_cap = need
            self.batch_out = ffi.new("char[]", need)
        w = lib.dm_xml_leaf_blocks(blocks, n, self.state, self.ind, self.batch_out,
                                   self.batch_cap, self.entries)
        if w < 0:
            raise MemoryError("dm_xml_leaf_blocks: output buffer too small")
        if w:
            self.write(ffi.buffer(self.batch_out, w)[:].decode("ascii"))
        got = int(self.entries[0])
        self.entries[0] = 0
        return got

    def add_block(self, buf: Buffer, nr: int, mx: int) -> None:
        """Write the runs a validated mapping leaf (*nr* entries of *mx*)
        completes."""
        w = lib.dm_xml_leaf_block(ffi.from_buffer(buf), nr, mx, 0, self.state, self.ind,
                                  self.out, self.cap)
        if w < 0:
            raise MemoryError("dm_xml_leaf_block: output buffer too small")
        if w:
            self.write(ffi.buffer(self.out, w)[:].decode("ascii"))

    def add_leaf(self, keys: Sequence[int], values: Sequence[int], final: bool = False) -> None:
        """Write the runs the mappings *keys* -> *values* complete (and the
        pending one if *final*)."""
        n = len(keys)
        if 160 * n >= self.cap:
            self.cap = (160 + len(ffi.string(self.ind))) * (n + 1)
            self.out = ffi.new("char[]", self.cap)
        w = lib.dm_xml_leaf_runs(ffi.new("uint64_t[]", keys), ffi.new("uint64_t[]", values), n,
                                 final, self.state, self.ind, self.out, self.cap)
        if w < 0:
            raise MemoryError("dm_xml_leaf_runs: output buffer too small")
        if w:
            self.write(ffi.buffer(self.out, w)[:].decode("ascii"))


def dump(bm: BlockManager, visitor: MetadataVisitor, *,
         metadata_snap: bool | int | None = None, dev_ids: Iterable[int] | None = None,
         skip_mappings: bool = False, progress: Callable[[int], None] | None = None,
         accelerated: bool = True) -> None:
    """Emit the IR of the metadata behind block manager *bm* to *visitor*.

    *dev_ids*: only these devices; *progress*: called with the number of
    mappings emitted so far.  An :class:`~dmthin.thin.xml.XmlWriter` gets
    its mapping lines from the accelerator when it is built and
    *accelerated* (the same bytes).  Raises
    :class:`~dmthin.errors.MetadataError` (corruption, no metadata
    snapshot) and ``OSError``."""
    sb = select_superblock(bm, metadata_snap)
    details = read_details(bm, sb.device_details_root)
    visitor.superblock_b(Superblock(
        uuid="", time=sb.time, transaction=sb.trans_id, flags=sb.flags, version=sb.version,
        data_block_sectors=sb.data_block_size, nr_data_blocks=sb.data_sm.nr_blocks,
        metadata_snap=None))
    wanted = None if dev_ids is None else set(dev_ids)
    done = 0
    fast = accelerated and lib is not None and type(visitor) is XmlWriter
    xruns: _XmlRuns | None = None
    emit_runs: Callable[[list[tuple[int, int, int]]], None] | None
    emit_runs = getattr(visitor, "map_runs", None)
    if emit_runs is None:
        emit_map = visitor.map

        def emit_runs(runs: list[tuple[int, int, int]]) -> None:
            for r in runs:
                emit_map(to_map(r))
    for dev_id, subroot in iter_items(bm, sb.data_mapping_root, MAPPING_VALUE_SIZE):
        if wanted is not None and dev_id not in wanted:
            continue
        dev = details.get(dev_id)
        if dev is None:
            raise MetadataError(f"mappings present for device {dev_id}, but it is not in the "
                                "device details tree (run check)")
        visitor.device_b(dev)
        if not skip_mappings and fast:
            if xruns is None:
                xruns = _XmlRuns(cast("XmlWriter", visitor))
            xruns.state[0:6] = [0] * 6       # a new device: no run pending
            walk = mapping_leaf_batches(bm, subroot)
            skip = 0
            if walk is not None:
                for blocks, n in walk:
                    done += xruns.add_blocks(blocks, n)
                    if progress is not None:
                        progress(done)
                skip = walk.handed if walk.failed else -1
            if skip >= 0:        # no C walker, or it stopped on a problem: Python reports it
                for keys, buf, mx in iter_mapping_leaf_nodes(bm, subroot, skip=skip):
                    xruns.add_block(buf, len(keys), mx)
                    if progress is not None:
                        done += len(keys)
                        progress(done)
            xruns.add_leaf((), (), final=True)
        elif not skip_mappings:
            runs = RunBuilder()
            for keys, values in iter_mapping_leaves(bm, subroot, accelerated):
                done_runs = runs.add_leaf(keys, values)
                if done_runs:
                    emit_runs(done_runs)
                if progress is not None:
                    done += len(keys)
                    progress(done)
            last = runs.finish()
            if last:
                emit_runs(last)
        visitor.device_e()
    visitor.superblock_e()
    visitor.eof()


def total_mapped(bm: BlockManager, metadata_snap: bool | int | None = None) -> int:
    """Sum of ``mapped_blocks`` over all devices (a progress-bar total)."""
    sb = select_superblock(bm, metadata_snap)
    return sum(d.mapped_blocks for d in read_details(bm, sb.device_details_root).values())
