"""A real kernel loads ``dmthin restore`` output: the pool's status shows the
restored transaction id and data usage, thin devices read the restored
mappings (snapshot sharing included), new writes are provisioned from blocks
the restored data space map marks free, and the metadata the kernel then
commits passes thin_check and dumps as expected.

Runs as root with device-mapper (in the qemu guest: tools/vmrun -- python3
-m pytest -m real_dm tests/cli/test_tools_real_dm.py).  Names and files
carry the tag ``deleteme`` so leftovers are swept.
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import uuid

import pytest

pytestmark = pytest.mark.real_dm

BLOCK_SECTORS = 128
BLOCK = BLOCK_SECTORS * 512
NR_DATA = 64


def sh(*argv) -> str:
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60)
    if p.returncode:
        raise AssertionError(f"{' '.join(map(str, argv))}: {p.stderr.strip()}")
    return p.stdout


def pattern(b: int) -> bytes:
    return struct.pack("<Q", 0xD0D0_0000_0000 + b) * (BLOCK // 8)


XML = """<superblock uuid="" time="1" transaction="42" data_block_size="128" nr_data_blocks="64">
  <device dev_id="1" mapped_blocks="5" transaction="0" creation_time="0" snap_time="1">
    <range_mapping origin_begin="0" data_begin="10" length="4" time="0"/>
    <single_mapping origin_block="100" data_block="50" time="0"/>
  </device>
  <device dev_id="2" mapped_blocks="5" transaction="0" creation_time="1" snap_time="1">
    <range_mapping origin_begin="0" data_begin="10" length="4" time="0"/>
    <single_mapping origin_block="7" data_block="0" time="1"/>
  </device>
</superblock>
"""
USED = {10, 11, 12, 13, 50, 0}


@pytest.fixture
def stack(tmp_path):
    tag = f"deleteme-{uuid.uuid4().hex[:8]}"
    meta = tmp_path / f"{tag}-meta"
    data = tmp_path / f"{tag}-data"
    meta.write_bytes(b"")
    os.truncate(meta, 4 << 20)
    with open(data, "wb") as f:
        for b in range(NR_DATA):
            f.write(pattern(b))
    made = {"loops": [], "dms": []}
    yield tag, meta, data, made
    for name in reversed(made["dms"]):
        subprocess.run(["dmsetup", "remove", "--retry", name], capture_output=True)
    for loopdev in made["loops"]:
        subprocess.run(["losetup", "-d", loopdev], capture_output=True)


def test_kernel_uses_restored_metadata(stack, tmp_path):
    tag, meta, data, made = stack
    xml = tmp_path / "in.xml"
    xml.write_text(XML)
    # Restore straight into the metadata block device (as onto a real LV).  The
    # tools open with O_DIRECT, which the guest's tmpfs refuses: they read the loop.
    mloop = sh("losetup", "--find", "--show", meta).strip()
    made["loops"].append(mloop)
    sh(sys.executable, "-m", "dmthin", "restore", "-i", xml, "-o", mloop)
    sh("thin_check", "-q", mloop)
    dloop = sh("losetup", "--find", "--show", data).strip()
    made["loops"].append(dloop)
    pool = f"{tag}-pool"
    sh("dmsetup", "create", pool, "--table",
       f"0 {NR_DATA * BLOCK_SECTORS} thin-pool {mloop} {dloop} {BLOCK_SECTORS} 0 "
       "1 skip_block_zeroing")
    made["dms"].append(pool)
    status = sh("dmsetup", "status", pool).split()
    # 0 <len> thin-pool <trans> <meta used/total> <data used/total> ...
    assert status[3] == "42"
    assert status[5] == f"{len(USED)}/{NR_DATA}"

    thins = {}
    for dev in (1, 2):
        name = f"{tag}-thin{dev}"
        sh("dmsetup", "create", name, "--table",
           f"0 {200 * BLOCK_SECTORS} thin /dev/mapper/{pool} {dev}")
        made["dms"].append(name)
        thins[dev] = f"/dev/mapper/{name}"

    def read_vblock(dev: int, v: int) -> bytes:
        fd = os.open(thins[dev], os.O_RDONLY)
        try:
            return os.pread(fd, BLOCK, v * BLOCK)
        finally:
            os.close(fd)

    for v in range(4):
        assert read_vblock(1, v) == pattern(10 + v)
        assert read_vblock(2, v) == pattern(10 + v)
    assert read_vblock(1, 100) == pattern(50)
    assert read_vblock(2, 7) == pattern(0)
    assert read_vblock(1, 5) == bytes(BLOCK)            # unmapped reads zeroes

    # A new write is provisioned from a block the restored space map says is free.
    fd = os.open(thins[1], os.O_WRONLY)
    try:
        os.pwrite(fd, b"\x5a" * BLOCK, 150 * BLOCK)
        os.fsync(fd)
    finally:
        os.close(fd)
    # A metadata snapshot held by the live pool: dump -m and ls -m read it
    # from the live device like the tools do.
    sh("dmsetup", "message", pool, "0", "reserve_metadata_snap")
    held = sh("dmsetup", "status", pool).split()[6]
    assert held != "-"
    for ours, theirs in ((["dump", "-m"], ["thin_dump", "-m"]),
                         (["ls", "-m", "-o", "DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS"],
                          ["thin_ls", "-m", "-o",
                           "DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS"])):
        assert sh(sys.executable, "-m", "dmthin", *ours, mloop) == sh(*theirs, mloop)
    sh("dmsetup", "message", pool, "0", "release_metadata_snap")

    for name in reversed(made["dms"]):
        sh("dmsetup", "remove", name)
    made["dms"].clear()

    sh("thin_check", "-q", mloop)
    dumped = sh("thin_dump", mloop)
    assert 'origin_block="150"' in dumped
    line = next(ln for ln in dumped.splitlines() if 'origin_block="150"' in ln)
    new_block = int(line.split('data_block="')[1].split('"')[0])
    assert new_block not in USED and 0 <= new_block < NR_DATA
    fd = os.open(dloop, os.O_RDONLY)
    try:
        assert os.pread(fd, BLOCK, new_block * BLOCK) == b"\x5a" * BLOCK
    finally:
        os.close(fd)
