"""``thin_repair``: rebuild valid metadata from whatever is readable.

:func:`plan_repair` decides what survives (:mod:`dmthin.thin.salvage` walks
the trees from the superblock's roots, tolerating bad nodes, and fills the
holes with orphaned subtrees found by scanning the metadata); the plan is
then written leaf by leaf (:mod:`dmthin.thin.repair_write`: surviving leaves
copied once, trees shared as snapshots shared them), so the output is fresh
metadata, about the input's size, that passes thin_check 0.9.0 and 1.1.0:
every device whose subtree root (or some of its leaves) survives is kept,
with the mappings of its readable leaves.  The input is only read.

A device whose top-level entry is lost gets back an orphaned mapping tree
holding exactly its ``mapped_blocks`` when only one such tree is left; one
whose details are lost gets details rebuilt from the superblock's time and
transaction id.  Superblock fields come from the input's superblock when it
is valid, from its fields when only its checksum is wrong ("hints"), else
from what the trees show (the newest time seen, a transaction id one past
the newest seen, the data size one past the highest mapped block);
``--transaction-id``, ``--data-block-size`` and ``--nr-data-blocks`` override
them.  The data block size cannot be guessed: without a readable superblock
it must be given.  The output's needs_check flag is clear (as thin_repair
1.x; 0.9.0 copies it) and it holds no metadata snapshot.
"""
from __future__ import annotations

import collections
import os
from collections.abc import Callable
from typing import Any, NamedTuple

from ..errors import MetadataError, UsageError
from ..pdata.block import BlockManager
from ..pdata.checksum import BLOCK_SIZE, SUPERBLOCK
from ..units import (
    DATA_BLOCK_SIZE_MAX_SECTORS,
    DATA_BLOCK_SIZE_MIN_SECTORS,
    MAX_DEV_ID,
    is_valid_data_block_sectors,
)
from .format import (
    MAX_DATA_BLOCK,
    THIN_SUPERBLOCK_MAGIC,
    TIME_BITS,
    TIME_MASK,
    DeviceDetails,
    superblock_magic,
)
from .format import Superblock as DiskSuperblock
from .ir import Device, RunBuilder, Superblock, to_map
from .reader import open_block_manager
from .repair_write import write_repaired
from .salvage import DETAILS, EMPTY, MAPPING, TOP, Loss, Salvager, Tree

Leaf = tuple[int, int, int]               # block, low key, high key


class Overrides(NamedTuple):
    """thin_repair's ``--transaction-id``, ``--data-block-size`` (sectors)
    and ``--nr-data-blocks``."""
    transaction_id: int | None = None
    data_block_size: int | None = None
    nr_data_blocks: int | None = None


class DevPlan:
    """One device to write: its ``details`` and its ``leaves`` in key order."""

    def __init__(self, details: DeviceDetails, leaves: list[Leaf]):
        self.details = details
        self.leaves = leaves


class Plan(NamedTuple):
    """What :func:`repair` writes, and one line per thing lost or guessed."""
    time: int
    transaction_id: int
    data_block_size: int
    nr_data_blocks: int
    devices: dict[int, DevPlan]
    report: list[str]


def read_superblock_hints(bm: BlockManager) -> tuple[DiskSuperblock | None, bool, str | None]:
    """``(superblock, valid, note)``: a valid superblock, or one whose
    magic is right but checksum or blocknr is not (its fields are hints), or
    None."""
    buf = os.pread(bm.fd, BLOCK_SIZE, 0)
    if len(buf) < BLOCK_SIZE or superblock_magic(buf) != THIN_SUPERBLOCK_MAGIC:
        return None, False, ("the superblock is unreadable (no thin superblock magic in "
                             "block 0)")
    sb = DiskSuperblock.unpack(buf)
    try:
        SUPERBLOCK.check(buf, 0)
    except MetadataError as e:
        return sb, False, f"the superblock is damaged ({e}): its fields are used as hints"
    return sb, True, None


class _Planner:
    """Collects the devices (top-level entries, details, leaves) and losses."""

    def __init__(self, bm: BlockManager, overrides: Overrides):
        self.bm = bm
        self.ov = overrides
        self.sv = Salvager(bm)
        self.report: list[str] = []
        self.top: dict[int, int] = {}                  # dev_id -> subtree root
        self.details: dict[int, DeviceDetails] = {}
        self.subtrees: dict[int, Tree] = {}
        self.losses: list[Loss] = []
        self.patched: set[int] = set()                 # devices given orphaned leaves
        self.used: set[int] = set()                    # orphans put back
        self.root_refs: dict[int, int] = {}            # roots named by superblocks
        self._orphans: dict[str, list[tuple[int, int, int]]] | None = None

    # -- the trees ------------------------------------------------------------------------
    def _take_top(self, tree: Tree) -> None:
        self.losses.extend(tree.losses)
        for b, lo, hi in tree.leaves:
            keys, roots = self.sv.leaf_u64(b)
            for k, r in zip(keys, roots, strict=True):
                if lo <= k < hi and k not in self.top:
                    if k > MAX_DEV_ID:
                        self.report.append(f"device id {k} is above the kernel's maximum: "
                                           "dropped")
                        continue
                    self.top[k] = r

    def _take_details(self, tree: Tree) -> None:
        self.losses.extend(tree.losses)
        for b, lo, hi in tree.leaves:
            keys, values = self.sv.leaf_details(b)
            for k, v in zip(keys, values, strict=True):
                if lo <= k < hi and k not in self.details:
                    self.details[k] = v

    def _walk_subtrees(self) -> None:
        for dev_id, root in sorted(self.top.items()):
            if dev_id not in self.subtrees:
                tree = self.sv.walk(root, MAPPING, dev_id=dev_id)
                self.subtrees[dev_id] = Tree(list(tree.leaves), list(tree.losses))
                self.losses.extend(tree.losses)

    def _refer(self, sb: DiskSuperblock) -> None:
        for root in (sb.data_mapping_root, sb.device_details_root):
            self.root_refs[root] = self.root_refs.get(root, 0) + 1

    # -- holes --------------------------------------------------------------------------
    @property
    def orphans(self) -> dict[str, list[tuple[int, int, int]]]:
        if self._orphans is None:
            self._orphans = self.sv.orphans(self.root_refs)
        return self._orphans

    def _fill(self, kinds: tuple[str, ...]) -> None:
        """Give each loss of *kinds* the orphan subtrees that fit it."""
        losses = [x for x in self.losses if x.tree in kinds and not x.done]
        if not losses:
            return
        for kind in kinds:
            for b, first, last in self.orphans.get(kind, ()):
                if b in self.used:
                    continue
                fits = [x for x in losses
                        if x.tree == kind and x.low <= first and last < x.high]
                blocks = {x.block for x in fits}
                if len(blocks) > 1:
                    self.report.append(f"orphaned {kind} node {b} (keys {first}..{last}) fits "
                                       f"several lost nodes {sorted(blocks)}: not used")
                    continue
                for x in fits:
                    self._attach(x, b)
                if fits:
                    self.used.add(b)
        for x in losses:
            x.done = True

    def _attach(self, loss: Loss, b: int) -> None:
        tree = self.sv.walk(b, loss.tree, loss.low, loss.high, dev_id=loss.dev_id)
        loss.found += 1
        if loss.tree == TOP:
            self._take_top(tree)
        elif loss.tree == DETAILS:
            self._take_details(tree)
        elif loss.dev_id is not None:
            sub = self.subtrees[loss.dev_id]
            self.patched.add(loss.dev_id)
            sub.leaves.extend(tree.leaves)
            sub.losses.extend(tree.losses)
            self.losses.extend(tree.losses)

    def _match_by_count(self) -> None:
        """Devices with details but no top-level entry: an unused orphaned
        mapping subtree with exactly their mapped_blocks is theirs."""
        missing = [d for d in self.details if d not in self.top]
        if not missing:
            return
        used = set(self.top.values()) | self.used
        by_count: dict[int, list[int]] = collections.defaultdict(list)
        for b, _first, _last in self.orphans.get(MAPPING, ()):
            if b not in used:
                by_count[self._count(self.sv.walk(b, MAPPING, mark=False))].append(b)
        for dev_id in missing:
            want = self.details[dev_id].mapped_blocks
            cands = by_count.get(want, [])
            if len(cands) == 1:
                self.top[dev_id] = cands[0]
                self.used.add(cands[0])
                self.report.append(f"device {dev_id}: mapping tree {cands[0]} found by its "
                                   f"mapping count ({want})")
            elif cands:
                self.report.append(f"device {dev_id}: {len(cands)} orphaned mapping trees "
                                   f"have its mapping count ({want}): cannot tell which is its")

    def _count(self, tree: Tree) -> int:
        n = 0
        for b, lo, hi in tree.leaves:
            keys, _values = self.sv.leaf_u64(b)
            n += sum(1 for k in keys if lo <= k < hi)
        return n

    # -- without a superblock -----------------------------------------------------------------
    def _choose_roots(self) -> tuple[int | None, int | None]:
        """The newest unreferenced top-level tree and a details tree with
        its devices (thin-provisioning-tools 1.x's choice)."""
        best: int | None = None
        best_key: tuple[tuple[int, int], ...] | None = None
        for b, _f, _l in self.orphans.get(TOP, []):
            key = self._age_key(b)
            if best_key is None or key > best_key:
                best, best_key = b, key
        devs: set[int] = set()
        if best is not None:
            for leaf, lo, hi in self.sv.walk(best, TOP, mark=False).leaves:
                devs.update(k for k in self.sv.leaf_u64(leaf)[0] if lo <= k < hi)
        det: int | None = None
        det_key: tuple[bool, int, int] | None = None
        for b, _f, _l in self.orphans.get(DETAILS, []):
            ids, tid = set(), 0
            for leaf, lo, hi in self.sv.walk(b, DETAILS, mark=False).leaves:
                keys, values = self.sv.leaf_details(leaf)
                for k, v in zip(keys, values, strict=True):
                    if lo <= k < hi:
                        ids.add(k)
                        tid = max(tid, v.transaction_id)
            dkey = (ids == devs, len(ids & devs), tid)
            if det_key is None or dkey > det_key:
                det, det_key = b, dkey
        return best, det

    def _age_key(self, top_root: int) -> tuple[tuple[int, int], ...]:
        """Mapping times of a top-level tree, newest first, with counts."""
        times: collections.Counter[int] = collections.Counter()
        for leaf, lo, hi in self.sv.walk(top_root, TOP, mark=False).leaves:
            keys, roots = self.sv.leaf_u64(leaf)
            for k, r in zip(keys, roots, strict=True):
                if lo <= k < hi:
                    for b, blo, bhi in self.sv.walk(r, MAPPING, mark=False).leaves:
                        ks, vs = self.sv.leaf_u64(b)
                        times.update(v & TIME_MASK for k2, v in zip(ks, vs, strict=True)
                                     if blo <= k2 < bhi)
        return tuple(sorted(times.items(), reverse=True))

    def _plausible_roots(self, sb: DiskSuperblock) -> bool:
        """A damaged superblock's roots are used if both are valid nodes of
        their kind."""
        for root, kind in ((sb.data_mapping_root, TOP), (sb.device_details_root, DETAILS)):
            if isinstance(self.sv.node(root), str) or self.sv.kind(root) not in (kind, EMPTY):
                return False
        self.report.append("the damaged superblock's tree roots are valid: used")
        return True

    def _mark_snapshot(self, held: int) -> None:
        try:
            buf = self.bm.read(held, SUPERBLOCK)
        except (MetadataError, OSError):
            return
        snap = DiskSuperblock.unpack(buf)
        self._refer(snap)
        self.sv.mark_all(snap.data_mapping_root, TOP)
        self.sv.mark_all(snap.device_details_root, DETAILS)

    # -- the plan ------------------------------------------------------------------------------
    def plan(self) -> Plan:
        sb, valid, note = read_superblock_hints(self.bm)
        if note:
            self.report.append(note)
        if sb is not None and (valid or self._plausible_roots(sb)):
            self._take_top(self.sv.walk(sb.data_mapping_root, TOP))
            self._take_details(self.sv.walk(sb.device_details_root, DETAILS))
            self._walk_subtrees()
            if self.losses:
                self._refer(sb)
                msm = sb.metadata_sm
                self.sv.read_counts(msm.bitmap_root, msm.ref_count_root, msm.nr_blocks)
                self.report.extend(self.sv.notes)
                if sb.held_root:
                    self._mark_snapshot(sb.held_root)
        else:
            top_root, det_root = self._choose_roots()
            if top_root is None and det_root is None:
                raise MetadataError("nothing to repair: no superblock and no thin device "
                                    "trees found in the metadata")
            if top_root is not None:
                self._take_top(self.sv.walk(top_root, TOP))
            if det_root is not None:
                self._take_details(self.sv.walk(det_root, DETAILS))
            self._walk_subtrees()
        if self.losses:
            self._fill((TOP, DETAILS))
            self._walk_subtrees()
            self._fill((MAPPING,))
            self._match_by_count()
            self._walk_subtrees()
            self._fill((MAPPING,))
        return self._finish(sb, valid)

    def _devices(self) -> tuple[dict[int, DevPlan], list[int], int, int]:
        """The devices kept, those needing details, newest time and transaction seen."""
        devices: dict[int, DevPlan] = {}
        rebuilt: list[int] = []
        time = tid = 0
        for dev_id in sorted(self.top):
            det = self.details.get(dev_id)
            sub = self.subtrees.get(dev_id)
            if sub is None or (not sub.leaves and sub.losses):
                self.report.append(f"device {dev_id}: no mapping survives: dropped")
                continue
            if det is None:
                self.report.append(f"device {dev_id}: details lost: rebuilt")
                rebuilt.append(dev_id)
                det = DeviceDetails(0, 0, 0, 0)
            else:
                time = max(time, det.creation_time, det.snapshotted_time)
                tid = max(tid, det.transaction_id)
            if dev_id in self.patched:
                sub.leaves.sort(key=self._leaf_start)
            devices[dev_id] = DevPlan(det, sub.leaves)
        for dev_id in sorted(set(self.details) - set(self.top)):
            self.report.append(f"device {dev_id}: its mapping tree is lost: dropped")
        return devices, rebuilt, time, tid

    def _finish(self, sb: DiskSuperblock | None, valid: bool) -> Plan:
        ov = self.ov
        for x in self.losses:
            tail = f"; {x.found} orphaned subtree(s) put back" if x.found else ""
            self.report.append(x.describe() + tail)
        devices, rebuilt, time, tid = self._devices()
        if sb is not None and valid:
            time, tid = sb.time, sb.trans_id
        elif sb is not None:
            # Hints: the damaged superblock's values unless the trees show
            # they cannot be right (a device newer than them).
            time = max(time, sb.time)
            tid = sb.trans_id if sb.trans_id >= tid else tid + 1
        else:
            tid += 1
        dbs = ov.data_block_size
        if dbs is None and sb is not None and is_valid_data_block_sectors(sb.data_block_size):
            dbs = sb.data_block_size
        if dbs is None:
            raise UsageError("the superblock is unreadable and the data block size cannot be "
                             "guessed: give --data-block-size (sectors)")
        if not is_valid_data_block_sectors(dbs):
            raise UsageError(f"--data-block-size {dbs} is not a multiple of 128 sectors "
                             f"between {DATA_BLOCK_SIZE_MIN_SECTORS} and "
                             f"{DATA_BLOCK_SIZE_MAX_SECTORS}")
        nr_data = ov.nr_data_blocks
        if nr_data is None and sb is not None and sb.data_sm.nr_blocks <= MAX_DATA_BLOCK + 1:
            nr_data = sb.data_sm.nr_blocks
        for dev_id in rebuilt:
            devices[dev_id].details = DeviceDetails(0, max(tid - 1, 0), time, time)
        if ov.transaction_id is not None:
            tid = ov.transaction_id
        if nr_data is None:
            nr_data = _highest_data_block(self.sv, devices) + 1
        return Plan(time, tid, dbs, nr_data, devices, self.report)

    def _leaf_start(self, leaf: Leaf) -> tuple[int, int]:
        n = self.sv.node(leaf[0])
        return (leaf[1] if isinstance(n, str) else max(leaf[1], n.first), leaf[0])


def _highest_data_block(sv: Salvager, devices: dict[int, DevPlan]) -> int:
    top = -1
    for d in devices.values():
        for b, lo, hi in d.leaves:
            keys, values = sv.leaf_u64(b)
            for k, v in zip(keys, values, strict=True):
                if lo <= k < hi:
                    top = max(top, v >> TIME_BITS)
    return top


def plan_repair(bm: BlockManager, overrides: Overrides | None = None) -> Plan:
    """What survives in the metadata behind block manager *bm*.  Raises
    :class:`~dmthin.errors.MetadataError` when nothing can be recovered,
    :class:`UsageError` when the data block size is unknown."""
    return _Planner(bm, overrides or Overrides()).plan()


def emit_plan(bm: BlockManager, plan: Plan, visitor: Any) -> int:
    """Drive *visitor* (IR events, see :mod:`dmthin.thin.ir`) with the
    plan's metadata; return the number of mappings dropped for pointing
    beyond the data device or repeating a key."""
    sv = Salvager(bm)
    limit = plan.nr_data_blocks << TIME_BITS
    visitor.superblock_b(Superblock(
        uuid="", time=plan.time, transaction=plan.transaction_id, flags=0, version=2,
        data_block_sectors=plan.data_block_size, nr_data_blocks=plan.nr_data_blocks))
    emit = _emitter(visitor)
    dropped = 0
    for dev_id, d in plan.devices.items():
        det = d.details
        visitor.device_b(Device(dev_id, det.mapped_blocks, det.transaction_id,
                                det.creation_time, det.snapshotted_time))
        runs = RunBuilder()
        last = -1
        for b, lo, hi in d.leaves:
            keys, values = sv.leaf_u64(b)
            if (keys and keys[0] > last and keys[0] >= lo and keys[-1] < hi
                    and max(values) < limit):
                emit(runs.add_leaf(keys, values))
                last = keys[-1]
                continue
            ks, vs = [], []
            for k, v in zip(keys, values, strict=True):
                if k > last and lo <= k < hi and v < limit:
                    ks.append(k)
                    vs.append(v)
                    last = k
                else:
                    dropped += 1
            emit(runs.add_leaf(ks, vs))
        emit(runs.finish())
        visitor.device_e()
    visitor.superblock_e()
    visitor.eof()
    return dropped


def _emitter(visitor: Any) -> Callable[[list[tuple[int, int, int]]], None]:
    """A function sending raw runs to *visitor* (its ``map_raw`` fast path
    when it has one)."""
    map_raw = getattr(visitor, "map_raw", None)
    if map_raw is None:
        def emit(runs: list[tuple[int, int, int]]) -> None:
            for run in runs:
                visitor.map(to_map(run))
        return emit

    def emit_raw(runs: list[tuple[int, int, int]]) -> None:
        for t, v, n in runs:
            map_raw(t, v >> TIME_BITS, v & TIME_MASK, n)
    return emit_raw


def repair(input_path: str | os.PathLike[str], output_path: str | os.PathLike[str],
           overrides: Overrides | None = None) -> Plan:
    """Rebuild the metadata of *input_path* into the existing
    *output_path* (a file or block device, as thin_restore's output).
    Returns the plan (its ``report`` says what was lost).  Nothing is
    written unless the rebuilt metadata is complete and fits.  Raises
    :class:`UsageError` (same file, unknown data block size, output too
    small or missing), :class:`~dmthin.errors.MetadataError` (nothing
    recoverable) and ``OSError``."""
    try:
        same = os.path.samefile(input_path, output_path)
    except FileNotFoundError:
        same = False
    if same:
        raise UsageError("the input and the output are the same: repair writes new metadata "
                         "to another file or device")
    bm = open_block_manager(input_path)
    try:
        head = os.pread(bm.fd, BLOCK_SIZE, 0)
        if (len(head) == BLOCK_SIZE and superblock_magic(head) != THIN_SUPERBLOCK_MAGIC
                and head.lstrip().startswith(b"<")):
            raise UsageError("this looks like XML, not thin-pool metadata: use 'dmthin "
                             "restore' for XML")
        plan = plan_repair(bm, overrides)
        dropped = write_repaired(bm, plan, output_path)
        if dropped:
            plan.report.append(f"{dropped} mappings dropped (beyond the data device or out "
                               "of order)")
    finally:
        bm.close()
    return plan
