"""The transaction manager (dm-transaction-manager.c).

It owns copy-on-write: a block committed in an earlier transaction is never
written in place.  :meth:`shadow_block` copies such a block to a newly
allocated one (decrementing the original, and telling the caller to
increment the children when the original was shared); a block that is new or
already shadowed in this transaction, and not shared, is written in place.

Commit is two-phase, as the kernel's: :meth:`pre_commit` commits the space
map and writes every dirty block, then syncs; :meth:`commit` writes the
superblock last and syncs again.

Btree nodes are cached decoded: the transaction manager reads, copies and
writes them through a :class:`NodeCodec` it is given (the btree module's),
so it needs no knowledge of the node format.
"""
from __future__ import annotations

from typing import Any, Protocol

from .block import BlockManager
from .checksum import Validator
from .space_map.interface import SpaceMap


class NodeCodec(Protocol):
    """Decoding and copying of the decoded btree nodes the block manager
    caches (:data:`dmthin.pdata.btree.node.NODE_CODEC`)."""

    validator: Validator

    def decode(self, buf: bytes | bytearray, blocknr: int) -> Any: ...

    def copy(self, node: Any) -> Any: ...


class TransactionManager:
    """Shadowing and reference counting over a :class:`BlockManager`.

    *nodes* decodes and copies btree nodes.  ``sm`` is the metadata space
    map; it attaches itself after construction because it needs the
    transaction manager.
    """

    sm: SpaceMap

    def __init__(self, bm: BlockManager, nodes: NodeCodec):
        self.bm = bm
        self.nodes = nodes
        self._node_validator = nodes.validator
        self._shadows: set[int] = set()
        # Shadows known to have exactly one reference: their count needs no
        # space-map lookup when they are shadowed again.  Any increment of a
        # block takes it out of this set.
        self._single: set[int] = set()

    # -- reading -----------------------------------------------------------
    def read(self, b: int, validator: Validator) -> bytes | bytearray:
        return self.bm.read(b, validator)

    def read_node(self, b: int) -> Any:
        """A btree node, read-only (do not modify the result)."""
        return self.bm.read_node(b, self._node_validator, self.nodes.decode)

    # -- new blocks ----------------------------------------------------------
    def new_block(self, validator: Validator) -> tuple[int, bytearray]:
        """Allocate a zeroed block (``dm_tm_new_block``)."""
        b = self.sm.new_block()
        buf = self.bm.write_lock_zero(b, validator)
        self._shadows.add(b)
        self._single.add(b)
        return b, buf

    def new_node(self, node: Any) -> int:
        """Allocate a block for btree *node* (which stays live and is
        written at flush or eviction)."""
        b = self.sm.new_block()
        self.bm.write_node(b, self._node_validator, node)
        self._shadows.add(b)
        self._single.add(b)
        return b

    # -- shadowing ---------------------------------------------------------------
    def _must_copy(self, orig: int) -> tuple[bool, bool]:
        if orig in self._single:
            return False, False
        inc_children = self.sm.count_is_more_than_one(orig)
        return (inc_children or orig not in self._shadows), inc_children

    def _copy_location(self, orig: int) -> int:
        new = self.sm.new_block()
        self.sm.dec(orig)
        return new

    def shadow_block(self, orig: int, validator: Validator) -> tuple[int, bytearray, bool]:
        """``dm_tm_shadow_block``: return ``(block, buffer, inc_children)``."""
        copy, inc = self._must_copy(orig)
        if not copy:
            return orig, self.bm.write_lock(orig, validator), False
        src = bytes(self.bm.read(orig, validator))
        new = self._copy_location(orig)
        buf = self.bm.write_lock_zero(new, validator)
        buf[:] = src
        self._shadows.add(new)
        self._single.add(new)
        return new, buf, inc

    def shadow_node(self, orig: int) -> tuple[int, Any, bool]:
        """Shadow a btree node: ``(block, live node, inc_children)``."""
        copy, inc = self._must_copy(orig)
        if not copy:
            node = self.read_node(orig)
            self.bm.write_node(orig, self._node_validator, node)
            return orig, node, False
        src = self.read_node(orig)
        new = self._copy_location(orig)
        node = self.nodes.copy(src)
        self.bm.write_node(new, self._node_validator, node)
        self._shadows.add(new)
        self._single.add(new)
        return new, node, inc

    def is_shadow(self, b: int) -> bool:
        return b in self._shadows

    def is_live_unshared_node(self, b: int, node: Any) -> bool:
        """True if *node* is still the live, dirty content of block *b* and
        *b* is a shadow of this transaction with a single reference: then
        shadowing it again changes nothing, and *node* may be modified in
        place (see :mod:`dmthin.pdata.btree.hint`)."""
        return b in self._single and self.bm.holds_dirty_node(b, node)

    # -- reference counts ------------------------------------------------------------
    def inc(self, b: int) -> None:
        self._single.discard(b)
        self.sm.inc(b)

    def inc_range(self, b: int, e: int) -> None:
        self.forget_unshared(b, e)
        self.sm.inc(b, e)

    def forget_unshared(self, b: int, e: int) -> None:
        """Blocks [b, e) gain a reference (the space map calls this for
        increments made behind the transaction manager's back)."""
        single = self._single
        if single:
            for x in range(b, e):
                single.discard(x)

    def dec(self, b: int) -> None:
        self.sm.dec(b)

    def ref(self, b: int) -> int:
        return self.sm.get_count(b)

    def is_shared(self, b: int) -> bool:
        if b in self._single:
            return False
        return self.sm.count_is_more_than_one(b)

    # -- commit -------------------------------------------------------------------------
    def pre_commit(self) -> None:
        """Commit the metadata space map, write every dirty block, sync."""
        self.sm.commit()
        self.bm.flush()

    def commit(self, superblock_location: int, sb_buf: bytearray, validator: Validator) -> None:
        """Write the superblock last, then sync; start a new transaction."""
        self._shadows.clear()
        self._single.clear()
        self.bm.write_block_now(superblock_location, sb_buf, validator)
        self.bm.sync()

    def abort(self) -> None:
        """Forget this transaction's shadows and dirty blocks."""
        self._shadows.clear()
        self._single.clear()
        self.bm.discard_dirty()
