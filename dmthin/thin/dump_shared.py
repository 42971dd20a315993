"""thin_dump 1.x's XML: runs of leaves shared by several devices (after
snapshots) written once as ``<def name="BLOCK">`` and referred to with
``<ref name="BLOCK"/>``; ``flags`` only when needs_check is set.

Each device's mapping leaves are listed in key order (only internal nodes
are read for that); 1.x's ``Gatherer`` then cuts the lists into runs: a
leaf starts a run where it begins a list, follows different leaves in
different lists, or follows a leaf that ends a run; runs appearing more
than once (or starting at a shared point) become defs, named by their first
leaf's block.  Devices then list their own runs' mappings and refs to defs.
Mappings are grouped across the leaves of a run as in 0.9.0.  Output is
byte-identical to thin_dump 1.1.0.
"""
from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any, TextIO

from ..errors import BTreeError, MetadataError
from ..pdata.block import BlockManager
from ..pdata.btree.node import HEADER_SIZE, INTERNAL_NODE, WALK_MAX_DEPTH, check_header
from ..pdata.checksum import BTREE_NODE
from .ir import RunBuilder, Superblock, to_map
from .leaves import top_level
from .reader import read_details, select_superblock
from .xml import XmlWriter

Entry = tuple[bool, int]              # (is a ref, leaf block or def name)


class XmlWriter1(XmlWriter):
    """thin_dump 1.x's XML: as 0.9.0's but ``flags`` only when set and no
    newline after the last line."""

    def superblock_b(self, sb: Superblock) -> None:
        flags = f' flags="{sb.flags}"' if sb.flags else ""
        version = 2 if sb.version is None else sb.version
        snap = "" if sb.metadata_snap is None else f' metadata_snap="{sb.metadata_snap}"'
        self.write(f'{self._ind}<superblock uuid="{sb.uuid}" time="{sb.time}" '
                   f'transaction="{sb.transaction}"{flags} version="{version}" '
                   f'data_block_size="{sb.data_block_sectors}" '
                   f'nr_data_blocks="{sb.nr_data_blocks}"{snap}>\n')
        self._push()

    def superblock_e(self) -> None:
        self._pop()
        self.write(f"{self._ind}</superblock>")        # 1.x ends without a newline


def mapping_leaves(bm: BlockManager, root: int) -> list[int]:
    """The leaf blocks of a mapping tree in key order, reading only the
    internal nodes (all leaves are at one depth).  Raises
    :class:`~dmthin.errors.BTreeError`."""
    level = [root]
    for _ in range(WALK_MAX_DEPTH + 1):
        children: list[int] = []
        for b in level:
            buf = bm.read(b, BTREE_NODE)
            flags, nr, mx, _vs = check_header(buf, b)
            if not flags & INTERNAL_NODE:
                return level        # all leaves are at this depth (checked when emitted)
            children.extend(struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE + 8 * mx))
        level = children
    raise BTreeError(f"mapping tree under {root} is deeper than {WALK_MAX_DEPTH} levels", root)


class Gatherer:
    """thin-provisioning-tools 1.x's ``runs::Gatherer``."""

    def __init__(self) -> None:
        self.prev: int | None = None
        self.heads: set[int] = set()
        self.tails: set[int] = set()
        self.entries: dict[int, set[int]] = {}
        self.back: dict[int, int] = {}
        self.shared: set[int] = set()

    def _mark_head(self, b: int) -> None:
        if b in self.heads:
            self.shared.add(b)
        self.heads.add(b)

    def new_seq(self) -> None:
        if self.prev is not None:
            self.tails.add(self.prev)
        self.prev = None

    def next(self, b: int) -> None:
        prev = self.prev
        if prev is not None:
            neighbours = self.entries[prev]
            if b in neighbours:
                self.shared.add(b)
            neighbours.add(b)
            back = self.back.get(b)
            if back is None:
                self.back[b] = prev
            elif back != prev:
                self._mark_head(b)
        else:
            self._mark_head(b)
        self.entries.setdefault(b, set())
        self.prev = b

    def gather(self) -> list[tuple[list[int], bool]]:
        self.new_seq()
        tails = set()
        for b, ns in self.entries.items():
            if len(ns) != 1:
                tails.add(b)
            if ns and min(ns) in self.heads:
                tails.add(b)
        self.tails |= tails
        for t in sorted(self.tails):
            for n in sorted(self.entries.get(t, ())):
                self._mark_head(n)
        out = []
        for b in sorted(self.heads):
            run = [b]
            while b not in self.tails:
                b = min(self.entries[b])
                run.append(b)
            out.append((run, run[0] in self.shared))
        return out


def optimise(lists: dict[int, list[int]]) -> tuple[dict[int, list[int]], dict[int, list[Entry]]]:
    """1.x's ``optimise_metadata``: ``(defs, devices)`` -- the shared runs by
    name, and each device's entries (own leaves, refs to defs)."""
    g = Gatherer()
    for leaves in lists.values():
        g.new_seq()
        for b in leaves:
            g.next(b)
    runs = {run[0]: (run, shared) for run, shared in g.gather()}
    devices: dict[int, list[Entry]] = {}
    for dev, leaves in lists.items():
        entries: list[Entry] = []
        i = 0
        while i < len(leaves):
            b = leaves[i]
            got = runs.get(b)
            if got is None:
                entries.append((False, b))
                i += 1
                continue
            run, shared = got
            if shared:
                entries.append((True, b))
            else:
                entries.extend((False, x) for x in run)
            i += len(run)
        devices[dev] = entries
    defs = {head: run for head, (run, shared) in sorted(runs.items()) if shared}
    return defs, devices


def _emit_leaves(bm: BlockManager, visitor: Any, leaves: Iterable[int]) -> None:
    runs = RunBuilder()
    for b in leaves:
        buf = bm.read(b, BTREE_NODE)
        flags, nr, mx, vs = check_header(buf, b)
        if flags & INTERNAL_NODE or vs != 8:
            raise BTreeError(f"mapping tree node {b} is not a leaf of block_time values "
                             "(leaves at different depths?)", b)
        keys = struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE)
        values = struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE + 8 * mx)
        for r in runs.add_leaf(keys, values):
            visitor.map(to_map(r))
    for r in runs.finish():
        visitor.map(to_map(r))


def dump_shared(bm: BlockManager, visitor: Any, *, metadata_snap: bool | int | None = None,
                dev_ids: Iterable[int] | None = None, skip_mappings: bool = False) -> None:
    """Emit 1.x's IR (defs and refs) of the metadata behind *bm*.  Raises
    :class:`~dmthin.errors.MetadataError` and ``OSError``."""
    sb = select_superblock(bm, metadata_snap)
    details = read_details(bm, sb.device_details_root)
    wanted = None if dev_ids is None else set(dev_ids)
    roots = {dev: root for dev, root in top_level(bm, sb.data_mapping_root)
             if wanted is None or dev in wanted}
    lists = {} if skip_mappings else {dev: mapping_leaves(bm, r) for dev, r in roots.items()}
    defs, devices = optimise(lists)
    visitor.superblock_b(Superblock(
        uuid="", time=sb.time, transaction=sb.trans_id, flags=1 if sb.needs_check else None,
        version=sb.version, data_block_sectors=sb.data_block_size,
        nr_data_blocks=sb.data_sm.nr_blocks, metadata_snap=None))
    for name, run in defs.items():
        visitor.def_shared_b(str(name))
        _emit_leaves(bm, visitor, run)
        visitor.def_shared_e()
    for dev in sorted(roots):
        d = details.get(dev)
        if d is None:
            raise MetadataError(f"mappings present for device {dev}, but it is not in the "
                                "device details tree (run check)")
        visitor.device_b(d)
        group: list[int] = []
        for is_ref, b in devices.get(dev, []):
            if is_ref:
                if group:
                    _emit_leaves(bm, visitor, group)
                    group = []
                visitor.ref_shared(str(b))
            else:
                group.append(b)
        if group:
            _emit_leaves(bm, visitor, group)
        visitor.device_e()
    visitor.superblock_e()
    visitor.eof()


def write_xml1(bm: BlockManager, out: TextIO, **kw: Any) -> None:
    """:func:`dump_shared` as 1.x XML to *out*."""
    dump_shared(bm, XmlWriter1(out), **kw)
