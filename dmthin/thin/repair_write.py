"""Writing a repair plan as new metadata, leaf by leaf, keeping what
snapshots share.

Every surviving leaf whose entries all stay (none out of its key range, out
of order or past the data device) is copied as it is -- once, however many
devices use it -- and a device whose leaves are all such copies gets
internal nodes built over them (devices with the very same leaves share
one tree, as snapshots do).  Other devices' mappings are packed into new
full leaves.  So the output takes about the space the input did, even for
pools with many snapshots, and costs a copy per leaf, not work per mapping
(the data reference counts excepted).  Then come the top-level and details
trees, the data space map (counts: the leaves referring to each data
block), the metadata space map (counts: one per parent pointer, so shared
leaves and trees count several) and the superblock, last, through
:class:`~dmthin.thin.output.MetadataOutput` (crash-safe).
"""
from __future__ import annotations

import os
import struct
from array import array
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..pdata.block import BlockManager
from ..pdata.btree.builder import BlockWriter, build_btree, build_u64_btree, partition
from ..pdata.btree.node import (
    HEADER_FIELDS,
    HEADER_FIELDS_OFFSET,
    HEADER_SIZE,
    INTERNAL_NODE,
    calc_max_entries,
)
from ..pdata.checksum import BITMAP, BLOCK_SIZE, BTREE_NODE, INDEX
from ..pdata.refcounts import RefCounts
from ..pdata.space_map.build import build_disk_space_map
from ..pdata.space_map.format import (
    BITMAP_HEADER_SIZE,
    ENTRIES_PER_BITMAP,
    INDEX_ENTRY,
    METADATA_INDEX_OFFSET,
    REF_COUNT,
    SpaceMapRoot,
    encode_bitmap_counts,
    nr_bitmaps,
)
from ..units import MAX_METADATA_BLOCKS
from .format import TIME_BITS, Superblock, pack_sm_root
from .output import MetadataOutput

if TYPE_CHECKING:                       # repair.py imports this module
    from .repair import Plan

MAPPING_MAX = calc_max_entries(8)
_KEEP_LEAVES = 2048          # reused leaves kept between the checks and the copy (8 MiB)
_NR_MX = struct.Struct("<II")   # nr_entries, max_entries at offset 16 of a node
E = ENTRIES_PER_BITMAP


def _decode(buf: bytes | bytearray) -> tuple[array[int], array[int], int]:
    """A leaf's (keys, values, max_entries), copied out at C speed
    (``frombytes``)."""
    nr, mx = _NR_MX.unpack_from(buf, 16)
    mv = memoryview(buf)
    keys, values = array("Q"), array("Q")
    keys.frombytes(mv[HEADER_SIZE:HEADER_SIZE + 8 * nr])
    at = HEADER_SIZE + 8 * mx
    values.frombytes(mv[at:at + 8 * nr])
    return keys, values, mx


class _Layout:
    """What one pass over the plan produced (blocks are numbered from 1):
    the ``total`` written, each device's ``roots`` and mappings written
    (``mapped``), the parents of shared blocks (``refs``), the mappings
    ``dropped``."""

    def __init__(self) -> None:
        self.total = 0
        self.roots: dict[int, int] = {}
        self.refs: dict[int, int] = {}
        self.mapped: dict[int, int] = {}
        self.dropped = 0


class _Pass:
    def __init__(self, bm: BlockManager, plan: Plan, w: BlockWriter):
        self.bm, self.plan, self.w = bm, plan, w
        self.limit = plan.nr_data_blocks << TIME_BITS
        self.counts = RefCounts(plan.nr_data_blocks)
        # source leaf -> its copy's block (0: not copied) and first key
        self.copy_of = array("Q", bytes(8 * bm.file_blocks))
        self.first_key = array("Q", bytes(8 * bm.file_blocks))
        self.trees: dict[tuple[int, ...], int] = {}    # source leaves -> new root
        self.layout = _Layout()

    def _read(self, b: int) -> tuple[bytes | bytearray, array[int], array[int], int]:
        """Leaf *b*: (contents, keys, values, max_entries)."""
        buf = self.bm.read(b, BTREE_NODE)
        keys, values, mx = _decode(buf)
        return buf, keys, values, mx

    def _ref(self, b: int) -> None:
        refs = self.layout.refs
        refs[b] = refs.get(b, 1) + 1

    def device(self, dev_id: int, leaves: list[tuple[int, int, int]]) -> None:
        """Rebuild one device's mappings from its surviving *leaves*
        ``(block, low, high)``: shared as they are while every leaf is clean
        (in order, inside its range, full enough, mapping inside the data
        device), else the good mappings into a new tree."""
        reuse: list[int] = []
        kept: dict[int, bytes | bytearray] = {}     # reused leaves' contents, bounded
        keys_all, values_all = array("Q"), array("Q")
        last, clean, n_clean = -1, True, 0
        for b, lo, hi in leaves:
            buf, keys, values, mx = self._read(b)
            if (clean and keys and keys[0] > last and keys[0] >= lo and keys[-1] < hi
                    and max(values) < self.limit and mx == MAPPING_MAX
                    and (len(leaves) == 1 or len(keys) >= MAPPING_MAX // 3)):
                reuse.append(b)
                n_clean += len(keys)
                last = keys[-1]
                if len(kept) < _KEEP_LEAVES:
                    kept[b] = buf
                continue
            if clean:
                # The first unclean leaf: the clean ones' mappings are kept
                # as they are (read again), and the rest filtered.
                clean = False
                kept.clear()
                for rb in reuse:
                    _buf, rkeys, rvalues, _mx = self._read(rb)
                    keys_all.extend(rkeys)
                    values_all.extend(rvalues)
            for k, v in zip(keys, values, strict=True):
                if k > last and lo <= k < hi and v < self.limit:
                    keys_all.append(k)
                    values_all.append(v)
                    last = k
                else:
                    self.layout.dropped += 1
        self.layout.mapped[dev_id] = n_clean if clean else len(keys_all)
        if clean and reuse:
            self.layout.roots[dev_id] = self._shared_tree(tuple(reuse), kept)
            return
        self.counts.inc_packed(values_all, TIME_BITS)
        self.layout.roots[dev_id] = build_u64_btree(self.w, keys_all, values_all)

    def _shared_tree(self, leaves: tuple[int, ...], kept: dict[int, bytes | bytearray]) -> int:
        root = self.trees.get(leaves)
        if root is not None:
            self._ref(root)
            return root
        level: list[tuple[int, int]] = []
        for b in leaves:
            nb = self.copy_of[b]
            if not nb:
                buf = kept.get(b)
                if buf is None:
                    buf, keys, values, _mx = self._read(b)
                else:
                    keys, values, _mx = _decode(buf)
                nb = self.w.alloc(BTREE_NODE)
                off = self.w.offset(nb)
                self.w.buf[off:off + BLOCK_SIZE] = buf
                self.counts.inc_packed(values, TIME_BITS)
                self.copy_of[b] = nb
                self.first_key[b] = keys[0] if keys else 0
            else:
                self._ref(nb)
            level.append((self.first_key[b], nb))
        root = self._internal(level)
        self.trees[leaves] = root
        return root

    def _internal(self, level: list[tuple[int, int]]) -> int:
        while len(level) > 1:
            parents: list[tuple[int, int]] = []
            i = 0
            for size in partition(len(level), MAPPING_MAX):
                chunk = level[i:i + size]
                b = self.w.alloc(BTREE_NODE)
                off = self.w.offset(b)
                HEADER_FIELDS.pack_into(self.w.buf, off + HEADER_FIELDS_OFFSET, INTERNAL_NODE,
                                        b, size, MAPPING_MAX, 8)
                struct.pack_into(f"<{size}Q", self.w.buf, off + HEADER_SIZE,
                                 *(k for k, _ in chunk))
                struct.pack_into(f"<{size}Q", self.w.buf, off + HEADER_SIZE + 8 * MAPPING_MAX,
                                 *(c for _, c in chunk))
                parents.append((chunk[0][0], b))
                i += size
            level = parents
        return level[0][1]

    def run(self, nr_meta: int) -> tuple[SpaceMapRoot, SpaceMapRoot, int, int]:
        plan = self.plan
        for dev_id, d in plan.devices.items():
            self.device(dev_id, d.leaves)
        ids = sorted(plan.devices)
        top = build_u64_btree(self.w, ids, [self.layout.roots[i] for i in ids])
        details = (plan.devices[i].details.replace(mapped_blocks=self.layout.mapped[i]).pack()
                   for i in ids)
        det = build_btree(self.w, ids, b"".join(details), 24)
        data_sm = build_disk_space_map(self.w, self.counts)
        meta_sm = self._metadata_space_map(nr_meta)
        self.layout.total = self.w.next
        return data_sm, meta_sm, top, det

    def _metadata_space_map(self, nr_meta: int) -> SpaceMapRoot:
        """Counts 1 for every block written (this space map's too), and the
        number of parents for shared ones; an overflow tree for 3 and more."""
        over = sorted((b, c) for b, c in self.layout.refs.items() if c >= 3)
        ref_root = build_btree(self.w, array("Q", (b for b, _c in over)),
                               b"".join(REF_COUNT.pack(c) for _b, c in over), 4)
        nbm = nr_bitmaps(nr_meta)
        used = self.w.next + nbm + 1
        entries = []
        for bi in range(nbm):
            b = self.w.alloc(BITMAP)
            lo, hi = bi * E, min((bi + 1) * E, nr_meta)
            n = max(0, min(used, hi) - lo)
            counts = bytearray(b"\x01" * n)
            for blk, c in self.layout.refs.items():
                if lo <= blk < lo + n:
                    counts[blk - lo] = min(c, 3)
            body = encode_bitmap_counts(counts)
            off = self.w.offset(b) + BITMAP_HEADER_SIZE
            self.w.buf[off:off + len(body)] = body
            entries.append(INDEX_ENTRY.pack(b, E - n, min(E, n)))
        index = self.w.alloc(INDEX)
        off = self.w.offset(index) + METADATA_INDEX_OFFSET
        blob = b"".join(entries)
        self.w.buf[off:off + len(blob)] = blob
        return SpaceMapRoot(nr_meta, used, index, ref_root)


def write_repaired(bm: BlockManager, plan: Plan, output: str | os.PathLike[str]) -> int:
    """Write *plan* as new metadata to the existing *output*; return the
    number of mappings dropped.  A counting pass first: nothing is written
    unless it fits.  Raises :class:`UsageError` (missing or too small
    output) and ``OSError``."""
    p = os.fspath(output)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"output {p} does not exist: create it first with the metadata size "
                         f"(e.g. truncate -s 8M {p})") from None
    try:
        nr_meta = min(os.lseek(fd, 0, os.SEEK_END) // BLOCK_SIZE, MAX_METADATA_BLOCKS)
    finally:
        os.close(fd)
    dry = _Pass(bm, plan, BlockWriter(None))
    dry.run(nr_meta)
    need = dry.layout.total
    del dry                             # (its tables, before the real pass builds its own)
    if need > nr_meta:
        raise UsageError(f"the output is too small: the repaired metadata needs "
                         f"{need} blocks ({need * 4} KiB) but the output "
                         f"holds {nr_meta}; use a bigger metadata file or device")
    with MetadataOutput(p) as target:
        target.begin()
        w = BlockWriter(target.fd)
        real = _Pass(bm, plan, w)
        data_sm, meta_sm, top, det = real.run(nr_meta)
        w.flush()
        sb = Superblock(flags=0, version=2, time=plan.time, trans_id=plan.transaction_id,
                        data_sm_root=pack_sm_root(data_sm), metadata_sm_root=pack_sm_root(meta_sm),
                        data_mapping_root=top, device_details_root=det,
                        data_block_size=plan.data_block_size, metadata_nr_blocks=nr_meta)
        target.finish(sb)
    return real.layout.dropped
