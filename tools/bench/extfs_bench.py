#!/usr/bin/env python3
"""Benchmarks of the ext4 view of a simulated thin device (dmthin.extfs),
each against its plain-file peer in the same run.

1. Apply a real layer: a tar of --layer-size (default 200M) of this
   machine's /usr/share (thousands of files, symlinks) applied by the
   graph differ through the view to a fresh 10G thin device formatted with
   Docker's mkfs options, then closed (metadata written, pool committed:
   the data file is fdatasync'ed), against GNU ``tar -x`` into a directory
   on the same disk followed by ``sync -f`` (target: within 3x).  Plain
   ``tar -x`` without the sync is printed too.
2. Sequential write of --size (default 1G) into one file through the view,
   closed, against ``dd bs=1M conv=fdatasync`` to a plain file (target: at
   least 0.5x dd's speed).
3. Random 4 KiB writes into provisioned blocks of a simulated thin device
   (ThinDevice.write, flushed at the end) against os.pwrite into a plain
   file of the same size (fdatasync at the end), written in full first as
   the device was (the kernel's dirty-page throttling makes that much slower
   than a posix_fallocate'd file, printed too): IOPS of each.

Usage: python3 tools/bench/extfs_bench.py [--dir DIR] [--layer-size 200M]
           [--size 1G] [--ios 20000] [--only layer,seq,random]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from dmthin import Pool  # noqa: E402
from dmthin.extfs import Filesystem, mkfs  # noqa: E402
from dmthin.graph import differ  # noqa: E402
from dmthin.graph.exttree import ExtTree  # noqa: E402
from dmthin.units import format_size, parse_size  # noqa: E402

MIB = 1 << 20
DOCKER_MKFS = ["-T", "default"]


def build_layer(src: Path, out: Path, limit: int) -> tuple[int, int]:
    """A tar of files under *src* up to *limit* bytes of content; returns
    (entries, content bytes)."""
    entries = total = 0
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            rel = os.path.relpath(dirpath, "/")
            tar.add(dirpath, arcname=rel, recursive=False)
            entries += 1
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                try:
                    st = os.lstat(full)
                    tar.add(full, arcname=os.path.join(rel, name), recursive=False)
                except OSError:
                    continue
                entries += 1
                if os.path.isfile(full) and not os.path.islink(full):
                    total += st.st_size
                if total >= limit:
                    return entries, total
    return entries, total


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def new_fs_device(base: Path, name: str, size: str | int, data: str | int):
    pool = Pool.create(base / name, data_size=data, metadata_size="1G")
    thin = pool.create_thin(1, size)
    mkfs(thin, "ext4", DOCKER_MKFS, workdir=base)
    return pool, thin


def bench_layer(base: Path, layer_size: int, trials: int) -> float:
    tar_path = base / "layer.tar"
    entries, content = build_layer(Path("/usr/share"), tar_path, layer_size)
    print(f"layer: {entries} entries, {content / MIB:.0f} MiB of file content, "
          f"tar {tar_path.stat().st_size / MIB:.0f} MiB (from /usr/share)")
    plain, synced, ours = [], [], []
    for i in range(trials):
        out = base / f"untar{i}"
        out.mkdir()
        plain.append(timed(lambda out=out: subprocess.run(
            ["tar", "-x", "-f", str(tar_path), "-C", str(out)], check=True)))
        shutil.rmtree(out)
        out.mkdir()

        def untar_sync(out=out) -> None:
            subprocess.run(["tar", "-x", "-f", str(tar_path), "-C", str(out)], check=True)
            subprocess.run(["sync", "-f", str(out)], check=True)
        synced.append(timed(untar_sync))
        shutil.rmtree(out)
        pool, thin = new_fs_device(base, f"layerpool{i}", "10G", "20G")
        try:
            def apply(thin=thin) -> None:
                with Filesystem(thin, write=True) as fs, open(tar_path, "rb") as f:
                    differ.apply_layer(ExtTree(fs), f)
            ours.append(timed(apply))
        finally:
            pool.close()
            shutil.rmtree(base / f"layerpool{i}")
    p, s, o = min(plain), min(synced), min(ours)
    print(f"tar -x: best {p:.2f} s; tar -x + sync -f: best {s:.2f} s")
    print(f"view apply + close (pool commit): best {o:.2f} s of "
          f"{', '.join(f'{x:.2f}' for x in ours)}")
    print(f"ratio view/(tar -x + sync) = {o / s:.2f}x   (view/tar -x = {o / p:.2f}x; "
          "target within 3x)")
    tar_path.unlink()
    return o / s


def bench_sequential(base: Path, size: int, trials: int) -> float:
    count = size // MIB
    buf = random.Random(1).randbytes(MIB)
    dd, ours = [], []
    for i in range(trials):
        plain = base / "dd.out"
        dd.append(timed(lambda plain=plain: subprocess.run(
            ["dd", "if=/dev/zero", f"of={plain}", "bs=1M", f"count={count}", "conv=fdatasync",
             "status=none"], check=True)))
        plain.unlink()
        pool, thin = new_fs_device(base, f"seqpool{i}", size + size // 4 // MIB * MIB,
                                   2 * size + (512 << 20))
        try:
            class Source:
                left = size

                def read(self, n: int) -> bytes:
                    n = min(n, self.left, MIB)
                    self.left -= n
                    return buf[:n]

            def write(thin=thin) -> None:
                with Filesystem(thin, write=True) as fs:
                    fs.write_file("big", Source())
            ours.append(timed(write))
        finally:
            pool.close()
            shutil.rmtree(base / f"seqpool{i}")
    d, o = min(dd), min(ours)
    print(f"dd bs=1M count={count} conv=fdatasync: best {d:.2f} s ({size / MIB / d:.0f} MiB/s)")
    print(f"view write_file of {format_size(size)} + close: best {o:.2f} s of "
          f"{', '.join(f'{x:.2f}' for x in ours)} ({size / MIB / o:.0f} MiB/s)")
    print(f"ratio view/dd speed = {d / o:.2f}x   (target at least 0.5x)")
    return d / o


def bench_random(base: Path, size: int, ios: int) -> float:
    rnd = random.Random(2)
    offsets = [rnd.randrange(size // 4096) * 4096 for _ in range(ios)]
    block = rnd.randbytes(4096)
    zero = bytes(MIB)
    plain_iops = {}
    for prep in ("written", "fallocated"):
        plain = base / "pwrite.out"
        fd = os.open(plain, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if prep == "written":             # as the thin device: every block written first
                for i in range(size // MIB):
                    os.pwrite(fd, zero, i * MIB)
                os.fdatasync(fd)
            else:
                os.posix_fallocate(fd, 0, size)
            t0 = time.perf_counter()
            for off in offsets:
                os.pwrite(fd, block, off)
            os.fdatasync(fd)
            plain_iops[prep] = ios / (time.perf_counter() - t0)
        finally:
            os.close(fd)
            plain.unlink()
    pool = Pool.create(base / "randpool", data_size=2 * size, metadata_size="256M")
    try:
        thin = pool.create_thin(1, size)
        for i in range(size // MIB):                 # provision every block first
            thin.write(i * MIB, zero)
        thin.flush()
        t0 = time.perf_counter()
        for off in offsets:
            thin.write(off, block)
        thin.flush()
        sim_iops = ios / (time.perf_counter() - t0)
    finally:
        pool.close()
        shutil.rmtree(base / "randpool")
    print(f"random 4 KiB writes, {ios} into {format_size(size)}: simulated thin device "
          f"{sim_iops:.0f} IOPS; os.pwrite into a plain file written the same way first "
          f"{plain_iops['written']:.0f} IOPS (ratio {sim_iops / plain_iops['written']:.2f}), "
          f"into a posix_fallocate'd one {plain_iops['fallocated']:.0f} IOPS")
    return sim_iops


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", help="work directory (default: a temporary one under /tmp)")
    ap.add_argument("--layer-size", default="200M", help="file content of the layer (200M)")
    ap.add_argument("--size", default="1G", help="sequential file size (1G)")
    ap.add_argument("--ios", type=int, default=20000, help="random writes (20000)")
    ap.add_argument("--trials", type=int, default=2, help="runs of each (best is used)")
    ap.add_argument("--only", default="layer,seq,random", help="which benchmarks")
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="extfs-bench-", dir=args.dir))
    which = set(args.only.split(","))
    try:
        if "layer" in which:
            bench_layer(base, parse_size(args.layer_size, "layer size"), args.trials)
        if "seq" in which:
            bench_sequential(base, parse_size(args.size, "size"), args.trials)
        if "random" in which:
            bench_random(base, 256 * MIB, args.ios)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
