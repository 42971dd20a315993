"""The CLI with ``--backend kernel`` in the guest: each command opens the
pool (attaching loop devices and loading the table) and tears it down on
exit, so the state lives in the files alone."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dmthin import Pool
from dmthin.dm import task

pytestmark = pytest.mark.real_dm
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def dmthin(*argv: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dmthin", *argv], cwd=ROOT, input=stdin,
                          capture_output=True, timeout=120)


def test_cli_round_trip_on_the_kernel(real_dm, tmp_path, tag):
    pooldir = str(tmp_path / tag / "pool")
    r = dmthin("pool", "create", "--backend", "kernel", "--data-size", "64M",
               "--metadata-size", "4M", pooldir)
    assert r.returncode == 0, r.stderr
    assert dmthin("thin", "create", "--size", "8M", pooldir, "1").returncode == 0
    r = dmthin("thin", "write", pooldir, "1", "--offset", "65536", stdin=b"written by the cli")
    assert r.returncode == 0, r.stderr
    # read back in-process (each CLI process costs seconds in the TCG guest)
    with Pool.open(pooldir) as pool:
        assert pool.backend == "kernel"
        assert pool.thin(1).read(65536, 18) == b"written by the cli"
    r = dmthin("thin", "create", "--size", "8M", pooldir, "1")
    assert r.returncode == 1
    err = r.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "File exists" in err[0] and "Traceback" not in r.stderr.decode()
    assert [d for d, _, _ in task.list_devices() if tag in d] == []


def test_cli_dm_version(real_dm):
    r = dmthin("dm", "version")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert f"Driver version:    {task.driver_version()}" in out and "Target thin-pool:" in out
