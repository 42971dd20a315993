"""``dmthin delta`` and ``dmthin rmap`` byte for byte against thin_delta and
thin_rmap 0.9.0, on pools the engine writes from random operations (random
snapshot pairs, random regions), with and without a held metadata snapshot;
rmap also line-set-equal to 1.1.0's (which orders ties differently).
"""
from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmthin.pdata.checksum import BTREE_NODE
from dmthin.thin.rmap import libstdcxx_sort
from toolgen import THIN, Layout, build_pool, dmthin, pool_ops, run

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])


def _devices(path) -> list[int]:
    out = run([THIN["thin_ls"], "--no-headers", "-o", "DEV", path]).stdout
    return [int(x) for x in out.split()]


@SETTINGS
@given(ops=pool_ops(), seed=st.integers(0, 1 << 30))
def test_delta_matches_thin_delta(tmp_path, thin_tools_090, ops, seed):
    path = build_pool(tmp_path / "meta", [*ops, ("thin", 98), ("maps", 98, 0, 2, 300),
                                          ("snap", 99, 98), ("maps", 99, 7, 3, 50)])
    devs = _devices(path)
    rnd = random.Random(seed)
    for _ in range(3):
        a, b = rnd.choice(devs), rnd.choice(devs)
        for extra in ([], ["--verbose"]):
            want = run([THIN["thin_delta"], *extra, "--snap1", a, "--thin2", b, path])
            got = dmthin("delta", *extra, "--thin1", a, "--snap2", b, path)
            assert (got.returncode, got.stdout) == (want.returncode, want.stdout), (a, b)
    a, b = devs[0], devs[-1]
    want = run([THIN["thin_delta"], "-m", "--snap1", a, "--snap2", b, path])
    got = dmthin("delta", "-m", "--snap1", a, "--snap2", b, path)
    assert got.returncode == want.returncode
    if want.returncode == 0:
        assert got.stdout == want.stdout
    else:
        assert got.stderr.count("\n") == 1


def test_delta_errors(tmp_path, thin_tools_090):
    path = build_pool(tmp_path / "meta", [("thin", 1), ("maps", 1, 0, 1, 10)])
    for argv in (["--snap1", "1", "--snap2", "9"], ["--snap1", "1"], ["--snap2", "1"],
                 ["--snap1", "x", "--snap2", "1"], ["-m", "--snap1", "1", "--snap2", "1"]):
        assert run([THIN["thin_delta"], *argv, path]).returncode == 1
        p = dmthin("delta", *argv, path)
        assert p.returncode == 1 and p.stderr.count("\n") == 1, (argv, p.stderr)


@SETTINGS
@given(ops=pool_ops(), regions=st.lists(st.tuples(st.integers(0, 6000), st.integers(1, 3000)),
                                        min_size=1, max_size=4))
def test_rmap_matches_thin_rmap(tmp_path, thin_tools_090, pdata_tools_110, ops, regions):
    path = build_pool(tmp_path / "meta", ops)
    argv = [f"--region={b}..{b + n}" for b, n in regions]
    want = run([THIN["thin_rmap"], *argv, path])
    got = dmthin("rmap", *argv, path)
    assert got.returncode == want.returncode == 0
    assert got.stdout == want.stdout
    theirs = run([pdata_tools_110, "thin_rmap", *argv, path])
    assert sorted(got.stdout.splitlines()) == sorted(theirs.stdout.splitlines())


@pytest.mark.parametrize("region", ["5", "5..", "..5", "5..5", "9..3", "a..b", "1...4"])
def test_rmap_bad_regions(tmp_path, thin_tools_090, region):
    path = build_pool(tmp_path / "meta", [("thin", 1), ("maps", 1, 0, 1, 10)])
    assert run([THIN["thin_rmap"], "--region", region, path]).returncode == 1
    p = dmthin("rmap", "--region", region, path)
    assert p.returncode == 1 and p.stderr.count("\n") == 1


@given(st.lists(st.integers(0, 40), max_size=300))
def test_libstdcxx_sort_sorts(keys):
    items = list(enumerate(keys))
    libstdcxx_sort(items, lambda a, b: a[1] < b[1])
    assert [k for _i, k in items] == sorted(keys)
    assert sorted(i for i, _k in items) == list(range(len(keys)))


@pytest.mark.parametrize("accel", ["", "1"])
def test_keys_out_of_order_refused_as_090_does(tmp_path, thin_tools_090, monkeypatch, accel):
    # A leaf whose keys are out of order (re-sealed: its checksum holds):
    # thin_rmap and thin_delta 0.9.0 refuse the metadata; so do ours, in one
    # line, on both walkers, instead of printing runs from the damage (the
    # leaf walk of rmap, delta and trim did not check key order).
    monkeypatch.setenv("DMTHIN_NO_ACCEL", accel)
    path = build_pool(tmp_path / "meta", [("thin", 1), ("maps", 1, 0, 1, 600),
                                          ("snap", 2, 1), ("maps", 2, 3, 5, 30)])
    leaf = Layout(path).leaves[1][1]
    with open(path, "r+b") as f:
        f.seek(leaf * 4096)
        buf = bytearray(f.read(4096))
        a, b = struct.unpack_from("<QQ", buf, 32 + 8 * 3)
        struct.pack_into("<QQ", buf, 32 + 8 * 3, b, a)
        BTREE_NODE.prepare_for_write(buf, leaf)
        f.seek(leaf * 4096)
        f.write(buf)
    for tool, args in (("rmap", ["--region", "0..2000"]),
                       ("delta", ["--snap1", "1", "--snap2", "2"])):
        theirs = run([THIN[f"thin_{tool}"], *args, path])
        ours = dmthin(tool, *args, path)
        assert theirs.returncode == 1, (tool, theirs.stdout[:200])
        assert ours.returncode == 1, (tool, ours.stdout[:200])
        assert ours.stdout == theirs.stdout == ""
        assert len(ours.stderr.strip().splitlines()) == 1 and "out of order" in ours.stderr
