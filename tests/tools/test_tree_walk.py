"""The accelerator's tree walker (``csrc/tree_walk.cpp``,
:mod:`dmthin.pdata.btree.cwalk`) against the pure-Python walkers, the
reference: the same leaves on hypothesis-generated pools (snapshots sharing
subtrees, trees of one, two and three levels, empty devices), and on damaged
metadata the same leaves up to the problem and then the same exception type
and message, from the walkers and from dump, ls, delta, rmap and trim's
marks -- never a crash.  Damage: a byte flipped and the block re-sealed, header fields,
keys out of order, child pointers to the root (a cycle), the superblock,
another tree's node or past the end, a node copied to the wrong place, a
bad checksum, a truncated file, and a file shrunk under an open reader
(short reads)."""
from __future__ import annotations

import io
import os
import random
import shutil
import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dmthin.errors import DmThinError
from dmthin.pdata.btree.cwalk import LeafBatches, NodeBitmap, usable
from dmthin.pdata.checksum import BLOCK_SIZE, BTREE_NODE
from dmthin.thin import accel, leaves, reader
from dmthin.thin.delta import delta
from dmthin.thin.dump import dump
from dmthin.thin.leaves import leaf_blocks, node_set, top_level
from dmthin.thin.ls import _block_batches
from dmthin.thin.reader import iter_mapping_leaf_nodes, open_block_manager, select_superblock
from dmthin.thin.rmap import rmap
from dmthin.thin.trim import referenced
from dmthin.thin.xml import XmlWriter
from toolgen import Layout, build_pool, pool_ops


def _all_blocks(bm, root: int, accelerated: bool = True) -> list[int]:
    """Every data block ls's walk yields for the tree at *root*."""
    return [b for batch in _block_batches(bm, root, accelerated) for b in batch]

SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])


pytestmark = pytest.mark.usefixtures("accel_built")


Outcome = tuple[list[Any], tuple[str, str] | None]


def outcome(items: Callable[..., Iterable[Any]], *args: Any) -> Outcome:
    """What ``items(*args)`` yields (normalised to bytes and ints) and the
    dmthin error that ends it, if any; any other exception fails the test."""
    got: list[Any] = []
    try:
        for item in items(*args):
            got.append(tuple(bytes(x) if isinstance(x, memoryview) else x for x in item))
    except DmThinError as e:
        return got, (type(e).__name__, str(e))
    return got, None


def walks(path: Path, accelerated: bool) -> dict[str, Outcome]:
    """Every walker, and every tool output, over the metadata at *path*,
    walked by the accelerator's walker or (not *accelerated*) in Python."""
    res: dict[str, Outcome] = {}
    bm = open_block_manager(path)
    try:
        try:
            sb = select_superblock(bm)
            devs = list(top_level(bm, sb.data_mapping_root))
        except DmThinError as e:
            return {"top": ([], (type(e).__name__, str(e)))}
        seen = node_set(bm)
        plain: set[int] = set()
        for dev, root in devs:
            res[f"mapping {dev}"] = outcome(iter_mapping_leaf_nodes, bm, root, accelerated)
            res[f"leaves {dev}"] = outcome(leaf_blocks, bm, root, None, accelerated)
            # the seen variant: the bitmap the C walker sets, the set Python keeps
            res[f"seen {dev}"] = outcome(leaf_blocks, bm, root,
                                         seen if accelerated else plain, accelerated)
            res[f"ls {dev}"] = outcome(lambda r: [tuple(_all_blocks(bm, r, accelerated))], root)
        res["trim"] = outcome(lambda a: [(bytes(referenced(bm, sb, sb.data_sm.nr_blocks, a)),)],
                              accelerated)
        if not accelerated:
            seen = NodeBitmap(bm.file_blocks)
            for b in plain:
                seen.add(b)
        res["seen set"] = ([bytes(seen.bits), tuple(sorted(seen.extra))], None)
    finally:
        bm.close()
    for name, run in tools(path, [d for d, _r in devs], accelerated).items():
        res[name] = run
    return res


@contextmanager
def python_walkers() -> Iterator[None]:
    """The tools' own loops (C or not) over the pure-Python walkers."""
    with mock.patch.object(reader, "usable", return_value=False), \
            mock.patch.object(leaves, "usable", return_value=False):
        yield


def tools(path: Path, devs: list[int], c_walker: bool) -> dict[str, Outcome]:
    """dump, delta and rmap output (text and error) over the metadata at
    *path*, their trees walked in C or, if not *c_walker*, in Python (the
    tools' other loops in C both ways, when built)."""
    if not c_walker:
        with python_walkers():
            return tools(path, devs, True)
    res: dict[str, Outcome] = {}
    rnd = random.Random(len(devs))

    def text(run: Callable[..., None], *args: Any) -> Outcome:
        def go() -> Iterable[Any]:
            out = io.StringIO()
            try:
                run(out, *args)
            finally:
                res_text.append(out.getvalue())
            return [(out.getvalue(),)]
        return outcome(go)

    bm = open_block_manager(path)
    try:
        res_text: list[str] = []
        res["dump"] = text(lambda o: dump(bm, XmlWriter(o)))
        for verbose in (False, True):
            if devs:
                a, b = rnd.choice(devs), rnd.choice(devs)
                res[f"delta {a} {b} {verbose}"] = text(
                    lambda o, a, b, v: delta(bm, a, b, o, verbose=v), a, b, verbose)
        res["rmap"] = text(lambda o: rmap(bm, [(0, 1 << 20)], o))
        res["partial output"] = ([tuple(res_text)], None)
    finally:
        bm.close()
    return res


def same_both_ways(path: Path) -> dict[str, Outcome]:
    fast, slow = walks(path, True), walks(path, False)
    assert fast.keys() == slow.keys()
    for k in fast:
        assert fast[k] == slow[k], k
    return fast


# -- undamaged pools -----------------------------------------------------------------------------

@SETTINGS
@given(ops=pool_ops())
def test_same_leaves_on_random_pools(tmp_path, ops):
    path = build_pool(tmp_path / "meta", [*ops, ("thin", 90), ("maps", 90, 0, 1, 600),
                                          ("snap", 91, 90), ("maps", 91, 100, 3, 50),
                                          ("thin", 92)])
    got = same_both_ways(path)
    assert all(err is None for _items, err in got.values())
    # the C walker ran, and handed out what the Python one yields
    bm = open_block_manager(path)
    try:
        assert usable(bm)
        for dev, root in top_level(bm, select_superblock(bm).data_mapping_root):
            walk = LeafBatches(bm, root, mapping=True)
            blocks = b"".join(bytes(accel.ffi.buffer(out, n * BLOCK_SIZE)) for out, n in walk)
            assert not walk.failed
            assert walk.handed == len(got[f"mapping {dev}"][0])
            assert blocks == b"".join(blk for _k, blk, _mx in got[f"mapping {dev}"][0])
        # and without stopping in leaf_blocks' form, nodes visited once across devices
        seen, plain = NodeBitmap(bm.file_blocks), set()
        for _dev, root in top_level(bm, select_superblock(bm).data_mapping_root):
            walk = LeafBatches(bm, root, mapping=False, seen=seen)
            blocks = b"".join(bytes(accel.ffi.buffer(out, n * BLOCK_SIZE)) for out, n in walk)
            assert not walk.failed
            assert blocks == b"".join(bytes(blk) for blk, _nr, _mx
                                      in leaf_blocks(bm, root, plain, accelerated=False))
        assert [b for b in range(bm.file_blocks) if b in seen] == sorted(plain)
    finally:
        bm.close()


def test_three_levels_and_batches(tmp_path):
    """A tree of three levels (internal nodes under internal nodes), walked
    in batches of one and of many leaves."""
    path = build_pool(tmp_path / "meta", [("thin", 1), ("maps", 1, 0, 2, 70000),
                                          ("snap", 2, 1), ("maps", 2, 7, 1000, 30)],
                      size=64 << 20)
    lay = Layout(path)
    bm = open_block_manager(path)
    try:
        root = lay.roots[1]
        depth, b = 0, root
        while b in lay.internal[1]:
            depth += 1
            buf = bm.read(b, BTREE_NODE)
            b = struct.unpack_from("<Q", buf, 32 + 8 * struct.unpack_from("<I", buf, 20)[0])[0]
        assert depth >= 2
        want = [(k, bytes(blk), mx) for k, blk, mx in iter_mapping_leaf_nodes(bm, root, False)]
        assert len(want) == len(lay.leaves[1])
        for batch in (1, 3, 64, 1000):
            walk = LeafBatches(bm, root, mapping=True, batch=batch)
            got = b"".join(bytes(accel.ffi.buffer(out, n * BLOCK_SIZE)) for out, n in walk)
            assert got == b"".join(blk for _k, blk, _mx in want)
    finally:
        bm.close()
    same_both_ways(path)


# -- damaged pools -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, Layout]:
    path = build_pool(tmp_path_factory.mktemp("walk") / "meta",
                      [("thin", 1), ("maps", 1, 0, 1, 3000), ("snap", 2, 1),
                       ("maps", 2, 50, 7, 200), ("thin", 3), ("maps", 3, 1 << 40, 1, 5),
                       ("thin", 4), ("snap", 5, 3), ("hold",), ("maps", 1, 5000, 1, 300)])
    return path, Layout(path)


DAMAGE = ["flip", "nr", "mx", "vs", "flags", "key", "range", "child", "copy", "csum",
          "truncate", "shrink"]


def _read(path: Path, b: int) -> bytearray:
    with open(path, "rb") as f:
        f.seek(b * BLOCK_SIZE)
        return bytearray(f.read(BLOCK_SIZE))


def _write(path: Path, b: int, buf: bytearray, seal: bool = True) -> None:
    if seal:
        BTREE_NODE.prepare_for_write(buf, b)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, buf, b * BLOCK_SIZE)
    finally:
        os.close(fd)


def damage(path: Path, lay: Layout, kind: str, rnd: random.Random) -> None:
    """Damage one node of the mapping trees in *path* (see the module docstring)."""
    nodes = lay.mapping_nodes()
    internal = sorted({b for dev in lay.roots for b in lay.internal[dev]})
    b = rnd.choice(internal if kind == "child" and rnd.random() < 0.7 else nodes)
    buf = _read(path, b)
    flags, nr, mx, _vs = struct.unpack_from("<I8xIII", buf, 4)
    size = os.path.getsize(path) // BLOCK_SIZE
    if kind == "flip":
        i = rnd.randrange(4, BLOCK_SIZE)
        buf[i] ^= 1 << rnd.randrange(8)
    elif kind == "nr":
        struct.pack_into("<I", buf, 16, rnd.choice([mx + 1, 0, 1, nr + 1, 1 << 31]))
    elif kind == "mx":
        struct.pack_into("<I", buf, 20, rnd.choice([mx - 1, mx + 3, nr, 0, 1000, 2**32 - 1]))
    elif kind == "vs":
        struct.pack_into("<I", buf, 24, rnd.choice([0, 4, 16, 24, 2**32 - 1]))
    elif kind == "flags":
        struct.pack_into("<I", buf, 4, rnd.choice([0, 1, 2, 3, 4, flags ^ 3]))
    elif kind == "key" and nr:
        i = rnd.randrange(nr)
        prev = struct.unpack_from("<Q", buf, 32 + 8 * (i - 1))[0] if i else 0
        struct.pack_into("<Q", buf, 32 + 8 * i,
                         rnd.choice([0, prev, 2**64 - 1, rnd.randrange(1 << 41)]))
    elif kind == "range":
        # a leaf's last key at or past its parent's next key (in order within the leaf)
        dev = rnd.choice([d for d in lay.roots if len(lay.leaves[d]) > 1])
        order = sorted(lay.leaves[dev], key=lambda leaf: lay.leaf_keys[leaf][0])
        i = rnd.randrange(len(order) - 1)
        b, nxt = order[i], lay.leaf_keys[order[i + 1]][0]
        buf = _read(path, b)
        nr = struct.unpack_from("<I", buf, 16)[0]
        struct.pack_into("<Q", buf, 32 + 8 * (nr - 1), nxt + rnd.choice([0, 0, 1, 1 << 40]))
    elif kind == "child" and nr:
        i = rnd.randrange(nr)
        other = rnd.choice([*nodes, *lay.top, *lay.details])
        root = rnd.choice(list(lay.roots.values()))
        child = rnd.choice([root, 0, other, size, size + 7, 2**64 - 1, b])
        if flags & 1:
            struct.pack_into("<Q", buf, 32 + 8 * mx + 8 * i, child)
        else:                                      # a leaf: a mapping past the data
            struct.pack_into("<Q", buf, 32 + 8 * mx + 8 * i, (child << 24) % 2**64)
    elif kind == "copy":
        src = rnd.choice(nodes)
        buf = _read(path, src)           # sealed for src: a blocknr mismatch at b
        if src == b:
            buf[100] ^= 1
        _write(path, b, buf, seal=False)
        return
    elif kind == "csum":
        buf[rnd.randrange(4, BLOCK_SIZE)] ^= 0x40
        _write(path, b, buf, seal=False)
        return
    elif kind == "truncate":
        os.truncate(path, rnd.randrange(min(nodes), max(nodes) + 2) * BLOCK_SIZE
                    + rnd.choice([0, 0, 100]))
        return
    _write(path, b, buf)


@SETTINGS
@given(kind=st.sampled_from(DAMAGE), seed=st.integers(0, 1 << 30))
@example(kind="child", seed=1)
@example(kind="truncate", seed=2)
@example(kind="range", seed=3)
def test_same_errors_on_damage(base, tmp_path, kind, seed):
    src, lay = base
    path = tmp_path / "meta"
    shutil.copyfile(src, path)
    rnd = random.Random(seed)
    if kind == "shrink":
        # Short reads: the file shrinks (mid-block) after the readers open it.
        cut = rnd.randrange(min(lay.mapping_nodes()), max(lay.mapping_nodes()) + 1)
        results = []
        for accelerated in (True, False):
            shutil.copyfile(src, path)
            bm = open_block_manager(path)
            try:
                roots = [r for _d, r in top_level(bm, select_superblock(bm).data_mapping_root)]
                os.truncate(path, cut * BLOCK_SIZE + 512)
                results.append([outcome(iter_mapping_leaf_nodes, bm, root, accelerated)
                                for root in roots]
                               + [outcome(leaf_blocks, bm, root, None, accelerated)
                                  for root in roots])
            finally:
                bm.close()
        assert results[0] == results[1]
        return
    damage(path, lay, kind, rnd)
    same_both_ways(path)


def test_cycle_without_key_checks(base, tmp_path):
    """A child pointing back at the root: leaf_blocks refuses it (the root's
    keys lie outside the child's range; else the depth bound would), with
    *seen* it is skipped, both ways."""
    src, lay = base
    path = tmp_path / "meta"
    shutil.copyfile(src, path)
    root = lay.roots[1]
    inner = lay.internal[1][-1] if len(lay.internal[1]) > 1 else root
    buf = _read(path, inner)
    mx = struct.unpack_from("<I", buf, 20)[0]
    struct.pack_into("<Q", buf, 32 + 8 * mx, root)
    _write(path, inner, buf)
    got = same_both_ways(path)
    assert got["leaves 1"][1] is not None
    assert "outside the range" in got["leaves 1"][1][1] or "deeper than" in got["leaves 1"][1][1]
    assert got["seen 1"][1] is None
    assert got["mapping 1"][1] is not None
