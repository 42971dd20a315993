"""The hand-written traces (tests/traces) and generated ones, on each backend."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from .compare import Tally, compare
from .format import TRACES_DIR, save_trace
from .generate import generate
from .runner import run_trace


def trace_files(names: Iterable[str]) -> list[Path]:
    """The traces named, or every hand-written one."""
    names = list(names)
    if names:
        return [Path(n) for n in names]
    return sorted(TRACES_DIR.glob("*.jsonl"))


def suite(files: list[Path], n_gen: int, seed: int, writes: int, backends: list[str],
          workdir: Path, out: Path | None, log: Callable[[str], None] = print,
          n_fill: int = 0) -> Tally:
    """Run hand-written and generated traces (*n_gen* that never fill the
    pool, *n_fill* that do) on each backend and compare."""
    workdir.mkdir(parents=True, exist_ok=True)
    gen_dir = workdir / "generated"
    gen_dir.mkdir(exist_ok=True)
    for k in range(n_gen + n_fill):
        header, steps = generate(seed + k, writes, fill=k >= n_gen)
        path = gen_dir / f"{header['name']}.jsonl"
        save_trace(path, header, steps)
        files.append(path)
    tally = Tally()
    for path in files:
        results = {}
        for backend in backends:
            try:
                res = run_trace(path, backend, workdir)
            except Exception as err:  # noqa: BLE001 - one trace must not stop the suite
                log(f"trace {path}: {backend} failed: {err!r}")
                tally.add("trace ran to the end", False, f"{path} on {backend}", repr(err))
                continue
            results[backend] = res
            log(f"trace {res['trace']}: {backend} {len(res['steps'])} steps in "
                f"{res['seconds']} s")
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                (out / f"{res['trace']}.{backend}.json").write_text(json.dumps(res))
        if "kernel" in results and "sim" in results:
            compare(results["kernel"], results["sim"], tally)
    return tally
