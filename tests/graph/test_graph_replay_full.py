"""The docker-article replay at full scale on both backends (real_dm, slow:
about an hour under the guest's emulation, so only on request):

    DMTHIN_FULL_REPLAY=1 tools/vmrun --timeout 5400 -- .venv/bin/python -m pytest \\
        -m real_dm tests/graph/test_graph_replay_full.py

The simulator's pool must follow the kernel's at every step: data blocks
used within 1% (measured: 0.04-0.6%), scratch space beside the pool's
files under 1 GB."""
import os
import threading
from pathlib import Path

import pytest

from dmthin.graph.replay import Replay

pytestmark = [pytest.mark.real_dm, pytest.mark.slow, pytest.mark.skipif(
    os.environ.get("DMTHIN_FULL_REPLAY") != "1",
    reason="the full-scale replay takes about an hour in the guest: set DMTHIN_FULL_REPLAY=1")]


def scratch_peak(root: Path, stop: threading.Event, out: list[int]) -> None:
    """Peak bytes under *root* outside the pool's data and metadata files."""
    while not stop.wait(1.0):
        total = 0
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                p = Path(dirpath) / f
                if p.parent.name == "devicemapper" and f in ("data", "metadata"):
                    continue
                try:
                    total += p.stat().st_blocks * 512
                except OSError:
                    pass
        out.append(total)


def run(backend: str, root: Path) -> tuple[list[int], int]:
    stop, peaks = threading.Event(), [0]
    t = threading.Thread(target=scratch_peak, args=(root, stop, peaks), daemon=True)
    t.start()
    try:
        steps = Replay(str(root), backend=backend, scale=1.0, out=lambda line: None).run()
    finally:
        stop.set()
        t.join()
    return [s.data_used for s in steps], max(peaks)


def test_full_scale_replay_follows_the_kernel(tmp_path):
    share = Path(os.environ.get("DMTHIN_REPLAY_DIR", tmp_path))
    kernel, _ = run("kernel", share / "kernel")
    sim, scratch = run("sim", share / "sim")
    for k, s in zip(kernel, sim, strict=True):
        assert abs(s - k) <= 0.01 * k, (kernel, sim)
    assert scratch < 1 << 30
