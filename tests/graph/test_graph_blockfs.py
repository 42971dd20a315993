"""The image mirror: only chunks the tools touched go back to the thin
device, as writes (zeros included) or, for punched ranges, discards."""
import os

import pytest

from dmthin import Pool
from dmthin.graph.blockfs import ImageMirror, probe_fs_type

BS = 64 << 10


@pytest.fixture
def pool(tmp_path, backend):
    with Pool.create(tmp_path / "pool", data_size="32M", metadata_size="8M",
                     backend=backend) as p:
        yield p


def test_export_is_sparse_and_sync_writes_only_touched_chunks(pool, tmp_path):
    thin = pool.create_thin(1, "4M")
    thin.write(3 * BS, b"\x07" * BS)
    thin.write(10 * BS, bytes(BS))                 # provisioned but zero: exported as a hole
    m = ImageMirror.export(thin, tmp_path / "img", BS)
    assert os.path.getsize(m.path) == 4 << 20
    assert os.stat(m.path).st_blocks * 512 <= 2 * BS
    with open(m.path, "rb") as f:
        f.seek(3 * BS)
        assert f.read(BS) == b"\x07" * BS
    snap = pool.create_snap(2, 1)
    m2 = ImageMirror.export(snap, tmp_path / "img2", BS)
    with open(m2.path, "r+b") as f:
        f.seek(3 * BS + 100)
        f.write(b"x")                              # changes one shared chunk
        f.seek(20 * BS)
        f.write(bytes(4096))                       # zeros into a hole: the kernel provisions
    before = pool.status().used_data_blocks
    assert m2.sync() == 2
    assert pool.status().used_data_blocks == before + 2
    assert snap.read(3 * BS + 100, 1) == b"x" and thin.read(3 * BS + 100, 1) == b"\x07"
    assert snap.status().mapped_sectors == (3 * BS) // 512     # blocks 3, 10, 20
    assert m2.sync() == 0                                        # nothing new


def test_punched_chunks_become_discards(pool, tmp_path):
    thin = pool.create_thin(1, "4M")
    thin.write(0, b"\1" * (4 * BS))
    m = ImageMirror.export(thin, tmp_path / "img", BS)
    fd = os.open(m.path, os.O_RDWR)
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
        rc = libc.fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
                            ctypes.c_long(BS), ctypes.c_long(2 * BS))
        assert rc == 0, ctypes.get_errno()
    finally:
        os.close(fd)
    assert m.sync() == 2
    assert thin.status().mapped_sectors == (2 * BS) // 512
    assert thin.read(BS, BS) == bytes(BS)


def test_probe_fs_type(tmp_path):
    img = tmp_path / "x.img"
    img.write_bytes(bytes(0x10048))
    with pytest.raises(Exception, match="Unknown filesystem type"):
        probe_fs_type(str(img))
    data = bytearray(0x10048)
    data[0x438:0x43a] = b"\x53\xef"
    img.write_bytes(bytes(data))
    assert probe_fs_type(str(img)) == "ext4"
    data[0x438:0x43a] = b"\0\0"
    data[0:4] = b"XFSB"
    img.write_bytes(bytes(data))
    assert probe_fs_type(str(img)) == "xfs"
