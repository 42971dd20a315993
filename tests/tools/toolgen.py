"""Helpers for the thin-provisioning-tools mirror tests (check options, repair,
delta, rmap, ...): pools written by the engine from operation lists, what
they hold (an independent reading through thin_dump 0.9.0's XML), where
their btree nodes are, and how to run each tool.
"""
from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import strategies as st

import helpers
from dmthin.pdata.block import BlockManager
from dmthin.pdata.btree.node import HEADER_SIZE, INTERNAL_NODE, read_header
from dmthin.thin.metadata import ThinMetadata
from dmthin.thin.superblock import read_superblock

REPO = Path(__file__).resolve().parents[2]
THIN = {name: f"/usr/sbin/{name}" for name in (
    "thin_check", "thin_dump", "thin_restore", "thin_repair", "thin_ls", "thin_delta",
    "thin_rmap", "thin_metadata_size", "thin_trim")}
BIN = Path(sys.executable).parent
MiB = 1 << 20


def run(argv, **kw) -> subprocess.CompletedProcess:
    """Run *argv* (paths and ints allowed; text output), never raising on a
    non-zero exit."""
    return subprocess.run([str(a) if isinstance(a, int) else os.fspath(a) for a in argv],
                          check=False, capture_output=True, text=True, timeout=900, **kw)


def dmthin(*args: object) -> subprocess.CompletedProcess:
    """``dmthin ARGS`` run in this process (text output); an exception other
    than a usage error's exit fails the test, as a traceback would."""
    return helpers.run_dmthin(*args, text=True)


def script(name: str) -> Path:
    """A console script installed next to this Python (``dmthin-thin_check``...)."""
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is not installed: pip install -e . (tools/test does it)",
                    pytrace=False)
    return path


def checks_pass(path, pdata: str) -> tuple[int, int]:
    """Exit codes of thin_check 0.9.0 and 1.1.0 on *path* (0, 0 = good)."""
    return (run([THIN["thin_check"], "-q", path]).returncode,
            run([pdata, "thin_check", "-q", path]).returncode)


# -- pools from operations ---------------------------------------------------------------------

def blank(path, size: int = 16 * MiB) -> Path:
    path = Path(path)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def build_pool(path, ops, *, nr_data: int = 100000, size: int = 16 * MiB) -> Path:
    """Format *path* and apply *ops*: ``("thin", id)``, ``("snap", id, origin)``,
    ``("map", id, vblock)`` (a newly allocated data block), ``("maps", id, start,
    step, n)`` (n of them), ``("unmap", id, vblock)``, ``("unmaps", id, start, n)``,
    ``("delete", id)``, ``("commit",)``, ``("needs_check",)``, ``("hold",)``
    (reserve a metadata snapshot), ``("release",)``; ops the engine refuses
    are skipped.  Ends with a commit."""
    blank(path, size)
    md = ThinMetadata.format(path, 128, nr_data)
    try:
        for op in ops:
            kind = op[0]
            try:
                if kind == "thin":
                    md.create_thin(op[1])
                elif kind == "snap":
                    md.create_snap(op[1], op[2])
                elif kind == "map":
                    if md.has_device(op[1]):
                        md.insert(op[1], op[2], md.alloc_data_block())
                elif kind == "maps":
                    _dev, start, step, n = op[1:]
                    for i in range(n if md.has_device(op[1]) else 0):
                        md.insert(op[1], start + i * step, md.alloc_data_block())
                elif kind == "unmaps":
                    md.remove_range(op[1], op[2], op[2] + op[3])
                elif kind == "unmap":
                    md.remove(op[1], op[2])
                elif kind == "delete":
                    md.delete(op[1])
                elif kind == "commit":
                    md.commit()
                elif kind == "needs_check":
                    md.set_needs_check()
                elif kind == "hold":
                    md.reserve_metadata_snap()
                elif kind == "release":
                    md.release_metadata_snap()
            except OSError:
                continue
        md.commit()
    finally:
        md.close()
    return Path(path)


# -- what a pool holds (read through thin_dump 0.9.0) -------------------------------------------

_DEV = re.compile(r'<device dev_id="(\d+)"')
_RANGE = re.compile(r'origin_begin="(\d+)" data_begin="(\d+)" length="(\d+)" time="(\d+)"')
_SINGLE = re.compile(r'origin_block="(\d+)" data_block="(\d+)" time="(\d+)"')


def mappings(path) -> dict[int, dict[int, tuple[int, int]]]:
    """``{dev_id: {vblock: (data_block, time)}}`` from thin_dump 0.9.0's XML."""
    p = run([THIN["thin_dump"], path])
    assert p.returncode == 0, p.stderr
    out: dict[int, dict[int, tuple[int, int]]] = {}
    cur: dict[int, tuple[int, int]] = {}
    for line in p.stdout.splitlines():
        if m := _DEV.search(line):
            cur = out[int(m.group(1))] = {}
        elif m := _RANGE.search(line):
            o, d, n, t = map(int, m.groups())
            for i in range(n):
                cur[o + i] = (d + i, t)
        elif m := _SINGLE.search(line):
            o, d, t = map(int, m.groups())
            cur[o] = (d, t)
    return out


def first_line(path, *argv) -> str:
    return run([THIN["thin_dump"], *argv, path]).stdout.split("\n", 1)[0]


# -- where the nodes are -------------------------------------------------------------------------

def _node(bm, b):
    buf = bm.read(b, None)
    flags, nr, mx, vs = read_header(buf)
    keys = struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE)
    values = struct.unpack_from(f"<{nr}Q", buf, HEADER_SIZE + 8 * mx) if vs == 8 else ()
    return flags, keys, values


def tree_nodes(bm, root: int) -> tuple[list[int], list[int]]:
    """(internal nodes, leaves) of the btree under *root* (undamaged metadata)."""
    internal, leaves, stack = [], [], [root]
    while stack:
        b = stack.pop()
        flags, _keys, values = _node(bm, b)
        if flags & INTERNAL_NODE:
            internal.append(b)
            stack.extend(values)
        else:
            leaves.append(b)
    return internal, leaves


class Layout:
    """Where the live trees of undamaged metadata are: ``top`` and ``details``
    nodes, ``roots`` {dev_id: subtree root}, ``internal`` and ``leaves``
    {dev_id: [blocks]}, ``leaf_keys`` {leaf: keys}."""

    def __init__(self, path):
        bm = BlockManager(path)
        try:
            sb = read_superblock(bm)
            self.sb = sb
            t_int, t_leaves = tree_nodes(bm, sb.data_mapping_root)
            self.top = t_int + t_leaves
            d_int, d_leaves = tree_nodes(bm, sb.device_details_root)
            self.details = d_int + d_leaves
            self.roots: dict[int, int] = {}
            for leaf in t_leaves:
                _f, keys, values = _node(bm, leaf)
                self.roots.update(zip(keys, values, strict=True))
            self.top_leaf_of = {dev: leaf for leaf in t_leaves for dev in _node(bm, leaf)[1]}
            self.internal: dict[int, list[int]] = {}
            self.leaves: dict[int, list[int]] = {}
            self.leaf_keys: dict[int, tuple[int, ...]] = {}
            for dev, root in self.roots.items():
                self.internal[dev], self.leaves[dev] = tree_nodes(bm, root)
                for leaf in self.leaves[dev]:
                    self.leaf_keys[leaf] = _node(bm, leaf)[1]
        finally:
            bm.close()

    def mapping_nodes(self) -> list[int]:
        return sorted({b for dev in self.roots
                       for b in self.internal[dev] + self.leaves[dev]})


def corrupt(path, block: int, offset: int = 100) -> None:
    """Overwrite 4 bytes of *block* (its checksum no longer matches)."""
    with open(path, "r+b") as f:
        f.seek(block * 4096 + offset)
        old = f.read(4)
        f.seek(block * 4096 + offset)
        f.write(bytes(b ^ 0xA5 for b in old))


# -- random pools -------------------------------------------------------------------------------
@st.composite
def pool_ops(draw):
    ops: list[tuple] = []
    devs: list[int] = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["thin", "snap", "maps", "maps", "unmap", "delete",
                                     "commit", "hold", "release"]))
        if kind == "thin" or not devs:
            dev = draw(st.integers(0, 20))
            ops.append(("thin", dev))
            devs.append(dev)
        elif kind == "snap":
            dev = draw(st.integers(0, 20))
            ops.append(("snap", dev, draw(st.sampled_from(devs))))
            devs.append(dev)
        elif kind == "maps":
            dev = draw(st.sampled_from(devs))
            start = draw(st.integers(0, 5000))
            step = draw(st.sampled_from([1, 1, 2, 37]))
            ops.append(("maps", dev, start, step, draw(st.integers(1, 900))))
        elif kind == "unmap":
            dev = draw(st.sampled_from(devs))
            ops.append(("unmaps", dev, draw(st.integers(0, 5000)), draw(st.integers(1, 300))))
        elif kind == "delete":
            ops.append(("delete", draw(st.sampled_from(devs))))
        else:
            ops.append((kind,))
    return ops
