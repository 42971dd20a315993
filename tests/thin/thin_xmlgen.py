"""Test helpers for dump/restore/ls: random metadata XML and the reference tools.

``gen_metadata(seed)`` builds a random but valid pool description (devices,
snapshots sharing data blocks with their origin, single and range mappings
crossing leaf boundaries); ``to_xml`` writes it in the 0.9.0 form.  Tests
drive it from hypothesis with an integer seed, so a failure names the seed.
"""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path


import helpers

THIN_DUMP = "/usr/sbin/thin_dump"
THIN_RESTORE = "/usr/sbin/thin_restore"
THIN_CHECK = "/usr/sbin/thin_check"
THIN_LS = "/usr/sbin/thin_ls"
MiB = 1 << 20


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

def gen_metadata(seed: int, *, max_devices: int = 6, max_runs: int = 60,
                 nr_data_blocks: int | None = None) -> dict:
    """A random valid pool: {"sb": {...}, "devices": [(attrs, [(thin, data, time, len)])]}.
    Snapshots copy (part of) an earlier device's mappings, so data blocks are shared."""
    rnd = random.Random(seed)
    nr = nr_data_blocks or rnd.choice([1000, 5000, 20000, 40000])
    time = rnd.randrange(0, 50)
    # Disjoint data segments in random order: runs of consecutive blocks.
    segs, cur = [], 0
    while cur < nr:
        n = min(nr - cur, rnd.choice([1, 1, 1, 2, 3, rnd.randrange(1, 600)]))
        segs.append((cur, n))
        cur += n + rnd.choice([0, 0, 1, rnd.randrange(0, 50)])
    rnd.shuffle(segs)
    cursor = 0
    devices = []
    used_ids = set()
    for _ in range(rnd.randrange(1, max_devices + 1)):
        while True:
            dev_id = rnd.choice([rnd.randrange(0, 64), rnd.randrange(0, 1 << 24)])
            if dev_id not in used_ids:
                used_ids.add(dev_id)
                break
        runs = []
        if devices and rnd.random() < 0.5:
            # a snapshot: share a prefix of an origin's mappings, then diverge
            _attrs, origin = rnd.choice(devices)
            keep = origin[: rnd.randrange(0, len(origin) + 1)]
            runs.extend(keep)
            v = (keep[-1][0] + keep[-1][3] + rnd.randrange(0, 50)) if keep else 0
        else:
            v = rnd.randrange(0, 1000)
        for _ in range(rnd.randrange(0, max_runs)):
            if cursor >= len(segs):
                break
            data, n = segs[cursor]
            cursor += 1
            runs.append((v, data, rnd.randrange(0, time + 1), n))
            v += n + rnd.choice([0, 0, 1, 5, rnd.randrange(0, 100000)])
        attrs = dict(dev_id=dev_id, mapped_blocks=sum(r[3] for r in runs),
                     transaction=rnd.randrange(0, 100), creation_time=rnd.randrange(0, time + 1),
                     snap_time=rnd.randrange(0, time + 1))
        devices.append((attrs, runs))
    devices.sort(key=lambda d: d[0]["dev_id"])
    sb = dict(time=time, transaction=rnd.randrange(0, 1 << 40), data_block_size=128 * rnd.choice(
        [1, 2, 16]), nr_data_blocks=nr)
    return {"sb": sb, "devices": devices}


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
