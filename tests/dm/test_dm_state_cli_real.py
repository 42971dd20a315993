"""``dmthin pool activate|deactivate`` and ``dmthin thin activate|deactivate``
on the real kernel: state that outlives each command, seen by dmsetup."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dmthin.dm import loop, task
from dmthin.pooldir import device_prefix

pytestmark = pytest.mark.real_dm
ROOT = Path(__file__).resolve().parents[2]


def dmthin(*argv: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dmthin", *map(str, argv)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def ok(*argv: object) -> str:
    r = dmthin(*argv)
    assert r.returncode == 0, f"{argv}: {r.stderr}"
    return r.stdout


def test_activation_outlives_each_command(real_dm, tmp_path, tag):
    p = tmp_path / tag / "pool"
    ok("pool", "create", p, "--backend", "kernel", "--data-size", "64M",
       "--metadata-size", "4M")
    prefix = device_prefix(p)
    assert not task.exists(f"{prefix}-pool")              # a command leaves nothing active
    ok("thin", "create", p, 1, "--size", "8M")
    name = f"{tag}-docker-pool"
    assert ok("pool", "activate", p, "--name", name).strip() == f"/dev/mapper/{name}"
    assert task.exists(name)
    node = ok("thin", "activate", p, 1, "--name", f"{tag}-one").strip()
    assert node == f"/dev/mapper/{tag}-one" and os.path.exists(node)
    with open(node, "r+b", buffering=0) as f:
        f.write(b"seen by the next command".ljust(4096, b"\0"))
    assert ok("thin", "read", p, 1, "--length", "24") == "seen by the next command"
    assert task.exists(f"{tag}-one")                      # read attached, left it
    ok("thin", "deactivate", p, 1)
    assert not task.exists(f"{tag}-one") and task.exists(name)
    r = dmthin("pool", "create", p, "--backend", "kernel", "--force", "--data-size", "64M",
               "--metadata-size", "4M")
    assert r.returncode == 1 and "in use" in r.stderr    # never format a live pool
    ok("pool", "deactivate", p)
    assert not task.exists(name)
    assert not [n for n, b in loop.list_attached() if str(p) in b]
    ok("pool", "deactivate", p)                           # nothing active: fine


def test_thin_deactivate_refuses_a_device_in_use(real_dm, tmp_path, tag):
    p = tmp_path / tag / "pool"
    ok("pool", "create", p, "--backend", "kernel", "--data-size", "64M",
       "--metadata-size", "4M")
    ok("thin", "create", p, 2, "--size", "8M")
    node = ok("thin", "activate", p, 2).strip()
    fd = os.open(node, os.O_RDONLY)
    try:
        r = dmthin("thin", "deactivate", p, 2)
        assert r.returncode == 1 and "busy" in r.stderr.lower(), r.stderr
        r = dmthin("pool", "deactivate", p)
        assert r.returncode == 1 and "in use" in r.stderr, r.stderr
        assert os.path.exists(node)
    finally:
        os.close(fd)
    ok("pool", "deactivate", p)
    assert not os.path.exists(node)
