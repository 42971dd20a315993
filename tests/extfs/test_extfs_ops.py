"""The filesystem view on a simulated thin device: every operation, its
errors, and e2fsck (1.47) on an export finding each filesystem it wrote
clean.  Expected values are the kernel's ext4 rules (documented inline)."""
import errno
import hashlib
import os
import stat

import crc32c
import pytest

from dmthin import Pool
from dmthin.errors import BackendUnavailable, InvalidArgument, NoSpace, NotSupported
from dmthin.extfs import Filesystem, _binding, errors, mkfs, probe_fs_type, read_uuid
from extfs_helpers import fsck, new_device

NS = 1_000_000_000


def test_every_kind_of_entry_round_trips_and_fsck_is_clean(device, tmp_path):
    pool, thin = device
    with Filesystem(thin, write=True) as fs:
        fs.mkdir("d", 0o1705, 1, 2)
        fs.write_file("d/f", b"Some data", 0o4222, 3, 4, mtime_ns=1_600_000_000 * NS + 123456789)
        fs.symlink("f", "d/short")
        fs.symlink("x" * 200, "d/long")                  # a slow symlink: one block
        fs.link("d/f", "d/hard")
        fs.mknod("d/chr", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        fs.mknod("d/blk", stat.S_IFBLK | 0o660, os.makedev(259, 300000))   # new_encode_dev
        fs.mkfifo("d/fifo", 0o640, 5, 6)
        fs.mknod("d/sock", stat.S_IFSOCK | 0o755)
        fs.setxattr("d/f", "user.k", b"v" * 100)
        fs.setxattr("d/f", "security.capability", b"\x01\x00\x00\x02" + bytes(16))
    with Filesystem(thin) as fs:
        got = dict(fs.walk())
        assert stat.S_IMODE(got["d"].st_mode) == 0o1705 and (got["d"].st_uid, got["d"].st_gid) \
            == (1, 2)
        f = got["d/f"]
        assert stat.S_ISREG(f.st_mode) and stat.S_IMODE(f.st_mode) == 0o4222
        assert (f.st_uid, f.st_gid, f.st_size, f.st_nlink) == (3, 4, 9, 2)
        assert f.st_mtime_ns == 1_600_000_000 * NS + 123456789
        assert got["d/hard"].st_ino == f.st_ino
        assert fs.read("d/hard") == b"Some data" and fs.read("d/short") == b"Some data"
        assert fs.readlink("d/short") == "f" and fs.readlink("d/long") == "x" * 200
        assert got["d/chr"].st_rdev == os.makedev(1, 3) and stat.S_ISCHR(got["d/chr"].st_mode)
        assert got["d/blk"].st_rdev == os.makedev(259, 300000)
        assert stat.S_ISFIFO(got["d/fifo"].st_mode) and got["d/fifo"].st_uid == 5
        assert stat.S_ISSOCK(got["d/sock"].st_mode)
        assert sorted(fs.listxattr("d/f")) == ["security.capability", "user.k"]
        assert fs.getxattr("d/f", "user.k") == b"v" * 100
        assert set(fs.listdir("")) == {"lost+found", "d"}
    fsck(thin, tmp_path)
    pool.close()


@pytest.mark.parametrize("sec", [0, -1, -(1 << 31), (1 << 31) - 1, 1 << 31, (1 << 33) + 5,
                                 -(1 << 31) + (3 << 32)])
def test_times_keep_nanoseconds_and_epoch_bits(device, sec):
    """ext4 stores 32 signed bits of seconds plus two epoch bits: 1901..2446."""
    _, thin = device
    with Filesystem(thin, write=True) as fs:
        fs.write_file("t", b"", mtime_ns=sec * NS + 999_999_999, atime_ns=sec * NS + 1)
    with Filesystem(thin) as fs:
        st = fs.stat("t")
        assert (st.st_mtime_ns, st.st_atime_ns) == (sec * NS + 999_999_999, sec * NS + 1)


def test_changes_set_ctime_and_parent_mtime(device):
    _, thin = device
    with Filesystem(thin, write=True) as fs:
        fs.mkdir("d")
        fs.utime("d", (NS, NS))
        fs.write_file("d/f", b"x")
        assert fs.stat("d").st_mtime_ns > NS              # entry added
        fs.utime("d", (NS, NS))
        before = fs.stat("d/f").st_ctime_ns
        fs.chmod("d/f", 0o600)
        assert fs.stat("d/f").st_ctime_ns >= before and fs.stat("d").st_mtime_ns == NS
        fs.unlink("d/f")
        assert fs.stat("d").st_mtime_ns > NS              # entry removed


def test_hard_links_count_and_the_last_one_frees_the_blocks(device, tmp_path):
    _, thin = device
    with Filesystem(thin, write=True) as fs:
        free0 = fs.info()["free_blocks"]
        fs.write_file("a", os.urandom(1 << 20))
        fs.link("a", "b")
        fs.link("a", "c")
        assert fs.stat("c").st_nlink == 3
        fs.write_file("b", b"new")                        # in place: every name sees it
        assert fs.read("a") == b"new" and fs.read("c") == b"new"
        fs.write_file("a", os.urandom(1 << 20))
        fs.unlink("a")
        fs.unlink("b")
        assert fs.stat("c").st_nlink == 1 and len(fs.read("c")) == 1 << 20
        fs.unlink("c")
        fs.sync()                                 # freed blocks are free after a commit
        assert fs.info()["free_blocks"] == free0
        with pytest.raises(errors.FsError) as e:
            fs.link("lost+found", "x")
        assert e.value.errno == errno.EPERM
    fsck(thin, tmp_path)


def test_truncate_and_pwrite_as_the_kernel(device, tmp_path):
    """Shrinking zeroes the rest of a partial last block; growing and writing
    past the end leave holes that read as zeros and use no blocks."""
    _, thin = device
    with Filesystem(thin, write=True) as fs:
        fs.write_file("f", b"\xff" * 10000)
        fs.truncate("f", 5000)
        fs.truncate("f", 10000)
        assert fs.read("f") == b"\xff" * 5000 + bytes(5000)
        fs.pwrite("f", b"end", (64 << 20) - 3 - 4096 * 100)
        st = fs.stat("f")
        assert st.st_size == (64 << 20) - 4096 * 100 and st.st_blocks <= 4 * 8
        assert fs.read("f", 1 << 20, 4096) == bytes(4096)
        fs.pwrite("f", b"abc", 4998)                      # across the old partial block
        assert fs.read("f", 4990, 16) == b"\xff" * 8 + b"abc" + bytes(5)
        with pytest.raises(IsADirectoryError):
            fs.truncate("lost+found", 0)
    fsck(thin, tmp_path)


def test_large_files_and_directories(device, tmp_path):
    _, thin = device
    data = os.urandom(20 << 20)
    with Filesystem(thin, write=True) as fs:
        fs.write_file("big", data)
        fs.mkdir("many")
        for i in range(3000):                             # grows the directory to many blocks
            fs.write_file(f"many/file-with-a-long-name-{i:05d}", str(i).encode())
        for i in range(0, 3000, 3):
            fs.unlink(f"many/file-with-a-long-name-{i:05d}")
    with Filesystem(thin) as fs:
        assert hashlib.sha256(fs.read("big")).digest() == hashlib.sha256(data).digest()
        with fs.open("big") as f:
            f.seek(12345)
            assert f.read(100) == data[12345:12445]
        names = fs.listdir("many")
        assert len(names) == 2000 and fs.read("many/file-with-a-long-name-02999") == b"2999"
    fsck(thin, tmp_path)


def test_freed_blocks_are_reused_after_a_commit_as_ext4s(device, tmp_path):
    """ext4 reuses no block freed in the running journal transaction: a file
    written after a delete gets fresh blocks (the pool provisions new ones),
    until the space runs out (then the commit comes early) or a sync."""
    pool, thin = device
    with Filesystem(thin, write=True) as fs:
        fs.write_file("old", bytes(24 << 20))
    used0 = int(pool.status().used_data_blocks)
    with Filesystem(thin, write=True) as fs:
        fs.unlink("old")
        fs.write_file("new", bytes(8 << 20))     # not into old's blocks
    used1 = int(pool.status().used_data_blocks)
    assert used1 - used0 >= 8 << 20 >> 16
    with Filesystem(thin, write=True) as fs:
        fs.unlink("new")
        fs.write_file("big", bytes(40 << 20))    # more than is free without old's blocks
        assert fs.stat("big").st_size == 40 << 20
    used2 = int(pool.status().used_data_blocks)
    with Filesystem(thin, write=True) as fs:
        fs.unlink("big")
        fs.sync()
        fs.write_file("again", bytes(8 << 20))   # after a commit: freed blocks reused
    assert int(pool.status().used_data_blocks) - used2 <= 2
    fsck(thin, tmp_path)


def test_errors_carry_the_kernels_errno(device):
    _, thin = device
    with Filesystem(thin, write=True) as fs:
        fs.mkdir("d")
        fs.write_file("d/f", b"x")
        cases = [(lambda: fs.stat("nope"), errno.ENOENT), (lambda: fs.mkdir("d"), errno.EEXIST),
                 (lambda: fs.stat("d/f/x"), errno.ENOTDIR),
                 (lambda: fs.write_file("d/f/x", b""), errno.ENOTDIR),
                 (lambda: fs.unlink("d"), errno.EISDIR), (lambda: fs.rmdir("d/f"), errno.ENOTDIR),
                 (lambda: fs.rmdir("d"), errno.ENOTEMPTY),
                 (lambda: fs.getxattr("d/f", "user.none"), errno.ENODATA),
                 (lambda: fs.removexattr("d/f", "user.none"), errno.ENODATA),
                 (lambda: fs.symlink("t", "d/f"), errno.EEXIST),
                 (lambda: fs.read("d"), errno.EISDIR),
                 (lambda: fs.mkdir("x" * 256), errno.ENAMETOOLONG)]
        fs.symlink("loop", "loop")
        cases.append((lambda: fs.read("loop"), errno.ELOOP))
        for call, code in cases:
            with pytest.raises(OSError) as e:  # noqa: PT011 - the errno is the check
                call()
            assert e.value.errno == code
        with pytest.raises(FileNotFoundError) as nope:
            fs.stat("nope")
        assert isinstance(nope.value, errors.NoEntry)
    with Filesystem(thin) as fs:
        with pytest.raises(errors.ReadOnlyFs) as e:
            fs.mkdir("ro")
        assert e.value.errno == errno.EROFS


def test_symlinks_resolve_inside_the_view(device):
    """Absolute targets and .. stay inside a chroot view, as a container sees them."""
    _, thin = device
    with Filesystem(thin, write=True) as fs:
        fs.makedirs("rootfs/etc")
        fs.write_file("rootfs/etc/hosts", b"inside")
        fs.write_file("hosts", b"outside")
        root = fs.chroot("rootfs")
        root.symlink("/etc", "link")
        root.symlink("../../../etc/hosts", "up")
        assert root.read("link/hosts") == b"inside" and root.read("up") == b"inside"
        assert root.read("/etc/../etc/hosts") == b"inside"
        with pytest.raises(FileNotFoundError):         # from the whole fs: /etc is not there
            fs.read("rootfs/link/hosts")
        assert root.lstat("link").is_symlink and root.stat("link").is_dir


def test_snapshot_copy_on_write_and_unchanged_metadata_not_rewritten(tmp_path):
    """A file written in a snapshot leaves the origin as it was, and the
    snapshot breaks sharing only for blocks that changed: libext2fs rewrites
    all bitmaps and descriptors on close, the view skips identical ones."""
    pool, thin = new_device(tmp_path)
    with Filesystem(thin, write=True) as fs:
        fs.write_file("base", b"origin")
    pool.create_snap(2, 1)
    snap = pool.thin(2)
    used0 = int(pool.status().used_data_blocks)
    with Filesystem(snap, write=True) as fs:
        fs.write_file("base", b"snapshot")
        fs.write_file("new", b"n")
    used = int(pool.status().used_data_blocks) - used0
    with Filesystem(thin) as fs:
        assert fs.read("base") == b"origin" and not fs.exists("new")
    with Filesystem(snap) as fs:
        assert fs.read("base") == b"snapshot" and fs.read("new") == b"n"
    # superblock/descriptors/bitmaps (block group 0 area), the inode table block, the root
    # directory block and the data block: a handful of 64K pool blocks, not every bitmap
    assert used <= 6, used
    fsck(snap, tmp_path)
    pool.close()


def test_pool_out_of_space_reaches_the_caller(tmp_path):
    pool = Pool.create(tmp_path / "pool", data_size="24M", metadata_size="4M",
                       features=("error_if_no_space",))
    thin = pool.create_thin(1, "64M")
    mkfs(thin, "ext4", ["-T", "default"], workdir=tmp_path)
    with pytest.raises(NoSpace), Filesystem(thin, write=True) as fs:
        fs.write_file("big", os.urandom(40 << 20))
    pool.close()


def test_filesystem_full_is_enospc(device):
    _, thin = device
    with Filesystem(thin, write=True) as fs:
        with pytest.raises(errors.FsNoSpace) as e:
            fs.write_file("huge", bytes(80 << 20))
        assert e.value.errno == errno.ENOSPC


def test_format_identity_and_refusals(tmp_path):
    pool = Pool.create(tmp_path / "pool", data_size="128M", metadata_size="8M")
    thin = pool.create_thin(1, "32M")
    with pytest.raises(InvalidArgument):
        Filesystem(thin)                                 # nothing formatted yet
    with pytest.raises(NotSupported, match=r"dm.fs=ext4"):
        mkfs(thin, "xfs", workdir=tmp_path)
    mkfs(thin, "ext4", ["-U", "12345678-1234-1234-1234-123456789abc"], workdir=tmp_path)
    assert probe_fs_type(thin) == "ext4"
    assert read_uuid(thin) == "12345678-1234-1234-1234-123456789abc"
    assert not any(p.name.startswith(".mkfs") for p in tmp_path.iterdir())
    pool.close()


def test_journal_needing_recovery_is_refused_for_writing(device):
    _, thin = device
    sb = bytearray(thin.read(1024, 1024))
    incompat = int.from_bytes(sb[0x60:0x64], "little") | 0x4          # RECOVER
    sb[0x60:0x64] = incompat.to_bytes(4, "little")
    sb[1020:1024] = (crc32c.crc32c(bytes(sb[:1020])) ^ 0xFFFFFFFF).to_bytes(4, "little")
    thin.write(1024, bytes(sb))
    with Filesystem(thin) as fs:
        assert "lost+found" in fs.listdir()
    with pytest.raises(errors.Corrupted, match="journal needs recovery"):
        Filesystem(thin, write=True)


def test_without_the_binding_the_error_names_the_package(device, monkeypatch):
    _, thin = device
    monkeypatch.setattr(_binding, "ffi", None)
    with pytest.raises(BackendUnavailable, match="libext2fs-dev"):
        Filesystem(thin)
