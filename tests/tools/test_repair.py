"""``dmthin repair`` (thin_repair): valid metadata from whatever survives.

Pools are written by the engine; damage is a corrupted node (its checksum no
longer matches).  The oracle is the undamaged pool read through thin_dump
0.9.0 and its node layout: the output must pass thin_check 0.9.0 and 1.1.0,
never invent a mapping, keep every device whose top-level entry and some
leaf survive, and keep every mapping of every surviving leaf (children of a
lost node are found again by scanning).
"""
from __future__ import annotations

import hashlib
import shutil

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dmthin.thin import repair_write
from dmthin.thin.repair import Overrides, repair
from toolgen import (
    THIN,
    Layout,
    blank,
    build_pool,
    checks_pass,
    corrupt,
    dmthin,
    first_line,
    mappings,
    pool_ops,
    run,
    script,
)

MiB = 1 << 20


def ops_pool() -> list[tuple]:
    """Three levels of sharing, trees of two levels, distinct mapping counts."""
    ops: list[tuple] = [("thin", 1)] + [("map", 1, v) for v in range(70000)] + [("commit",)]
    ops += [("snap", 2, 1)] + [("map", 2, v) for v in range(100, 900, 2)]
    ops += [("map", 2, v) for v in range(70000, 70300)] + [("commit",)]
    ops += [("snap", 3, 2)] + [("map", 3, v) for v in range(2000, 2600, 3)]
    ops += [("map", 3, v) for v in range(90000, 90050)]
    ops += [("thin", 4)] + [("map", 4, v * 7) for v in range(120)] + [("commit",)]
    return ops


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    path = build_pool(tmp_path_factory.mktemp("repair") / "meta", ops_pool())
    return path, mappings(path), Layout(path)


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def repaired(tmp_path, bad, *extra, size: int = 16 * MiB):
    out = blank(tmp_path / "out", size)
    before = digest(bad)
    p = dmthin("repair", "-i", bad, "-o", out, *extra)
    assert digest(bad) == before, "repair wrote to its input"
    return p, out


def subset(got: dict, want: dict) -> None:
    for dev, maps in got.items():
        assert dev in want, f"device {dev} invented"
        bad = {k: v for k, v in maps.items() if want[dev].get(k) != v}
        assert not bad, f"device {dev}: mappings invented {list(bad.items())[:5]}"


def test_undamaged_metadata_round_trips(original, tmp_path, thin_tools_090, pdata_tools_110):
    path, maps, _layout = original
    p, out = repaired(tmp_path, path)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert checks_pass(out, pdata_tools_110) == (0, 0)
    assert mappings(out) == maps
    theirs = blank(tmp_path / "theirs", 16 * MiB)
    assert run([THIN["thin_repair"], "-i", path, "-o", theirs]).returncode == 0
    assert mappings(theirs) == maps
    head = first_line(path).replace(' flags="0"', "")
    assert first_line(out).replace(' flags="0"', "") == head


def test_lvm_argv(original, tmp_path, pdata_tools_110):
    """lvconvert --repair: THIN_REPAIR '' -i META -o SPARE, then THIN_DUMP SPARE."""
    path, maps, layout = original
    bad = shutil.copy(path, tmp_path / "bad")
    corrupt(bad, layout.roots[2])
    spare = blank(tmp_path / "spare", 16 * MiB)
    p = run([script("dmthin-thin_repair"), "", "-i", bad, "-o", spare])
    assert p.returncode == 0, p.stderr
    dump = run([script("dmthin-thin_dump"), spare])
    assert dump.returncode == 0
    assert f'transaction="{layout.sb.trans_id}"' in dump.stdout.split("\n", 1)[0]
    assert mappings(spare) == maps


def _expect_without(layout: Layout, maps, lost_leaves) -> dict:
    want = {dev: dict(m) for dev, m in maps.items()}
    for dev, leaves in layout.leaves.items():
        for leaf in set(leaves) & set(lost_leaves):
            for k in layout.leaf_keys[leaf]:
                want[dev].pop(k, None)
    return want


@pytest.mark.parametrize("where", ["leaf1", "leaf2", "internal1", "root1", "root2", "root3",
                                   "top", "details", "superblock"])
def test_one_lost_node(original, tmp_path, where, pdata_tools_110):
    path, maps, layout = original
    if where.startswith("leaf"):
        # leaf1: a leaf of device 1 only; leaf2: one device 2 shares with its snapshot 3
        dev = int(where[-1])
        owners = 1 if dev == 1 else 2
        cands = [b for b in layout.leaves[dev]
                 if sum(b in ls for ls in layout.leaves.values()) == owners]
        block = cands[len(cands) // 2]
    elif where.startswith("internal"):
        block = next(b for b in layout.internal[1] if b != layout.roots[1])
    elif where.startswith("root"):
        block = layout.roots[int(where[-1])]
    elif where == "top":
        block = layout.top[0]
    elif where == "details":
        block = layout.details[0]
    else:
        block = 0
    bad = shutil.copy(path, tmp_path / "bad")
    corrupt(bad, block)
    p, out = repaired(tmp_path, bad)
    assert p.returncode == 0, p.stderr
    assert checks_pass(out, pdata_tools_110) == (0, 0)
    got = mappings(out)
    want = _expect_without(layout, maps, [block]) if where.startswith("leaf") else maps
    assert got == want
    assert p.stderr.count("\n") >= 1          # what was lost or guessed, one line each
    if where == "superblock":
        assert first_line(out).replace(' flags="0"', "") == first_line(path).replace(
            ' flags="0"', "")


def test_lost_superblock_needs_the_block_size(original, tmp_path, pdata_tools_110):
    path, maps, _layout = original
    bad = shutil.copy(path, tmp_path / "bad")
    with open(bad, "r+b") as f:
        f.write(bytes(4096))
    p, out = repaired(tmp_path, bad)
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and "--data-block-size" in p.stderr
    assert not any(out.read_bytes()[:4096]), "nothing written on failure"
    p, out = repaired(tmp_path, bad, "--data-block-size", "128")
    assert p.returncode == 0, p.stderr
    assert checks_pass(out, pdata_tools_110) == (0, 0)
    assert mappings(out) == maps


@pytest.mark.parametrize("content", [b"", b"\0" * 65536, b"<superblock uuid=\"\"/>\n" * 300,
                                     bytes(range(256)) * 4096])
def test_nothing_to_repair_is_one_line(tmp_path, content):
    bad = tmp_path / "bad"
    bad.write_bytes(content)
    p, _out = repaired(tmp_path, bad, "--data-block-size", "128")
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1, p.stderr


def test_output_problems_are_one_line(original, tmp_path):
    path, _maps, _layout = original
    for argv in (["-i", path, "-o", tmp_path / "missing"], ["-i", path, "-o", path],
                 ["-i", path], ["-o", path],
                 ["-i", path, "-o", blank(tmp_path / "small", 64 * 1024)]):
        p = dmthin("repair", *argv)
        assert p.returncode == 1 and p.stderr.count("\n") == 1, (argv, p.stderr)


# -- random pools, random damage ---------------------------------------------------------------

@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(ops=pool_ops(), picks=st.lists(st.integers(0, 1 << 30), min_size=1, max_size=3))
def test_random_damage(tmp_path, pdata_tools_110, ops, picks):
    path = build_pool(tmp_path / "meta", ops)
    layout = Layout(path)
    maps = mappings(path)
    nodes = sorted(set(layout.mapping_nodes() + layout.top + layout.details))
    assume(nodes)
    lost = {nodes[i % len(nodes)] for i in picks}
    bad = shutil.copy(path, tmp_path / "bad")
    for b in lost:
        corrupt(bad, b)
    out = blank(tmp_path / "out", 16 * MiB)
    plan = repair(bad, out, Overrides())
    assert checks_pass(out, pdata_tools_110) == (0, 0), plan.report
    got = mappings(out)
    subset(got, maps)
    ambiguous = any("fits several" in line for line in plan.report)
    for dev, leaves in layout.leaves.items():
        top_ok = layout.top_leaf_of[dev] not in lost and not (
            set(layout.top) & lost and len(layout.top) > 1)
        alive = [b for b in leaves if b not in lost]
        if ambiguous or not top_ok or (leaves and not alive) or (
                not leaves and layout.roots[dev] in lost):
            continue        # (ambiguous orphans are reported, not used)
        assert dev in got, (dev, plan.report)
        want = {k for b in alive for k in layout.leaf_keys[b]}
        missing = want - set(got[dev])
        assert not missing, (dev, sorted(missing)[:10], plan.report)


def test_repair_keeps_what_snapshots_share(tmp_path, pdata_tools_110):
    """Fifteen snapshots of a 20000-mapping device, each with a few writes of
    its own: unshared, the output would need 16 times the origin's leaves; the
    repair copies each surviving leaf once and shares the trees."""
    ops: list[tuple] = [("thin", 1), ("maps", 1, 0, 1, 20000), ("commit",)]
    for s in range(2, 17):
        ops += [("snap", s, 1), ("maps", s, 1000 * s, 1, 3), ("commit",)]
    path = build_pool(tmp_path / "meta", ops, size=2 << 20)
    layout = Layout(path)
    bad = shutil.copy(path, tmp_path / "bad")
    corrupt(bad, layout.details[0])
    out = blank(tmp_path / "out", 2 << 20)
    plan = repair(bad, out, Overrides())
    assert checks_pass(out, pdata_tools_110) == (0, 0), plan.report
    assert mappings(out) == mappings(path)
    used_in = Layout(path).sb.metadata_sm.nr_allocated
    used_out = Layout(out).sb.metadata_sm.nr_allocated
    assert used_out <= used_in * 1.2, (used_in, used_out)


def test_repair_same_bytes_whatever_it_keeps(tmp_path, monkeypatch):
    """Reused leaves are kept between their checks and their copy up to a
    bound, and read again past it: the output is the same either way."""
    ops: list[tuple] = [("thin", 1), ("maps", 1, 0, 1, 20000), ("commit",),
                        ("snap", 2, 1), ("maps", 2, 7, 1, 3), ("commit",)]
    path = build_pool(tmp_path / "meta", ops, size=2 << 20)
    corrupt(shutil.copy(path, tmp_path / "bad"), Layout(path).details[0])
    outs = []
    for keep in (repair_write._KEEP_LEAVES, 3, 0):
        monkeypatch.setattr(repair_write, "_KEEP_LEAVES", keep)
        out = blank(tmp_path / f"out{keep}", 2 << 20)
        repair(tmp_path / "bad", out, Overrides())
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]
    assert mappings(tmp_path / "out0") == mappings(path)
