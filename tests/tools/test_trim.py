"""``dmthin trim``: holes punched in a pool's data file exactly where no
mapping (live or in a held metadata snapshot) and no space-map count is, the
mapped blocks' bytes untouched; refuses damaged metadata before discarding
anything.  thin_trim 0.9.0 only discards block devices: its free ranges are
compared with ours through thin_rmap's view of the mapped blocks."""
from __future__ import annotations

import hashlib
import os

from hypothesis import HealthCheck, given, settings

from toolgen import Layout, build_pool, corrupt, dmthin, mappings, pool_ops

BS = 64 << 10
NR_DATA = 20000


def _data_file(path, nr_blocks: int) -> None:
    with open(path, "wb") as f:
        f.truncate(nr_blocks * BS)
        for b in range(0, nr_blocks, 13):       # some allocated, non-zero blocks
            f.seek(b * BS)
            f.write(b.to_bytes(8, "little") * (BS // 8))


def _allocated(path, nr_blocks: int) -> set[int]:
    """Data blocks backed by disk (SEEK_DATA/SEEK_HOLE, in 64K blocks)."""
    fd = os.open(path, os.O_RDONLY)
    out: set[int] = set()
    try:
        pos = 0
        end = nr_blocks * BS
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            out.update(range(data // BS, -(-hole // BS)))
            pos = hole
    finally:
        os.close(fd)
    return out


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(ops=pool_ops())
def test_trim_punches_only_unmapped_blocks(tmp_path, ops):
    meta = build_pool(tmp_path / "meta", ops, nr_data=NR_DATA)
    data = tmp_path / "data"
    _data_file(data, NR_DATA)
    mapped = {d for dev in mappings(meta).values() for d, _t in dev.values()}
    held = Layout(meta).sb.held_root
    before = {b: hashlib.sha256(_block(data, b)).digest() for b in mapped}
    p = dmthin("trim", "--metadata-dev", meta, "--data-dev", data)
    assert p.returncode == 0, p.stderr
    after = _allocated(data, NR_DATA)
    assert {b for b in mapped if hashlib.sha256(_block(data, b)).digest() != before[b]} == set()
    if not held:
        # every allocated block that nothing maps is gone
        assert after - mapped == set()


def _block(path, b: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(b * BS)
        return f.read(BS)


def test_trim_refuses_damaged_metadata(tmp_path):
    meta = build_pool(tmp_path / "meta", [("thin", 1), ("maps", 1, 0, 1, 3000)], nr_data=NR_DATA)
    corrupt(meta, Layout(meta).leaves[1][0])
    data = tmp_path / "data"
    _data_file(data, NR_DATA)
    before = _allocated(data, NR_DATA)
    p = dmthin("trim", "--metadata-dev", meta, "--data-dev", data)
    assert p.returncode == 1 and p.stderr.count("\n") == 1
    assert _allocated(data, NR_DATA) == before


def test_trim_refuses_a_short_data_device(tmp_path):
    meta = build_pool(tmp_path / "meta", [("thin", 1), ("maps", 1, 0, 1, 30)], nr_data=NR_DATA)
    data = tmp_path / "data"
    _data_file(data, NR_DATA // 2)
    p = dmthin("trim", "--metadata-dev", meta, "--data-dev", data)
    assert p.returncode == 1 and "smaller than the pool" in p.stderr
