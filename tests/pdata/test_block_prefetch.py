"""BlockManager.prefetch (the accelerator's batched, validated reads) against
BlockManager.read one block at a time: same contents for valid blocks, the
same error for the others, whatever the damage and the order asked."""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmthin.errors import MetadataError
from dmthin.pdata.block import BlockManager
from dmthin.pdata.checksum import BITMAP, BTREE_NODE

NR = 24


pytestmark = pytest.mark.usefixtures("accel_built")   # (prefetch does nothing without it)


def _write_blocks(path, damage: dict[int, str]) -> None:
    with open(path, "wb") as f:
        for b in range(NR):
            buf = bytearray(4096)
            buf[32:40] = struct.pack("<Q", b * 7)
            kind = damage.get(b)
            (BITMAP if kind == "other kind" else BTREE_NODE).prepare_for_write(buf, b)
            if kind == "checksum":
                buf[100] ^= 1
            elif kind == "blocknr":
                struct.pack_into("<Q", buf, 8, b + 1)
            f.write(buf)
        f.write(b"x" * 1000)                 # a partial block at the end


def _outcome(bm: BlockManager, b: int) -> object:
    try:
        return bytes(bm.read(b, BTREE_NODE))
    except MetadataError as e:
        return (type(e).__name__, str(e))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=st.dictionaries(st.integers(0, NR - 1),
                              st.sampled_from(["checksum", "blocknr", "other kind"]),
                              max_size=6),
       asked=st.lists(st.integers(-2, NR + 3), min_size=2, max_size=40),
       cache=st.sampled_from([16, 64]))
def test_prefetch_reads_as_read_does(tmp_path, damage, asked, cache):
    path = tmp_path / "meta"
    _write_blocks(path, damage)
    plain = BlockManager(path, cache_blocks=cache)
    fetched = BlockManager(path, cache_blocks=cache)
    try:
        fetched.read(asked[0] % NR, BTREE_NODE) if asked[0] % NR not in damage else None
        fetched.prefetch(asked, BTREE_NODE)
        assert len(fetched._cache) <= cache
        for b in asked:
            assert _outcome(fetched, b) == _outcome(plain, b)
    finally:
        plain.close()
        fetched.close()


def test_prefetch_caches_only_valid_blocks(tmp_path):
    path = tmp_path / "meta"
    _write_blocks(path, {3: "checksum", 4: "blocknr", 5: "other kind"})
    bm = BlockManager(path, cache_blocks=64)
    try:
        bm.prefetch([1, 2, 3, 4, 5, 6, NR, 10], BTREE_NODE)
        assert sorted(bm._cache) == [1, 2, 6, 10]
    finally:
        bm.close()
