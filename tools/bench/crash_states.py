#!/usr/bin/env python3
"""Crash states of simulated pools, every cut of every seed's write log.

  tools/bench/crash_states.py [--seeds 1-5] [--ops 120] [--random 3] [--limit N]

For each seed, a random workload runs on a sim pool whose metadata and data
files share a write log (dmthin.pdata.writelog); every prefix of the log is
replayed with the unflushed writes dropped, kept, reordered or torn, and
each state is checked (tests/hardening/crashlib.py: reopens at a committed
transaction, no unflushed write on a block it uses, thin_check 0.9.0 and
1.1.0 pass, every sector reads back a committed or later value).  Prints one
JSON line per seed and the totals; exits 1 if any state failed.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "hardening"))

import helpers  # noqa: E402
from crashlib import check_states, describe, run_workload  # noqa: E402


def seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=seeds, default=seeds("1-5"), help="e.g. 1-5 (default)")
    ap.add_argument("--ops", type=int, default=120, help="operations per workload")
    ap.add_argument("--random", type=int, default=3, help="random states per cut")
    ap.add_argument("--limit", type=int, default=None, help="at most N states per seed")
    args = ap.parse_args()
    tools = [[helpers.thin_tools_090()["thin_check"]], [helpers.pdata_tools_110(), "thin_check"]]
    total = {"states": 0, "cuts": 0, "torn": 0, "reordered": 0, "thin_check_runs": 0,
             "failures": 0, "seconds": 0.0}
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="dmthin-crash-") as tmp:
            t = time.monotonic()
            rec = run_workload(Path(tmp) / "pool", seed, args.ops)
            v = check_states(rec, Path(tmp) / "scratch", tools, seed,
                             random_per_cut=args.random, limit=args.limit)
            secs = time.monotonic() - t
        line = json.loads(describe(v, rec.log))
        line.update(seed=seed, seconds=round(secs, 1))
        print(json.dumps(line), flush=True)
        for f in v.failures[:5]:
            print("  FAIL", f, flush=True)
        for key in ("states", "cuts", "torn", "reordered", "thin_check_runs", "failures"):
            total[key] += line[key]
        total["seconds"] += secs
    total["seconds"] = round(total["seconds"], 1)
    print("total", json.dumps(total))
    return 1 if total["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
