"""Finding what survives in damaged thin metadata (the reading half of repair).

:class:`Salvager` walks the pool's three kinds of btree -- the top-level
mapping tree (dev_id -> subtree root), each device's mapping subtree
(vblock -> block_time) and the device-details tree -- without stopping at a
bad node: every node that fails validation (checksum, blocknr, shape, value
size, key order, depth) becomes a :class:`Loss`, the key range its parent
gave it, and the walk goes on.  Leaves are kept as ``(block, low, high)``:
the block and the key range its path allows.

When something is lost, or the superblock gives no roots, the whole
metadata is scanned for btree nodes (as thin-provisioning-tools 1.x's repair
does).  Valid nodes that no walk reached are *orphans*; when the metadata
space map is readable only allocated ones count, so stale copies of freed
nodes are ignored.  Orphans are classified by value size and contents
(details leaves hold 24-byte values; top-level leaves hold block numbers of
mapping subtrees; other 8-byte leaves hold mappings; an internal node has
its children's kind).  An orphan subtree whose key range fits a loss of the
same kind fills it -- those are the children of the node that was lost --
unless it fits losses of several different lost nodes (ambiguous: reported,
not used).  Without a superblock the newest unreferenced top-level tree
(1.x's order: latest mapping times, then most mappings at that time) and a
details tree with the same devices are taken as the roots.
"""
from __future__ import annotations

import os
import struct
from typing import NamedTuple

from ..errors import MetadataError
from ..pdata.block import BlockManager
from ..pdata.btree.node import HEADER_SIZE, INTERNAL_NODE, LEAF_NODE, calc_max_entries
from ..pdata.btree.walk import iter_leaves
from ..pdata.checksum import BITMAP, BLOCK_SIZE, BTREE_CSUM_XOR, BTREE_NODE, INDEX, block_checksum
from ..pdata.space_map.format import (
    ENTRIES_PER_BITMAP,
    REF_COUNT,
    IndexEntry,
    decode_bitmap_counts,
    metadata_index_entry_offset,
)
from ..units import MAX_METADATA_BITMAPS, MAX_METADATA_BLOCKS
from .format import DeviceDetails

TOP, MAPPING, DETAILS, OTHER, EMPTY = "top-level", "mapping", "details", "other", "empty"
KEY_END = 1 << 64
MAX_DEPTH = 16
_HDR = struct.Struct("<IIQIIII")        # csum flags blocknr nr max value_size pad
Buffer = bytes | bytearray | memoryview
_CHUNK = 256                            # blocks per read while scanning


class Node(NamedTuple):
    """What a walk needs of a valid node (leaf values are re-read later)."""
    leaf: bool
    value_size: int
    keys: tuple[int, ...]              # internal nodes and top-level candidates; else ()
    first: int                         # first key, -1 if empty
    last: int                          # last key, -1 if empty
    nr: int                            # number of entries
    children: tuple[int, ...]          # internal: child blocks; small 8-byte leaf: values
    small: bool                        # 8-byte leaf whose values could be block numbers


class Loss:
    """A node that could not be used: the keys ``[low, high)`` of *tree*
    (of device *dev_id* for mapping trees) that it held; ``found``: orphaned
    subtrees put back, ``done``: orphans were looked for."""

    def __init__(self, tree: str, block: int, low: int, high: int, reason: str,
                 dev_id: int | None = None):
        self.tree = tree
        self.block = block
        self.low = low
        self.high = high
        self.reason = reason
        self.dev_id = dev_id
        self.found = 0
        self.done = False

    def describe(self) -> str:
        hi = "end" if self.high >= KEY_END else str(self.high - 1)
        what = "virtual blocks" if self.tree == MAPPING else "device ids"
        owner = f"device {self.dev_id} " if self.dev_id is not None else ""
        return f"{owner}{self.tree} tree: {what} {self.low}..{hi} lost ({self.reason})"


class Tree:
    """A walked tree: its leaves ``(block, low, high)`` in key order, what
    was lost, and every valid node walked."""

    def __init__(self, leaves: list[tuple[int, int, int]] | None = None,
                 losses: list[Loss] | None = None, nodes: list[int] | None = None):
        self.leaves: list[tuple[int, int, int]] = [] if leaves is None else leaves
        self.losses: list[Loss] = [] if losses is None else losses
        self.nodes: list[int] = [] if nodes is None else nodes


def decode_node(buf: Buffer, b: int, nr_blocks: int) -> Node | str:
    """A validated node of block *b*, or the reason it is not one."""
    try:
        BTREE_NODE.check(buf, b)
    except MetadataError as e:
        return str(e)
    _csum, flags, _nr, nr, mx, vs, _pad = _HDR.unpack_from(buf, 0)
    if flags not in (INTERNAL_NODE, LEAF_NODE):
        return f"btree node {b} has flags {flags}"
    if vs == 0 or vs > BLOCK_SIZE or mx != calc_max_entries(vs) or nr > mx:
        return f"btree node {b} has a bad shape (entries {nr}/{mx}, value size {vs})"
    leaf = flags == LEAF_NODE
    if not leaf and vs != 8:
        return f"internal btree node {b} has value size {vs}"
    keys = struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE)
    for i in range(1, nr):
        if keys[i] <= keys[i - 1]:
            return f"btree node {b} has keys out of order"
    first, last = (keys[0], keys[-1]) if nr else (-1, -1)
    if vs != 8:
        return Node(leaf, vs, (), first, last, nr, (), False)
    values = struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE + 8 * mx)
    if not leaf:
        return Node(False, 8, keys, first, last, nr, values, False)
    small = all(0 < v < nr_blocks for v in values)
    if small:
        return Node(True, 8, keys, first, last, nr, values, True)
    return Node(True, 8, (), first, last, nr, (), False)


class Salvager:
    """Walks and scans the metadata behind block manager *bm* (read-only)."""

    def __init__(self, bm: BlockManager, nr_blocks: int | None = None):
        self.bm = bm
        self.nr_blocks = min(bm.file_blocks if nr_blocks is None else nr_blocks,
                             bm.file_blocks, MAX_METADATA_BLOCKS)
        self.reached = bytearray(self.nr_blocks)
        self._nodes: dict[int, Node | str] = {}
        self._walked: dict[tuple[int, str, int, int], Tree] = {}
        self.scanned: dict[int, Node] | None = None
        self.counts: bytearray | None = None        # metadata sm counts, 255: unknown
        self.top_leaves: set[int] = set()           # leaves walked as top-level leaves
        self._kinds: dict[int, str] = {}
        self.notes: list[str] = []

    # -- nodes ----------------------------------------------------------------------------
    def node(self, b: int) -> Node | str:
        """The node at *b* or why it is unusable (cached)."""
        got = self._nodes.get(b)
        if got is None:
            if not 0 < b < self.nr_blocks:
                got = f"block {b} is outside the metadata ({self.nr_blocks} blocks)"
            else:
                try:
                    got = decode_node(self.bm.read(b, None), b, self.nr_blocks)
                except (MetadataError, OSError) as e:
                    got = f"block {b} cannot be read: {e}"
            if isinstance(got, str) or not got.leaf or got.small:
                self._nodes[b] = got        # leaves are many: not cached
        return got

    def _leaf(self, b: int) -> tuple[Buffer, int, int, int]:
        buf = self.bm.read(b, BTREE_NODE)
        _c, _f, _n, nr, mx, vs, _p = _HDR.unpack_from(buf, 0)
        return buf, nr, mx, vs

    def leaf_u64(self, b: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Keys and values of the 8-byte leaf at *b* (valid when walked)."""
        buf, nr, mx, _vs = self._leaf(b)
        return (struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE),
                struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE + 8 * mx))

    def leaf_details(self, b: int) -> tuple[tuple[int, ...], list[DeviceDetails]]:
        """Keys and device details of the details leaf at *b*."""
        buf, nr, mx, vs = self._leaf(b)
        off = HEADER_SIZE + 8 * mx
        return (struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE),
                [DeviceDetails.unpack(buf[off + i * vs:off + (i + 1) * vs]) for i in range(nr)])

    # -- walking ---------------------------------------------------------------------------
    def walk(self, root: int, kind: str, low: int = 0, high: int = KEY_END,
             dev_id: int | None = None, mark: bool = True) -> Tree:
        """Walk the tree of *kind* under *root* for keys ``[low, high)``,
        tolerating bad nodes; with *mark*, its nodes count as reached (not
        orphans).  Results are cached per (root, kind, range); the losses
        returned are new objects naming *dev_id*."""
        key = (root, kind, low, high)
        tree = self._walked.get(key)
        if tree is None:
            tree = self._walked[key] = self._walk(root, kind, low, high)
        if mark:
            reached = self.reached
            for b in tree.nodes:
                reached[b] = 1
        return Tree(tree.leaves, [Loss(x.tree, x.block, x.low, x.high, x.reason, dev_id)
                                  for x in tree.losses], tree.nodes)

    def _walk(self, root: int, kind: str, low: int, high: int) -> Tree:
        tree = Tree()
        leaf_vs = 24 if kind == DETAILS else 8
        stack: list[tuple[int, int, int, int]] = [(root, low, high, 0)]
        while stack:
            b, lo, hi, depth = stack.pop()
            n = self.node(b)
            if isinstance(n, str):
                tree.losses.append(Loss(kind, b, lo, hi, n))
                continue
            if depth > MAX_DEPTH:
                tree.losses.append(Loss(kind, b, lo, hi, f"btree deeper than {MAX_DEPTH} "
                                                          "levels (a cycle?)"))
                continue
            if n.leaf and n.value_size != leaf_vs:
                tree.losses.append(Loss(kind, b, lo, hi, f"btree node {b} has value size "
                                                          f"{n.value_size}, not {leaf_vs}"))
                continue
            tree.nodes.append(b)
            if n.leaf and kind == TOP:
                self.top_leaves.add(b)
            if n.leaf:
                if n.first >= 0:
                    tree.leaves.append((b, lo, hi))
                continue
            keys, kids = n.keys, n.children
            for i in range(len(kids) - 1, -1, -1):
                c_lo = max(lo, keys[i]) if i else lo
                c_hi = min(hi, keys[i + 1]) if i + 1 < len(keys) else hi
                if c_lo < c_hi:
                    stack.append((kids[i], c_lo, c_hi, depth + 1))
        return tree

    def mark_all(self, root: int, kind: str) -> None:
        """Walk a tree only to mark its nodes reached (the metadata
        snapshot's trees: they are not orphans); top-level trees with their
        mapping subtrees."""
        tree = self.walk(root, kind)
        if kind == TOP:
            for b, lo, hi in tree.leaves:
                keys, roots = self.leaf_u64(b)
                for k, r in zip(keys, roots, strict=True):
                    if lo <= k < hi:
                        self.walk(r, MAPPING)

    # -- reference counts -----------------------------------------------------------------------
    def read_counts(self, bitmap_root: int, ref_count_root: int, nr_blocks: int) -> None:
        """Take the reference counts of the metadata space map (index block
        at *bitmap_root*); parts that cannot be read are unknown (255).
        Without them stale copies of freed nodes cannot be told from live
        ones (a note says so)."""
        counts = bytearray(b"\xff" * self.nr_blocks)
        try:
            buf = self.bm.read(bitmap_root, INDEX)
        except (MetadataError, OSError) as e:
            self.notes.append(f"metadata space map unreadable ({e}): stale btree nodes cannot "
                              "be told from live ones")
            self.counts = counts
            return
        n = min(-(-min(nr_blocks, self.nr_blocks) // ENTRIES_PER_BITMAP), MAX_METADATA_BITMAPS)
        threes = False
        for i in range(n):
            entry = IndexEntry.unpack(buf, metadata_index_entry_offset(i))
            base = i * ENTRIES_PER_BITMAP
            try:
                got = decode_bitmap_counts(self.bm.read(entry.blocknr, BITMAP))
            except (MetadataError, OSError):
                continue
            end = min(base + ENTRIES_PER_BITMAP, self.nr_blocks)
            counts[base:end] = got[:end - base]
            threes = threes or 3 in got[:end - base]
        if threes:
            self._overflow(counts, ref_count_root)
        self.counts = counts

    def _overflow(self, counts: bytearray, root: int) -> None:
        """Exact counts of 3 and more from the ref-count tree (else unknown)."""
        exact: dict[int, int] = {}
        try:
            for _b, keys, values in iter_leaves(self.bm, root):
                for k, v in zip(keys, values, strict=True):
                    exact[k] = REF_COUNT.unpack(v)[0] if isinstance(v, bytes) else int(v)
        except (MetadataError, OSError, struct.error):
            exact = {}
        for b in range(len(counts)):
            if counts[b] == 3:
                counts[b] = min(exact.get(b, 255), 255)

    def _known_refs(self) -> dict[int, int]:
        """References to each node from the valid nodes reached so far."""
        refs: dict[int, int] = {}
        reached = self.reached
        for b, n in self._nodes.items():
            if isinstance(n, str) or not reached[b]:
                continue
            if not n.leaf or b in self.top_leaves:
                for c in n.children:
                    refs[c] = refs.get(c, 0) + 1
        return refs

    # -- scanning ---------------------------------------------------------------------------
    def scan(self) -> dict[int, Node]:
        """Every valid btree node in the metadata, by block (once)."""
        if self.scanned is not None:
            return self.scanned
        found: dict[int, Node] = {}
        fd, nr = self.bm.fd, self.nr_blocks
        salt = BTREE_CSUM_XOR
        for start in range(0, nr, _CHUNK):
            count = min(_CHUNK, nr - start)
            try:
                data = os.pread(fd, count * BLOCK_SIZE, start * BLOCK_SIZE)
            except OSError:
                continue
            mv = memoryview(data)
            for i in range(len(data) // BLOCK_SIZE):
                b = start + i
                buf = mv[i * BLOCK_SIZE:(i + 1) * BLOCK_SIZE]
                if (int.from_bytes(buf[:4], "little") != block_checksum(buf, salt)
                        or b == 0):
                    continue
                n = self._nodes.get(b) or decode_node(buf, b, nr)
                if not isinstance(n, str):
                    found[b] = n
        self.scanned = found
        return found

    def kind(self, b: int, _depth: int = 0) -> str:
        """The tree kind of the valid node *b* (see the module docstring)."""
        got = self._kinds.get(b)
        if got is None:
            got = self._kind(b, _depth)
            if _depth <= MAX_DEPTH:
                self._kinds[b] = got
        return got

    def _kind(self, b: int, depth: int) -> str:
        n: Node | str | None = self.scanned.get(b) if self.scanned is not None else None
        if n is None:
            n = self.node(b)
        if isinstance(n, str) or depth > MAX_DEPTH:
            return OTHER
        if n.leaf:
            if n.value_size == 24:
                return DETAILS
            if n.value_size != 8:
                return OTHER
            if n.first < 0:
                return EMPTY
            if n.small and all(self.kind(c, depth + 1) in (MAPPING, EMPTY)
                               for c in n.children):
                return TOP
            return MAPPING
        kinds = {self.kind(c, depth + 1) for c in n.children} - {OTHER}
        return kinds.pop() if len(kinds) == 1 else OTHER

    def orphans(self, extra_refs: dict[int, int] | None = None
                ) -> dict[str, list[tuple[int, int, int]]]:
        """Top orphan subtrees by kind: ``(block, first key, last key)``.
        With reference counts, an orphan is a node referenced more times
        than the valid nodes reached so far (plus *extra_refs*) reference
        it -- a child of a lost node, even when it is shared with a tree
        still readable; without, a node no walk reached."""
        nodes = self.scan()
        counts = self.counts
        if counts is None:
            cand = [b for b in nodes if not self.reached[b]]
        else:
            refs = self._known_refs()
            for b, extra in (extra_refs or {}).items():
                refs[b] = refs.get(b, 0) + extra
            reached = self.reached
            cand = [b for b in nodes
                    if (counts[b] == 255 and not reached[b])
                    or (counts[b] != 255 and counts[b] > refs.get(b, 0))]
        referenced: set[int] = set()
        for b in cand:
            n = nodes[b]
            if not n.leaf or (n.small and self.kind(b) == TOP):
                referenced.update(n.children)
        out: dict[str, list[tuple[int, int, int]]] = {TOP: [], MAPPING: [], DETAILS: []}
        for b in sorted(cand):
            if b in referenced:
                continue
            k = self.kind(b)
            if k in out:
                out[k].append((b, nodes[b].first, self._last_key(b)))
        return out

    def _last_key(self, b: int) -> int:
        for _ in range(MAX_DEPTH + 1):
            n = self.node(b)
            if isinstance(n, str):
                return -1
            if n.leaf:
                return n.last
            b = n.children[-1]
        return -1
