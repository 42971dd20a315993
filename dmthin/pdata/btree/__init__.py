"""Btrees in the kernel's format (dm-btree.c, dm-btree-internal.h).

- :mod:`.node`: the node format, key search, the node codec the transaction
  manager caches nodes with, the depth limits;
- :mod:`.spine`: value types (:class:`~.spine.ValueType`), tree descriptions
  (:class:`~.spine.BTreeInfo`) and the shadow spine;
- :mod:`.ops`: creation, lookup and insertion; :mod:`.remove`: removal and
  deletion; :mod:`.hint`: the fast path for runs of inserts into one leaf;
- :mod:`.cursor`: ordered iteration through the transaction manager;
- :mod:`.walk` and :mod:`.check`: read-only walking and validation of a
  committed tree; :mod:`.builder`: bottom-up building, for restore.
"""
