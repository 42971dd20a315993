"""Test helpers for dump/restore/ls: random metadata XML and the reference tools.

:func:`build_metadata` builds a random but valid pool description (devices,
snapshots sharing data blocks with their origin, single and range mappings
crossing leaf boundaries) from a source of choices: hypothesis
(:func:`metadata`, a strategy: failures shrink to small pools) or a seed
(:func:`gen_metadata`, for fixed examples); ``to_xml`` writes it in the
0.9.0 form.
"""
from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from hypothesis import strategies as st

import helpers

THIN_DUMP = "/usr/sbin/thin_dump"
THIN_RESTORE = "/usr/sbin/thin_restore"
THIN_CHECK = "/usr/sbin/thin_check"
THIN_LS = "/usr/sbin/thin_ls"
MiB = 1 << 20
T = TypeVar("T")


def run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([os.fspath(a) for a in argv], capture_output=True, timeout=600, **kw)


#: ``dmthin ARGS`` in this process; bytes out, as :func:`run`
dmthin = helpers.run_dmthin


def blank(path, size=8 * MiB) -> Path:
    path = Path(path)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


# -- random metadata -----------------------------------------------------------------

class Choices(Protocol):
    """Where :func:`build_metadata` takes its choices from: a seeded
    ``random.Random`` (:class:`SeededChoices`) or hypothesis (:func:`metadata`)."""

    def integer(self, lo: int, hi: int) -> int: ...          # lo..hi inclusive
    def choice(self, options: Sequence[T]) -> T: ...
    def permutation(self, n: int) -> list[int]: ...


class SeededChoices:
    def __init__(self, seed: int):
        self.rnd = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self.rnd.randint(lo, hi)

    def choice(self, options: Sequence[T]) -> T:
        return self.rnd.choice(options)

    def permutation(self, n: int) -> list[int]:
        order = list(range(n))
        self.rnd.shuffle(order)
        return order


class _Drawn:
    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any]):
        self.draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def choice(self, options: Sequence[T]) -> T:
        return self.draw(st.sampled_from(options))

    def permutation(self, n: int) -> list[int]:
        return self.draw(st.permutations(range(n)))


def build_metadata(c: Choices, *, max_devices: int = 6, max_runs: int = 60,
                   nr_data_blocks: int | None = None) -> dict:
    """A random valid pool: {"sb": {...}, "devices": [(attrs, [(thin, data, time, len)])]}.
    Snapshots copy (part of) an earlier device's mappings, so data blocks are
    shared; the other runs get disjoint data segments placed in random order."""
    nr = nr_data_blocks or c.choice([1000, 5000, 20000, 40000])
    time = c.integer(0, 49)
    # Each device: (attrs, its runs); a run is [vblock, length, time], the
    # same list object in a snapshot as in its origin.
    specs: list[tuple[dict, list[list[int]]]] = []
    used_ids: set[int] = set()
    for _ in range(c.integer(1, max_devices)):
        dev_id = c.choice([c.integer(0, 63), c.integer(0, (1 << 24) - 1)])
        while dev_id in used_ids:
            dev_id = (dev_id + 1) % (1 << 24)
        used_ids.add(dev_id)
        runs: list[list[int]] = []
        v = c.integer(0, 999)
        if specs and c.choice([False, True]):
            # a snapshot: share a prefix of an origin's mappings, then diverge
            origin = specs[c.integer(0, len(specs) - 1)][1]
            runs = origin[:c.integer(0, len(origin))]
            v = runs[-1][0] + runs[-1][1] + c.integer(0, 49) if runs else 0
        for _ in range(c.integer(0, max_runs - 1)):
            n = c.choice([1, 1, 1, 2, 3, c.integer(1, 599)])
            runs.append([v, n, c.integer(0, time)])
            v += n + c.choice([0, 0, 1, 5, c.integer(0, 99999)])
        attrs = {"dev_id": dev_id, "transaction": c.integer(0, 99),
                 "creation_time": c.integer(0, time), "snap_time": c.integer(0, time)}
        specs.append((attrs, runs))
    # Data segments for the distinct runs, in random order, with gaps; runs
    # that find no room left are dropped (from the snapshots too).
    distinct = list({id(r): r for _attrs, runs in specs for r in runs}.values())
    placed: dict[int, tuple[int, int]] = {}              # id(run) -> (data block, length)
    cur = 0
    for i in c.permutation(len(distinct)):
        if cur >= nr:
            break
        n = min(nr - cur, distinct[i][1])
        placed[id(distinct[i])] = (cur, n)
        cur += n + c.choice([0, 0, 1, c.integer(0, 49)])
    devices = []
    for attrs, runs in specs:
        out = [(v, placed[id(r)][0], t, placed[id(r)][1])
               for r in runs if id(r) in placed for v, _n, t in [r]]
        devices.append((dict(attrs, mapped_blocks=sum(r[3] for r in out)), out))
    devices.sort(key=lambda d: d[0]["dev_id"])
    sb = {"time": time, "transaction": c.integer(0, (1 << 40) - 1),
              "data_block_size": 128 * c.choice([1, 2, 16]), "nr_data_blocks": nr}
    return {"sb": sb, "devices": devices}


def gen_metadata(seed: int, **kw: Any) -> dict:
    """:func:`build_metadata` from a seed (fixed examples)."""
    return build_metadata(SeededChoices(seed), **kw)


@st.composite
def metadata(draw: Callable[[st.SearchStrategy[Any]], Any], **kw: Any) -> dict:
    """:func:`build_metadata` from hypothesis' choices: a failing pool
    shrinks to fewer devices, fewer and shorter runs, smaller numbers."""
    return build_metadata(_Drawn(draw), **kw)


def to_xml(md: dict, *, version: int | None = None) -> str:
    sb = md["sb"]
    ver = "" if version is None else f' version="{version}"'
    out = [f'<superblock uuid="" time="{sb["time"]}" transaction="{sb["transaction"]}"{ver} '
           f'data_block_size="{sb["data_block_size"]}" nr_data_blocks="{sb["nr_data_blocks"]}">']
    for attrs, runs in md["devices"]:
        out.append('  <device dev_id="{dev_id}" mapped_blocks="{mapped_blocks}" '
                   'transaction="{transaction}" creation_time="{creation_time}" '
                   'snap_time="{snap_time}">'.format(**attrs))
        for v, d, t, n in runs:
            if n == 1:
                out.append(f'    <single_mapping origin_block="{v}" data_block="{d}" time="{t}"/>')
            else:
                out.append(f'    <range_mapping origin_begin="{v}" data_begin="{d}" '
                           f'length="{n}" time="{t}"/>')
        out.append("  </device>")
    out.append("</superblock>")
    return "\n".join(out) + "\n"


def mappings_of(md: dict) -> dict[int, list[tuple[int, int, int]]]:
    """{dev_id: [(vblock, data, time)]} expanded (the model to compare with)."""
    res = {}
    for attrs, runs in md["devices"]:
        res[attrs["dev_id"]] = [(v + i, d + i, t) for v, d, t, n in runs for i in range(n)]
    return res


def add_fake_metadata_snap(path) -> int:
    """Copy the superblock to the last block as a held metadata snapshot (sm
    roots zeroed) and point held_root at it.  Space maps are not updated:
    good enough for dump -m / ls -m, not for thin_check."""
    import struct

    from dmthin.pdata.checksum import SUPERBLOCK
    with open(path, "r+b") as f:
        f.seek(0, 2)
        h = f.tell() // 4096 - 1
        f.seek(0)
        sb = bytearray(f.read(4096))
        cp = bytearray(sb)
        cp[64:320] = bytes(256)
        SUPERBLOCK.prepare_for_write(cp, h)
        f.seek(h * 4096)
        f.write(cp)
        struct.pack_into("<Q", sb, 56, h)
        SUPERBLOCK.prepare_for_write(sb, 0)
        f.seek(0)
        f.write(sb)
    return h
