"""Fidelity traces on the command line (tools/fidelity runs ``suite``).

  python -m tracelib run TRACE.jsonl --backend sim|kernel [--workdir DIR] [-o RESULT.json]
  python -m tracelib gen --seed N [--writes N] [--fill] [-o TRACE.jsonl]
  python -m tracelib compare KERNEL.json SIM.json
  python -m tracelib suite [--traces N] [--seed S] [--writes N] [--fill N]
                           [--backends kernel,sim] [--workdir DIR] [--out DIR] [TRACE...]

with tests/fidelity on PYTHONPATH.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dmthin.backend import BACKENDS, DEFAULT_BACKEND

from .compare import compare, report
from .format import save_trace
from .generate import generate
from .runner import run_trace
from .suite import suite, trace_files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tracelib", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="replay a trace on one backend")
    p.add_argument("trace")
    p.add_argument("--backend", choices=tuple(BACKENDS), default=DEFAULT_BACKEND)
    p.add_argument("--workdir", default="/tmp/dmthin-trace")
    p.add_argument("-o", "--output")
    p = sub.add_parser("gen", help="write a random trace")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--writes", type=int, default=300)
    p.add_argument("--fill", action="store_true", help="a pool small enough to fill")
    p.add_argument("-o", "--output")
    p = sub.add_parser("compare", help="compare a kernel result with a sim result")
    p.add_argument("kernel")
    p.add_argument("sim")
    p = sub.add_parser("suite", help="run traces on both backends, print the table")
    p.add_argument("traces", nargs="*")
    p.add_argument("--traces", dest="n_gen", type=int,
                   default=int(os.environ.get("DMTHIN_FIDELITY_TRACES", "4")),
                   help="generated traces (env DMTHIN_FIDELITY_TRACES; default 4)")
    p.add_argument("--seed", type=int, default=int(os.environ.get("DMTHIN_FIDELITY_SEED", "1")))
    p.add_argument("--writes", type=int, default=300)
    p.add_argument("--fill", type=int, default=0,
                   help="generated traces whose pool fills (timing-dependent, see gen)")
    p.add_argument("--backends", default="kernel,sim")
    p.add_argument("--workdir", default="/tmp/dmthin-fidelity")
    p.add_argument("--out", help="keep every result JSON here")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "run":
            res = run_trace(args.trace, args.backend, Path(args.workdir))
            text = json.dumps(res, indent=1)
            if args.output:
                Path(args.output).write_text(text)
            else:
                print(text)
        elif args.cmd == "gen":
            header, steps = generate(args.seed, args.writes, args.fill)
            if args.output:
                save_trace(args.output, header, steps)
            else:
                print(json.dumps(header))
                for s in steps:
                    print(json.dumps(s))
        elif args.cmd == "compare":
            kern = json.loads(Path(args.kernel).read_text())
            sim = json.loads(Path(args.sim).read_text())
            tally = compare(kern, sim)
            print(report(tally))
            return 0 if tally.ok() else 1
        else:
            backends = args.backends.split(",")
            print(f"fidelity suite: seed {args.seed}, {args.n_gen} generated traces "
                  f"+ {args.fill} that fill the pool (~{args.writes} writes each), "
                  f"backends {backends}", flush=True)
            tally = suite(trace_files(args.traces), args.n_gen, args.seed, args.writes,
                          backends, Path(args.workdir), Path(args.out) if args.out else None,
                          log=lambda m: print(m, flush=True), n_fill=args.fill)
            print(report(tally))
            return 0 if tally.ok() else 1
    except (OSError, ValueError) as err:
        print(f"tracelib: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
