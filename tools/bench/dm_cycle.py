#!/usr/bin/env python3
"""Benchmark: N x (create_thin + activate + deactivate + delete) on a real
thin pool, through dmthin's libdevmapper binding vs through ``dmsetup``
processes doing the same, plus the full ``dmthin.Pool`` facade (which also
rewrites pool.json each time).

Needs root and device-mapper: run it in the guest, from the repo root:

    tools/vmrun -- python3 tools/bench/dm_cycle.py [-n 200]

Prints one line per method and the binding/dmsetup speed ratio.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from dmthin import Pool
from dmthin.dm import loop, task
from dmthin.pooldir import device_prefix

THIN_SECTORS = 2048 * 100     # 100 MiB thin devices


def cycle_binding(pool: str, pool_dev: str, prefix: str, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        task.message(pool, f"create_thin {i}")
        name = f"{prefix}-{i}"
        task.create(name, [(0, THIN_SECTORS, "thin", f"{pool_dev} {i}")])
        task.remove(name)
        task.message(pool, f"delete {i}")
    return time.perf_counter() - t0


def cycle_dmsetup(pool: str, pool_dev: str, prefix: str, n: int) -> float:
    env = dict(os.environ, DM_DISABLE_UDEV="1")

    def dmsetup(*args: str) -> None:
        subprocess.run(["dmsetup", *args], check=True, env=env, stdout=subprocess.DEVNULL)
    t0 = time.perf_counter()
    for i in range(n):
        dmsetup("message", pool, "0", f"create_thin {i}")
        name = f"{prefix}-{i}"
        dmsetup("create", name, "--table", f"0 {THIN_SECTORS} thin {pool_dev} {i}")
        dmsetup("remove", name)
        dmsetup("message", pool, "0", f"delete {i}")
    return time.perf_counter() - t0


def cycle_facade(p: Pool, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        p.create_thin(i, THIN_SECTORS * 512)      # message + activate
        p.delete(i)                               # deactivate + message
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="cycles per method (default 200)")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="dm-cycle-deleteme-")
    with Pool.create(os.path.join(base, "pool"), data_size="1G", metadata_size="64M",
                     backend="kernel") as p:
        info = p.info()
        pool, pool_dev = info.device_name or "", info.pool_dev or ""
        prefix = device_prefix(p.path)
        task.message(pool, f"create_thin {10 ** 6}")     # warm up both paths once
        task.message(pool, f"delete {10 ** 6}")
        results = {}
        results["binding"] = cycle_binding(pool, pool_dev, prefix, args.n)
        results["dmsetup"] = cycle_dmsetup(pool, pool_dev, prefix, args.n)
        results["facade"] = cycle_facade(p, args.n)
        leftover = [d for d, _, _ in task.list_devices() if d != pool]
    for name, secs in results.items():
        print(f"{name:8s} {args.n} cycles  {secs:8.3f} s  {secs / args.n * 1e3:8.3f} ms/cycle")
    ratio = results["dmsetup"] / results["binding"]
    print(f"ratio dmsetup/binding = {ratio:.1f}x (target >= 10x); "
          f"dmsetup/facade = {results['dmsetup'] / results['facade']:.1f}x")
    print(f"left over: dm {leftover}, loops {[b for _, b in loop.list_attached() if base in b]}")
    return 0 if not leftover else 1


if __name__ == "__main__":
    sys.exit(main())
