"""``dmthin metadata-pack``/``metadata-unpack`` interoperate with 1.1.0's
thin_metadata_pack/unpack both ways: each unpacks the other's packs to the
same bytes, and the unpacked metadata dumps and checks as the original."""
from __future__ import annotations

import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmthin.thin.pack import _VM, pack_u64s
from toolgen import THIN, build_pool, checks_pass, dmthin, pool_ops, run


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(ops=pool_ops())
def test_packs_interoperate(tmp_path, pdata_tools_110, thin_tools_090, ops):
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))         # one per example
    meta = build_pool(tmp_path / "meta", ops)
    ours, theirs = tmp_path / "ours.pack", tmp_path / "theirs.pack"
    assert dmthin("metadata-pack", "-i", meta, "-o", ours).returncode == 0
    assert run([pdata_tools_110, "thin_metadata_pack", "-i", meta, "-o", theirs]).returncode == 0
    want = run([THIN["thin_dump"], meta]).stdout
    for pack in (ours, theirs):
        a, b = tmp_path / f"{pack.stem}.a", tmp_path / f"{pack.stem}.b"
        assert dmthin("metadata-unpack", "-i", pack, "-o", a).returncode == 0
        assert run([pdata_tools_110, "thin_metadata_unpack", "-i", pack, "-o", b]).returncode == 0
        assert a.read_bytes() == b.read_bytes()
        assert run([THIN["thin_dump"], a]).stdout == want
        assert checks_pass(a, pdata_tools_110) == (0, 0)


def test_refuses_to_overwrite_and_bad_packs(tmp_path):
    meta = build_pool(tmp_path / "meta", [("thin", 1), ("maps", 1, 0, 1, 500)])
    out = tmp_path / "p"
    assert dmthin("metadata-pack", "-i", meta, "-o", out).returncode == 0
    p = dmthin("metadata-pack", "-i", meta, "-o", out)
    assert p.returncode == 1 and "--force" in p.stderr
    assert dmthin("metadata-pack", "-f", "-i", meta, "-o", out).returncode == 0
    p = dmthin("metadata-unpack", "-i", out, "-o", meta)
    assert p.returncode == 1 and "--force" in p.stderr
    for junk in (b"", b"x" * 100, out.read_bytes()[:-20]):
        bad = tmp_path / "bad"
        bad.write_bytes(junk)
        p = dmthin("metadata-unpack", "-i", bad, "-o", tmp_path / "never")
        assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
        assert not (tmp_path / "never").exists()


@given(st.lists(st.integers(0, (1 << 64) - 1) | st.integers(0, 300), max_size=300))
def test_u64_lists_round_trip(ns):
    out = bytearray()
    pack_u64s(out, ns)
    vm = _VM(bytes(out))
    got = vm.run(8 * len(ns)) if ns else b""
    assert [int.from_bytes(got[i:i + 8], "little") for i in range(0, len(got), 8)] == ns


@pytest.mark.parametrize("seed", range(3))
def test_sequences_compress(seed):
    rnd = random.Random(seed)
    start = rnd.randrange(1 << 40)
    out = bytearray()
    pack_u64s(out, [start + i for i in range(252)])
    assert len(out) <= 12
