"""Space-map codecs and counting against the kernel's documented bit order
and an independent count model (including the overflow tree for counts of
3 and more, and the free counts the kernel reports)."""
from __future__ import annotations

import random

from dmthin.pdata.block import BlockManager
from dmthin.pdata.btree.node import NODE_CODEC
from dmthin.pdata.checksum import (
    BITMAP,
    BTREE_NODE,
    INDEX,
    SUPERBLOCK,
    block_checksum,
    block_kind,
    check_crc32c,
)
from dmthin.pdata.space_map.disk import DiskSpaceMap
from dmthin.pdata.space_map.format import bitmap_find_free, bitmap_get, bitmap_set
from dmthin.pdata.space_map.metadata import MetadataSpaceMap
from dmthin.pdata.transaction import TransactionManager


def test_crc32c_and_salts():
    check_crc32c()
    blk = bytearray(4096)
    for v in (SUPERBLOCK, BTREE_NODE, BITMAP, INDEX):
        v.prepare_for_write(blk, 7)
        assert block_kind(blk) == v.name
        v.check(blk, 7)


def test_documented_worked_example_formula():
    # csum = crc32c_std(block[4:]) ^ 0xffffffff ^ salt  (docs/format.md, section 1)
    import crc32c
    blk = bytearray(4096)
    blk[100] = 42
    assert block_checksum(blk, 160774) == crc32c.crc32c(bytes(blk[4:])) ^ 0xFFFFFFFF ^ 160774


def test_bitmap_bit_order_matches_kernel():
    buf = bytearray(4096)
    for e in range(8):
        bitmap_set(buf, e, 1)
    assert buf[16:18] == b"\xaa\xaa"            # runs of count 1 read as 0xaa
    bitmap_set(buf, 0, 2)
    assert buf[16] & 3 == 1                     # count 2 is field 01
    bitmap_set(buf, 0, 3)
    assert buf[16] & 3 == 3
    assert [bitmap_get(buf, e) for e in range(3)] == [3, 1, 1]
    assert bitmap_find_free(buf, 0, 16320) == 8
    assert bitmap_find_free(buf, 0, 8) is None


def test_data_space_map_counts_overflow_and_free(tmp_path):
    path = tmp_path / "md"
    with open(path, "wb") as f:
        f.truncate(16 << 20)
    bm = BlockManager(path, writable=True, cache_blocks=16)
    tm = TransactionManager(bm, NODE_CODEC)
    MetadataSpaceMap.create(tm, bm.file_blocks)
    nr = 40000                                   # three bitmaps, the last partial
    sm = DiskSpaceMap.create(tm, nr)
    rng = random.Random(7)
    model = [0] * nr
    for _ in range(20000):
        b = rng.randrange(nr)
        if model[b] and rng.random() < 0.45:
            sm.dec(b)
            model[b] -= 1
        else:
            sm.inc(b)
            model[b] += 1
    sm.commit()
    for b in range(0, nr, 37):
        assert sm.get_count(b) == model[b]
    assert max(model) >= 3
    assert sm.nr_free() == sum(1 for c in model if c == 0)
    # kernel semantics for the index: every bitmap starts with nr_free 16320
    ie = sm.ll.load_ie(2)
    assert ie.nr_free == 16320 - sum(1 for c in model[32640:] if c)
    bm.close()


def test_metadata_space_map_free_count_and_recursion(tmp_path):
    path = tmp_path / "md"
    with open(path, "wb") as f:
        f.truncate(8 << 20)
    bm = BlockManager(path, writable=True, cache_blocks=16)
    tm = TransactionManager(bm, NODE_CODEC)
    sm = MetadataSpaceMap.create(tm, bm.file_blocks)
    allocated = sm.ll.nr_allocated
    blocks = [sm.new_block() for _ in range(50)]
    assert sm.nr_free() == 2048 - allocated - 50
    for b in blocks[:10]:
        for _ in range(3):
            sm.inc(b)                             # overflow tree: counts of 4
    sm.commit()
    assert all(sm.get_count(b) == 4 for b in blocks[:10])
    assert sm.count_is_more_than_one(blocks[0]) and not sm.count_is_more_than_one(blocks[20])
    assert not sm.uncommitted
    bm.close()
