"""The simulator against the real kernel, trace by trace.

Each hand-written trace of tests/traces/ and N generated ones (env
DMTHIN_FIDELITY_TRACES, default 2; seeds from DMTHIN_FIDELITY_SEED, default
1; about DMTHIN_FIDELITY_WRITES=150 block writes each; DMTHIN_FIDELITY_FILL
more whose pool fills, timing-dependent: see tracelib.generate) run through
the public Pool API on the kernel backend and on the simulator; after every step the
pool status, thin status lines, event counter and errno must agree, and at
the end the thin_dump/thin_ls output, every device's bytes and the used
metadata blocks.  The table of all comparisons is printed at the end of the
session.  Runs in the qemu guest (tools/vmrun) as root."""
from __future__ import annotations

import os

import pytest

import tracelib as trace_tool

pytestmark = pytest.mark.real_dm

N_GEN = int(os.environ.get("DMTHIN_FIDELITY_TRACES", "2"))
SEED = int(os.environ.get("DMTHIN_FIDELITY_SEED", "1"))
WRITES = int(os.environ.get("DMTHIN_FIDELITY_WRITES", "150"))
N_FILL = int(os.environ.get("DMTHIN_FIDELITY_FILL", "0"))

CASES = [pytest.param(p, id=p.stem) for p in trace_tool.trace_files(())] + \
        [pytest.param((SEED + k, False), id=f"gen-{SEED + k}") for k in range(N_GEN)] + \
        [pytest.param((SEED + k, True), id=f"gen-{SEED + k}-fill") for k in range(N_FILL)]


@pytest.mark.parametrize("case", CASES)
def test_trace_agrees(case, tmp_path, session_tally):
    if isinstance(case, tuple):
        seed, fill = case
        header, steps = trace_tool.generate(seed, WRITES, fill)
        path = tmp_path / f"{header['name']}.jsonl"
        trace_tool.save_trace(path, header, steps)
        print(f"generated trace seed {seed}, fill={fill}, {WRITES} writes: {path}")
    else:
        path = case
    kern = trace_tool.run_trace(path, "kernel", tmp_path)
    sim = trace_tool.run_trace(path, "sim", tmp_path)
    tally = trace_tool.compare(kern, sim)
    trace_tool.compare(kern, sim, session_tally)
    assert kern["final"]["check"]["rc"] == 0, kern["final"]["check"]["err"]
    assert tally.ok(), trace_tool.report(tally)
