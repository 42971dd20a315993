"""A validating btree walker for checkers (thin_check's btree_walker).

:class:`BTreeChecker` walks one btree after another over the same metadata,
validating every node it reaches:

* checksum and blocknr (the ``BTREE_NODE`` validator), block inside the
  metadata device;
* node shape: INTERNAL or LEAF flag (exactly one), ``max_entries ==
  calc_max_entries(value_size)`` (so ``% 3 == 0``), ``nr_entries <=
  max_entries``, leaf value_size equal to the tree's value type, internal
  value_size 8;
* keys strictly ascending and inside the key range the parent gives;
* every non-root node at least ``max_entries / 3`` full;
* cycles (a child that is one of its own ancestors) and a depth bound.

It counts references to metadata blocks in a
:class:`~dmthin.pdata.refcounts.RefCounts`: each node is counted once per
parent pointer; a node reached again (a shared subtree after a snapshot) is
counted again but not walked again, as the tools' ``visit_again`` does.
Trees whose nodes must not be shared (the space-map trees) are walked with
``shareable=False``: a second reference is an error.

Problems raise :class:`NodeError` (a :class:`~dmthin.errors.BTreeError`)
carrying the node path (block numbers from the root) and the key range.
"""
from __future__ import annotations

import operator
import struct
from array import array
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ...errors import BlockNrMismatch, BTreeError, ChecksumError, MetadataError
from ..accel import ffi as _ffi
from ..accel import lib as _lib
from ..block import BlockManager
from ..checksum import BTREE_NODE, Buffer
from ..refcounts import RefCounts
from .node import (
    HEADER_SIZE,
    INTERNAL_NODE,
    LEAF_NODE,
    WALK_MAX_DEPTH,
    Value,
    calc_max_entries,
    read_header,
    read_u64_values,
    read_values,
)

_POST = object()

# What went wrong with a node (NodeError.kind).
IO = "io"
CHECKSUM = "checksum"
BLOCKNR = "blocknr"
SHAPE = "shape"
VALUE_SIZE = "value_size"
KEY_ORDER = "key_order"
KEY_RANGE = "key_range"
TOO_FEW = "too_few_entries"
CYCLE = "cycle"
DEPTH = "depth"
SHARED = "shared"
OUT_OF_RANGE = "out_of_range"
FOREIGN = "foreign"


class NodeError(BTreeError):
    """A bad btree node: ``kind`` (one of this module's constants), the
    ``path`` of block numbers from the root to the node and the
    ``key_range`` ``(low, high)`` its keys must lie in (None: unbounded)."""

    def __init__(self, tree: str, kind: str, reason: str, path: tuple[int, ...],
                 key_range: tuple[int | None, int | None]):
        self.tree = tree
        self.kind = kind
        self.reason = reason
        self.path = path
        self.key_range = key_range
        super().__init__(self._text(), path[-1] if path else None)

    def _text(self) -> str:
        lo, hi = self.key_range
        where = "/".join(str(b) for b in self.path)
        rng = ""
        if lo is not None or hi is not None:
            rng = f", keys [{'' if lo is None else lo}..{'' if hi is None else hi})"
        return f"{self.tree}: {self.reason} (path {where}{rng})"


class BTreeChecker:
    """Validate btrees of one metadata device and count their nodes.

    *bm* is a :class:`~dmthin.pdata.block.BlockManager`; *nr_blocks* the
    number of metadata blocks the space map covers (children beyond it are
    errors); *counts* a :class:`RefCounts` of that size (or None).
    """

    def __init__(self, bm: BlockManager, nr_blocks: int, counts: RefCounts | None = None):
        self.bm = bm
        self.nr_blocks = nr_blocks
        self.counts = counts
        # Per block: 0 = not walked yet, else 1 + the walk tag (tree kind).
        self._seen = bytearray(nr_blocks)
        self._tags: dict[str, int] = {}
        self.nodes_walked = 0

    def _tag(self, tree_kind: str) -> int:
        t = self._tags.get(tree_kind)
        if t is None:
            t = self._tags[tree_kind] = len(self._tags) + 1
            if t > 255:
                raise ValueError("too many tree kinds")
        return t

    def seen(self, b: int) -> bool:
        """Has block *b* been walked already?"""
        return 0 <= b < self.nr_blocks and bool(self._seen[b])

    def count(self, b: int, what: str) -> None:
        """Count one reference to a metadata block that is not a btree node
        (superblock, index block, bitmap).  Raises :class:`MetadataError`
        when *b* lies outside the metadata device."""
        if not 0 <= b < self.nr_blocks:
            raise MetadataError(f"{what}: block {b} is beyond the metadata device "
                                f"({self.nr_blocks} blocks)", b)
        if self.counts is not None:
            self.counts.inc(b)

    def walk_u64_counting(self, root: int, *, tree_kind: str, value_counts: RefCounts,
                          shift: int, totals: array[int] | None) -> bool:
        """The accelerator's walk of the tree of 8-byte values at *root*
        (``dm_check_walk``): what :meth:`walk_nodes` does to this checker
        (reference counts, walked tags, *totals*), plus ``value >> shift``
        counted in *value_counts* for each leaf value, in one call.  Returns
        False, having changed nothing, when it cannot: no accelerator, counts
        kept in chunks, a writable block manager (its cache may differ from
        the file), or anything unusual in the tree (a bad node, a value beyond
        *value_counts*, a count about to saturate); the caller then walks
        with :meth:`walk_nodes`, which names the problem."""
        counts = self.counts
        mflat = counts.flat if counts is not None else None
        vflat = value_counts.flat
        if (_lib is None or self.bm.writable or vflat is None
                or (counts is not None and (mflat is None or counts.size != self.nr_blocks))
                or len(self._seen) != self.nr_blocks):
            return False
        tag = self._tag(tree_kind)
        n = _lib.dm_check_walk(
            self.bm.fd, self.nr_blocks, self.bm.file_blocks, _ffi.from_buffer(self._seen), tag,
            _ffi.NULL if mflat is None else _ffi.from_buffer(mflat), _ffi.from_buffer(vflat),
            len(vflat), shift,
            _ffi.NULL if totals is None else _ffi.from_buffer("uint64_t[]", totals), root)
        if n < 0:
            return False
        self.nodes_walked += n
        return True

    def walk(self, root: int, value_size: int, *, tree: str, tree_kind: str | None = None,
             shareable: bool = True, seen_node: Callable[[int], None] | None = None,
             totals: array[int] | None = None,
             ) -> Iterator[tuple[int, tuple[int, ...], Sequence[Value], tuple[int, ...]]]:
        """:meth:`walk_nodes` with each leaf's values decoded: ``(block, keys,
        values, path)``; values are a tuple of ints for 8-byte values, else a
        list of ``bytes``."""
        for b, keys, buf, mx, path in self.walk_nodes(root, value_size, tree=tree,
                                                      tree_kind=tree_kind, shareable=shareable,
                                                      seen_node=seen_node, totals=totals):
            yield b, keys, read_values(buf, len(keys), mx, value_size), path

    def walk_nodes(self, root: int, value_size: int, *, tree: str,
                   tree_kind: str | None = None, shareable: bool = True,
                   seen_node: Callable[[int], None] | None = None,
                   totals: array[int] | None = None,
                   ) -> Iterator[tuple[int, tuple[int, ...], Buffer, int, tuple[int, ...]]]:
        """Walk the btree at *root*, yielding ``(block, keys, contents,
        max_entries, path)`` for each leaf walked (not for leaves reached
        again), in key order.

        *value_size* is the leaf value size of the tree (8, 24, 16, 4).
        *tree* names the tree in error messages; *tree_kind* (default
        *tree*) is the node type: reaching a node already walked as another
        kind is an error.  *seen_node(block)* is called for each node
        reached again (shared).  If *totals* (an ``array('Q')`` indexed by
        block, see :func:`new_totals`) is given, ``totals[b]`` is set to the
        number of leaf entries under each node walked, so the entries under a
        shared subtree are known without walking it again.  Raises
        :class:`NodeError` at the first bad node; the caller decides whether
        to go on with another tree.
        """
        tag = self._tag(tree_kind or tree)
        counts = self.counts
        seen = self._seen
        # Stack of (block, path, lo, hi); lo is _POST for a post-order marker.
        stack: list[tuple[int, tuple[int, ...], Any, Any]] = [
            (root, (root,), None, None)]
        while stack:
            b, path, lo, hi = stack.pop()
            if lo is _POST:
                # Post-order marker (pushed only with totals): every child is done.
                if totals is not None:
                    totals[b] = sum(totals[c] for c in hi)
                continue
            depth = len(path) - 1
            rng = (lo, hi)

            def fail(kind: str, reason: str) -> NodeError:
                return NodeError(tree, kind, reason, path, rng)  # noqa: B023 (called at once)

            if not 0 <= b < self.nr_blocks:
                raise fail(OUT_OF_RANGE, f"btree node {b} is beyond the metadata device "
                                         f"({self.nr_blocks} blocks)")
            if b in path[:-1]:
                raise fail(CYCLE, f"btree node {b} points back to its ancestor {b} (a cycle)")
            if depth > WALK_MAX_DEPTH:
                raise fail(DEPTH, f"btree is deeper than {WALK_MAX_DEPTH} levels (a cycle?)")
            if counts is not None:
                counts.inc(b)
            if seen[b]:
                if seen[b] != tag:
                    raise fail(FOREIGN, f"btree node {b} is also part of another kind of "
                                        "tree")
                if not shareable:
                    raise fail(SHARED, f"btree node {b} is referenced more than once "
                                       "(this tree's nodes must not be shared)")
                if lo is not None or hi is not None:
                    # Not walked again, but it must fit this parent's key
                    # range too (it was validated when first walked).
                    buf = self.bm.read(b, BTREE_NODE)
                    _flags, nr, mx, _vs = read_header(buf)
                    if nr > mx or HEADER_SIZE + 8 * nr > len(buf):
                        # (its first walk failed on this, after tagging it)
                        raise fail(SHAPE, f"btree node {b} has nr_entries {nr} > max_entries "
                                          f"{mx}")
                    if nr:
                        first, = struct.unpack_from("<Q", buf, HEADER_SIZE)
                        last, = struct.unpack_from("<Q", buf, HEADER_SIZE + 8 * (nr - 1))
                        if lo is not None and first < lo:
                            raise fail(KEY_RANGE, f"shared btree node {b}: key {first} is "
                                                  f"below this parent's lower bound {lo}")
                        if hi is not None and last >= hi:
                            raise fail(KEY_RANGE, f"shared btree node {b}: key {last} is not "
                                                  f"below this parent's next key {hi}")
                if seen_node is not None:
                    seen_node(b)
                continue
            seen[b] = tag
            self.nodes_walked += 1
            try:
                buf = self.bm.read(b, BTREE_NODE)
            except ChecksumError as e:
                raise fail(CHECKSUM, str(e)) from e
            except BlockNrMismatch as e:
                raise fail(BLOCKNR, str(e)) from e
            except MetadataError as e:
                raise fail(IO, str(e)) from e
            flags, nr, mx, vs = read_header(buf)
            is_leaf = flags == LEAF_NODE
            if flags not in (INTERNAL_NODE, LEAF_NODE):
                raise fail(SHAPE, f"btree node {b} has bad flags {flags:#x} "
                                  "(neither internal nor leaf)")
            want_vs = value_size if is_leaf else 8
            if vs != want_vs:
                kind = "leaf" if is_leaf else "internal node"
                raise fail(VALUE_SIZE, f"btree {kind} {b} has value_size {vs}, "
                                       f"expected {want_vs}")
            want_max = calc_max_entries(vs)
            if mx != want_max:
                raise fail(SHAPE, f"btree node {b} has max_entries {mx}, expected {want_max}")
            if nr > mx:
                raise fail(SHAPE, f"btree node {b} has nr_entries {nr} > max_entries {mx}")
            if depth > 0 and nr < mx // 3:
                raise fail(TOO_FEW, f"too few entries in btree node {b}: {nr}, "
                                    f"expected at least {mx // 3}")
            keys = struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE)
            if not all(map(operator.lt, keys, keys[1:])):     # (at C speed; then which)
                i = next(i for i in range(1, nr) if keys[i] <= keys[i - 1])
                raise fail(KEY_ORDER, f"keys out of order in btree node {b}: "
                                      f"key[{i}] = {keys[i]} after {keys[i - 1]}")
            if nr:
                # An internal node's first key is only a lower bound for its
                # child; the kernel lowers keys[0] of internal nodes, so a
                # child's first key may exceed its parent's: only [lo, hi).
                if lo is not None and keys[0] < lo:
                    raise fail(KEY_RANGE, f"btree node {b}: key {keys[0]} is below the "
                                          f"parent's lower bound {lo}")
                if hi is not None and keys[-1] >= hi:
                    raise fail(KEY_RANGE, f"btree node {b}: key {keys[-1]} is not below "
                                          f"the parent's next key {hi}")
            if not is_leaf:
                children = read_u64_values(buf, nr, mx)
                self.bm.prefetch(children, BTREE_NODE)
                if totals is not None:
                    stack.append((b, path, _POST, children))
                for i in range(nr - 1, -1, -1):
                    c_hi = keys[i + 1] if i + 1 < nr else hi
                    stack.append((children[i], (*path, children[i]), keys[i], c_hi))
                continue
            if totals is not None:
                totals[b] = nr
            yield b, keys, buf, mx, path

    def walk_all(self, root: int, value_size: int, **kw: Any) -> int:
        """Walk a tree for its checks and counts only; return the number of
        leaf entries walked.  Raises :class:`NodeError`."""
        n = 0
        for _b, keys, _v, _p in self.walk(root, value_size, **kw):
            n += len(keys)
        return n


def new_totals(size: int) -> array[int]:
    """A zeroed ``array('Q')`` of *size* entries (per-node totals)."""
    return array("Q", bytes(8 * size))
