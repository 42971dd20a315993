"""Helpers of the extfs tests (a uniquely named module, so test files
never import a ``conftest``)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from dmthin import Pool
from dmthin.extfs import mkfs

E2FSCK = "/sbin/e2fsck"


def new_device(root: Path, size: str = "64M", data: str = "256M", fs_args: tuple = ()):
    """A simulated pool under *root* and thin device 1 of *size*, formatted
    with Docker's mkfs options; returns (pool, thin)."""
    pool = Pool.create(root / "pool", data_size=data, metadata_size="16M")
    thin = pool.create_thin(1, size)
    mkfs(thin, "ext4", ["-T", "default", *fs_args], workdir=root)
    return pool, thin


def export(thin, path: Path) -> Path:
    """The device's bytes in a sparse file (the test's own copy: e2fsck and
    the kernel's view need a file; the code under test never copies)."""
    with open(path, "wb") as f:
        f.truncate(thin.size)
        pos = 0
        while pos < thin.size:
            buf = thin.read(pos, 1 << 20)
            if buf.count(0) != len(buf):
                f.seek(pos)
                f.write(buf)
            pos += len(buf)
    return path


def fsck(thin, workdir: Path) -> str:
    """``e2fsck -fn`` of an export of *thin*; AssertionError unless clean."""
    img = export(thin, workdir / "fsck.img")
    try:
        proc = subprocess.run([E2FSCK, "-fn", str(img)], capture_output=True, text=True,
                              check=False)
    finally:
        os.unlink(img)
    assert proc.returncode == 0, f"e2fsck found problems:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout
