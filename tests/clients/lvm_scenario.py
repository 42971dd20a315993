"""LVM thin pools with known contents, for the LVM tests.

:func:`build_pool` makes a volume group on a loop PV, a thin pool, a thin LV
with data of known content, snapshots of it and of its snapshots, writes and
discards in between, and records a digest of every thin LV.  The superblock
helpers read and set the needs_check flag of thin metadata (dm-thin's
superblock layout and checksum, independent of dmthin's code).
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

import crc32c

from client_docker import known_content
from client_env import content_digest, run
from client_lvm import Lvm

MiB = 1 << 20
THIN_MAGIC = 27022010
SUPERBLOCK_CSUM_XOR = 160774
NEEDS_CHECK = 1 << 0


@dataclass
class PoolScenario:
    """VG/POOL with thin LVs ``lvs`` and their ``digests`` (of their bytes)."""

    lvm: Lvm
    vg: str
    pool: str
    lvs: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)

    @property
    def tmeta(self) -> str:
        """The pool's metadata LV name (hidden: ``[POOL_tmeta]``)."""
        return self.pool + "_tmeta"

    def path(self, lv: str) -> str:
        """/dev/mapper path of one of its LVs."""
        return self.lvm.path(self.vg, lv)

    def tpool(self) -> str:
        """dm name of the pool's thin-pool target device (while active)."""
        return self.lvm.dm_name(self.vg, self.pool) + "-tpool"

    def activate(self) -> None:
        """Activate every LV of the VG (LVM runs thin_check first)."""
        self.lvm("vgchange", "-ay", self.vg)

    def deactivate(self) -> None:
        """Deactivate every LV of the VG."""
        self.lvm("vgchange", "-an", self.vg)

    def current_digests(self) -> dict[str, str]:
        """Digest of each thin LV's bytes now (all must be active)."""
        return {lv: content_digest(self.path(lv)) for lv in self.lvs}

    def pool_status(self) -> list[str]:
        """``dmsetup status`` of the thin-pool target, split."""
        return run(["dmsetup", "status", self.tpool()]).stdout.split()


def write_at(dev: str, offset: int, data: bytes) -> None:
    """Write *data* at *offset* of block device *dev* and flush it."""
    fd = os.open(dev, os.O_WRONLY)
    try:
        assert os.pwrite(fd, data, offset) == len(data)
        os.fsync(fd)
    finally:
        os.close(fd)


def discard(dev: str, offset: int, length: int) -> None:
    """BLKDISCARD a range of *dev* (util-linux blkdiscard)."""
    run(["blkdiscard", "-o", str(offset), "-l", str(length), dev])


def build_pool(lvm: Lvm, vg: str, *, snapshots: int = 3, pv_size: int = 384 * MiB,
               chunk: str = "64k") -> PoolScenario:
    """VG *vg* with pool ``pool`` (128 MiB data, 4 MiB metadata, *chunk*)
    holding ``base`` (48 MiB virtual), ``s1`` = snapshot of base, ``s2`` =
    snapshot of s1, ``s3`` = snapshot of s2 (*snapshots* of them), with
    writes and discards between the snapshots; every LV active on return,
    digests recorded."""
    dev = lvm.pv(pv_size, f"{vg}-pv")
    lvm.vgcreate(vg, dev)
    sc = PoolScenario(lvm, vg, "pool")
    lvm("lvcreate", "-q", "--type", "thin-pool", "-L", "128m", "--poolmetadatasize", "4m",
        "--chunksize", chunk, "-n", sc.pool, vg)
    lvm("lvcreate", "-q", "-V", "48m", "--thinpool", sc.pool, "-n", "base", vg)
    sc.lvs.append("base")
    base = sc.path("base")
    write_at(base, 0, known_content("base-0", 3 * MiB + 4096))
    write_at(base, 20 * MiB, known_content("base-20", 5 * MiB))
    write_at(base, 47 * MiB, known_content("base-47", MiB))
    prev = "base"
    for n, (off, length, disc) in enumerate(
            [(MiB, 256 * 1024, (20 * MiB, 2 * MiB)),
             (21 * MiB + 4096, 100_000, (0, MiB)),
             (36 * MiB, 3 * MiB, (47 * MiB, 512 * 1024))][:snapshots], start=1):
        snap = f"s{n}"
        # -kn: no activation-skip flag, so vgchange -ay activates snapshots too
        lvm("lvcreate", "-q", "-s", "-kn", "-n", snap, f"{vg}/{prev}")
        sc.lvs.append(snap)
        # the origin moves on after the snapshot (copy-on-write), the snapshot too
        write_at(sc.path(prev), off, known_content(f"{prev}-after-{snap}", length))
        write_at(sc.path(snap), off + 7 * MiB, known_content(f"{snap}-own", length))
        discard(sc.path(prev), *disc)
        prev = snap
    sc.digests = sc.current_digests()
    return sc


# ---------------------------------------------------------------- superblock

def superblock_checksum(block: bytes) -> int:
    """dm-thin's superblock checksum: CRC-32C over bytes 4.. without the
    final inversion, xor 160774 (dm_bm_checksum, SUPERBLOCK_CSUM_XOR)."""
    return (crc32c.crc32c(block[4:]) ^ 0xFFFFFFFF) ^ SUPERBLOCK_CSUM_XOR


def read_superblock(dev: str) -> bytes:
    """The 4 KiB superblock of thin metadata *dev*, validated (magic, checksum)."""
    fd = os.open(dev, os.O_RDONLY)
    try:
        block = os.pread(fd, 4096, 0)
    finally:
        os.close(fd)
    assert struct.unpack_from("<Q", block, 32)[0] == THIN_MAGIC, f"{dev}: no thin superblock"
    assert struct.unpack_from("<I", block, 0)[0] == superblock_checksum(block), \
        f"{dev}: superblock checksum does not match"
    return block


def superblock_flags(dev: str) -> int:
    """The superblock's flags field."""
    return int(struct.unpack_from("<I", read_superblock(dev), 4)[0])


def set_needs_check(dev: str) -> None:
    """Set the needs_check flag in the superblock of metadata *dev*."""
    block = bytearray(read_superblock(dev))
    flags = struct.unpack_from("<I", block, 4)[0]
    struct.pack_into("<I", block, 4, flags | NEEDS_CHECK)
    struct.pack_into("<I", block, 0, superblock_checksum(bytes(block)))
    write_at(dev, 0, bytes(block))
