#!/usr/bin/env python3
"""Benchmarks of the simulated pool (dmthin.sim).

1. Sequential 1 MiB writes of --size (default 1 GiB) into a new thin device,
   flushed at the end, against ``dd bs=1M count=N conv=fdatasync`` into a
   plain file on the same filesystem (target: at least 0.5x dd's speed).
2. Random 4 KiB writes and reads into a provisioned device of --size: IOPS
   and CPU microseconds per I/O (time.process_time, steadier than wall time
   on a loaded machine), against os.pwrite/os.pread into a plain file
   written in full the same way first (no flush per write, a flush after
   each run, as a page-cache block device).
3. create_snap of a device with --mappings (default 1,000,000) mappings
   against one of an empty device (target: within 2x).  The big device's
   metadata is built by thin_restore from generated XML (one range), then
   opened by the simulator.
4. Peak memory: ru_maxrss and tracemalloc's peak during each phase.

Usage: python3 tools/bench/sim_io.py [--dir DIR] [--size 1G] [--mappings N]
           [--trials 3] [--ios 50000] [--skip-sequential] [--skip-snapshot]
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from dmthin import Pool  # noqa: E402
from dmthin.pooldir import PoolDir  # noqa: E402
from dmthin.units import format_size, parse_size  # noqa: E402

MIB = 1 << 20


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase(name, trace=False):
    """Time a block; with *trace*, also tracemalloc's peak (slows the block)."""
    class Phase:
        def __enter__(self):
            if trace:
                tracemalloc.start()
            self.t0 = time.perf_counter()
            return self

        def __exit__(self, *exc):
            self.seconds = time.perf_counter() - self.t0
            extra = ""
            if trace:
                _cur, self.peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                extra = f", python heap peak {self.peak / MIB:.1f} MiB"
            print(f"  [{name}] {self.seconds:.2f} s{extra}, maxrss {maxrss_mib():.0f} MiB",
                  flush=True)
    return Phase()


def dd_seconds(base: Path, count: int) -> float:
    plain = base / "dd.out"
    t0 = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={plain}", "bs=1M", f"count={count}",
                    "conv=fdatasync", "status=none"], check=True)
    seconds = time.perf_counter() - t0
    plain.unlink()
    return seconds


def sim_sequential(base: Path, size: int, buf: bytes, trace=False) -> float:
    path = base / "seq"
    pool = Pool.create(path, data_size=max(2 * size, 1 << 30), metadata_size="256M")
    try:
        thin = pool.create_thin(1, size)
        with phase("sequential writes", trace) as ph:
            for i in range(size // MIB):
                thin.write(i * MIB, buf)
            thin.flush()
    finally:
        pool.close()
        shutil.rmtree(path)
    return ph.seconds


def bench_sequential(base: Path, size: int, trials: int) -> float:
    buf = bytes(random.Random(1).randbytes(MIB))
    count = size // MIB
    dd = []
    sim = []
    for _ in range(trials):            # interleaved: the machine is shared and noisy
        dd.append(dd_seconds(base, count))
        sim.append(sim_sequential(base, size, buf))
    dd_s, sim_s = min(dd), min(sim)
    print(f"dd bs=1M count={count} conv=fdatasync: best {dd_s:.2f} s of "
          f"{', '.join(f'{x:.2f}' for x in dd)} ({size / MIB / dd_s:.0f} MiB/s)")
    print(f"sim sequential 1 MiB writes of {format_size(size)} + flush: best {sim_s:.2f} s of "
          f"{', '.join(f'{x:.2f}' for x in sim)} ({size / MIB / sim_s:.0f} MiB/s)")
    print(f"ratio sim/dd speed = {dd_s / sim_s:.2f}x")
    print("python heap during a 64 MiB sequential run (tracemalloc):")
    sim_sequential(base, 64 * MIB, buf, trace=True)
    return dd_s / sim_s


def timed_loop(fn, offsets) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of fn(offset) for each offset."""
    t0, c0 = time.perf_counter(), time.process_time()
    for off in offsets:
        fn(off)
    return time.perf_counter() - t0, time.process_time() - c0


def bench_random(base: Path, size: int, ios: int, trials: int) -> float:
    """Random 4 KiB writes and reads into a provisioned device against
    os.pwrite/os.pread into a plain file written in full the same way; best
    of *trials* rounds (interleaved).  CPU time (time.process_time) is
    steadier than wall time on a shared machine.  Returns the sim/pwrite
    IOPS ratio."""
    path = base / "rand"
    plain = base / "plain"
    pool = Pool.create(path, data_size=max(2 * size, 1 << 30), metadata_size="256M")
    fd = os.open(plain, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        thin = pool.create_thin(1, size)
        buf = bytes(MIB)
        for i in range(size // MIB):           # provision every block first
            thin.write(i * MIB, buf)
            os.pwrite(fd, buf, i * MIB)
        thin.flush()
        os.fdatasync(fd)
        rnd = random.Random(2)
        offsets = [rnd.randrange(size // 4096) * 4096 for _ in range(ios)]
        block = rnd.randbytes(4096)
        runs: dict[str, list[tuple[float, float]]] = {}
        for _ in range(trials):
            for name, fn in (("sim write", lambda off: thin.write(off, block)),
                             ("os.pwrite", lambda off: os.pwrite(fd, block, off)),
                             ("sim read", lambda off: thin.read(off, 4096)),
                             ("os.pread", lambda off: os.pread(fd, 4096, off))):
                runs.setdefault(name, []).append(timed_loop(fn, offsets))
            thin.flush()
            os.fdatasync(fd)
        best = {name: (min(w for w, _c in r), min(c for _w, c in r)) for name, r in runs.items()}
        for name, (wall, cpu) in best.items():
            print(f"random 4 KiB {name}: {ios / wall:.0f} IOPS, {cpu / ios * 1e6:.2f} us CPU "
                  f"per I/O (best of {trials} x {ios} into {format_size(size)})")
        ratio = best["os.pwrite"][0] / best["sim write"][0]
        print(f"ratio sim/os.pwrite IOPS = {ratio:.2f}x (CPU "
              f"{best['os.pwrite'][1] / best['sim write'][1]:.2f}x); sim/os.pread IOPS = "
              f"{best['os.pread'][0] / best['sim read'][0]:.2f}x")
        return ratio
    finally:
        os.close(fd)
        pool.close()
        shutil.rmtree(path)
        plain.unlink()


def build_big(path: Path, mappings: int) -> None:
    """A pool whose device 1 has *mappings* mappings (thin_restore)."""
    data_size = (mappings + 1024) * 65536
    meta_size = max(64 * MIB, mappings * 48)
    with Pool.create(path, data_size=data_size, metadata_size=meta_size) as pool:
        pool.create_thin(2, "1G")          # the empty device
        pool.create_thin(1, mappings * 65536)
    nr = data_size // 65536
    xml = path / "big.xml"
    xml.write_text(
        f'<superblock uuid="" time="0" transaction="0" flags="0" version="2" '
        f'data_block_size="128" nr_data_blocks="{nr}">\n'
        f'  <device dev_id="1" mapped_blocks="{mappings}" transaction="0" creation_time="0" '
        f'snap_time="0">\n'
        f'    <range_mapping origin_begin="0" data_begin="0" length="{mappings}" time="0"/>\n'
        f'  </device>\n'
        f'  <device dev_id="2" mapped_blocks="0" transaction="0" creation_time="0" '
        f'snap_time="0">\n  </device>\n</superblock>\n')
    subprocess.run(["thin_restore", "-i", str(xml), "-o", str(PoolDir(path).metadata_path)],
                   check=True, capture_output=True)
    xml.unlink()


def bench_snapshot(base: Path, mappings: int) -> float:
    path = base / "snap"
    t0 = time.perf_counter()
    build_big(path, mappings)
    print(f"built a device with {mappings} mappings by thin_restore in "
          f"{time.perf_counter() - t0:.1f} s")
    times = {}
    with Pool.open(path) as pool:
        for origin, new in ((2, 12), (1, 11)):
            with phase(f"create_snap of device {origin}") as ph:
                pool.message(f"create_snap {new} {origin}")
            times[origin] = ph.seconds
        with phase("write into the big origin after the snapshot") as ph:
            pool.thin(1).write(123 * 65536, b"x" * 65536)
            pool.thin(1).flush()
    print(f"create_snap (message + commit): empty device {times[2] * 1000:.1f} ms, "
          f"{mappings} mappings {times[1] * 1000:.1f} ms; ratio {times[1] / times[2]:.2f}x")
    r = subprocess.run(["thin_check", str(PoolDir(path).metadata_path)], capture_output=True)
    print(f"thin_check after the snapshot: exit {r.returncode}")
    shutil.rmtree(path)
    return times[1] / times[2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", help="work directory (default: a temporary one under /tmp)")
    ap.add_argument("--size", default="1G", help="sequential write size (default 1G)")
    ap.add_argument("--mappings", type=int, default=1_000_000,
                    help="mappings of the big snapshot origin (default 1000000)")
    ap.add_argument("--trials", type=int, default=3,
                    help="sequential and random runs (best is used)")
    ap.add_argument("--ios", type=int, default=50000, help="random I/Os per run (50000)")
    ap.add_argument("--skip-sequential", action="store_true")
    ap.add_argument("--skip-snapshot", action="store_true")
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="dmthin-bench-", dir=args.dir))
    try:
        size = parse_size(args.size)
        ratio = None if args.skip_sequential else bench_sequential(base, size, args.trials)
        rand = bench_random(base, size, args.ios, args.trials)
        snap = None if args.skip_snapshot else bench_snapshot(base, args.mappings)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print("summary: "
          + ("" if ratio is None else f"sequential speed {ratio:.2f}x dd (target >= 0.5x); ")
          + f"random 4 KiB writes {rand:.2f}x os.pwrite"
          + ("" if snap is None else f"; snapshot big/empty {snap:.2f}x (target <= 2x)")
          + f"; peak RSS {maxrss_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
