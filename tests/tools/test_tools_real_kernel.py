"""The tools on metadata a real kernel wrote (qemu guest, ``real_dm``): a
pool made with dmthin's kernel backend -- a thin device, snapshots of
snapshots, random 64 KiB writes and discards -- then, pool deactivated,
``dmthin delta``/``rmap`` byte-identical to thin_delta/thin_rmap 0.9.0,
``dump -f xml1`` to thin_dump 1.1.0, ``check`` agreeing with both
thin_checks, repair of damaged copies passing both, packs interoperating.

The reference tools open files with O_DIRECT, which the guest's tmpfs
refuses: they read the files through read-only loop devices.
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmthin import Pool
from toolgen import THIN, Layout, blank, corrupt, dmthin, run

pytestmark = pytest.mark.real_dm

BLOCK = 64 << 10
SIZE = 32 << 20


@contextlib.contextmanager
def loop(path: Path) -> Iterator[str]:
    """A read-only loop device over *path* (for the O_DIRECT tools)."""
    dev = subprocess.run(["losetup", "-f", "--show", "-r", str(path)], capture_output=True,
                         text=True, check=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


@pytest.fixture(scope="module")
def kernel_pool(tmp_path_factory) -> Path:
    """The metadata file of a pool the kernel wrote and then let go."""
    base = tmp_path_factory.mktemp("deleteme-tools")
    rnd = random.Random(7)
    with Pool.create(base / "pool", data_size="256M", metadata_size="8M",
                     backend="kernel") as pool:
        pool.create_thin(1, SIZE)
        origin = pool.thin(1)
        for _ in range(150):
            origin.write(rnd.randrange(SIZE // BLOCK) * BLOCK, os.urandom(BLOCK))
        origin.write(0, os.urandom(4 << 20))                  # a sequential run
        pool.create_snap(2, 1)
        for _ in range(40):
            pool.thin(2).write(rnd.randrange(SIZE // BLOCK) * BLOCK, os.urandom(BLOCK))
        pool.create_snap(3, 2)
        for _ in range(30):
            pool.thin(3).write(rnd.randrange(SIZE // BLOCK) * BLOCK, os.urandom(BLOCK))
        pool.thin(1).discard(8 << 20, 4 << 20)
        for _ in range(20):
            origin.write(rnd.randrange(SIZE // BLOCK) * BLOCK, os.urandom(BLOCK))
    meta = base / "metadata-copy"
    shutil.copyfile(base / "pool" / "metadata", meta)
    return meta


def test_delta_and_rmap_match_090(kernel_pool, thin_tools_090):
    with loop(kernel_pool) as dev:
        for a, b in ((1, 2), (2, 3), (1, 3), (3, 1)):
            for extra in ([], ["--verbose"]):
                want = run([THIN["thin_delta"], *extra, "--snap1", a, "--snap2", b, dev])
                got = dmthin("delta", *extra, "--snap1", a, "--snap2", b, kernel_pool)
                assert (got.returncode, got.stdout) == (want.returncode, want.stdout), (a, b)
        for region in ("0..4096", "100..1000", "0..10", "3000..3100"):
            want = run([THIN["thin_rmap"], "--region", region, dev])
            got = dmthin("rmap", "--region", region, kernel_pool)
            assert (got.returncode, got.stdout) == (want.returncode, want.stdout), region


def test_dump_xml1_and_check_match_the_tools(kernel_pool, thin_tools_090, pdata_tools_110):
    with loop(kernel_pool) as dev:
        want = run([pdata_tools_110, "thin_dump", dev]).stdout
        assert "<def " in want or "<ref " in want or "<device" in want
        assert dmthin("dump", "-f", "xml1", kernel_pool).stdout == want
        assert dmthin("dump", kernel_pool).stdout == run([THIN["thin_dump"], dev]).stdout
        assert run([THIN["thin_check"], "-q", dev]).returncode == 0
        assert run([pdata_tools_110, "thin_check", "-q", dev]).returncode == 0
    assert dmthin("check", "-q", kernel_pool).returncode == 0


def test_repair_of_damaged_kernel_metadata(kernel_pool, tmp_path, thin_tools_090, pdata_tools_110):
    layout = Layout(kernel_pool)
    victims = [layout.leaves[2][len(layout.leaves[2]) // 2], layout.roots[3], layout.top[0]]
    for victim in victims:
        bad = shutil.copyfile(kernel_pool, tmp_path / "bad")
        corrupt(bad, victim)
        out = blank(tmp_path / "out", 8 << 20)
        p = dmthin("repair", "-i", bad, "-o", out)
        assert p.returncode == 0, p.stderr
        with loop(out) as dev:
            assert run([THIN["thin_check"], "-q", dev]).returncode == 0
            assert run([pdata_tools_110, "thin_check", "-q", dev]).returncode == 0


def test_packs_interoperate_on_kernel_metadata(kernel_pool, tmp_path, pdata_tools_110,
                                               thin_tools_090):
    ours, theirs = tmp_path / "ours.pack", tmp_path / "theirs.pack"
    assert dmthin("metadata-pack", "-i", kernel_pool, "-o", ours).returncode == 0
    with loop(kernel_pool) as dev:
        assert run([pdata_tools_110, "thin_metadata_pack", "-i", dev, "-o", theirs]).returncode == 0
        want = run([THIN["thin_dump"], dev]).stdout
    for pack in (ours, theirs):
        out = tmp_path / f"{pack.stem}.md"
        assert dmthin("metadata-unpack", "-i", pack, "-o", out).returncode == 0
        assert dmthin("dump", out).stdout == want
