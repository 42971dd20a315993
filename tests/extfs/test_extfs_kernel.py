"""The view against the kernel's ext4 (real_dm: root and device-mapper, in
the qemu guest): what the view writes on a kernel thin device, the
kernel's mount reads back exactly, and what the kernel writes, the view
reads exactly; e2fsck finds both clean."""
import os
import stat
import subprocess
from pathlib import Path

import pytest

from dmthin import Pool
from dmthin.extfs import Filesystem

pytestmark = pytest.mark.real_dm
NS = 1_000_000_000
ENV = dict(os.environ, PATH="/usr/sbin:/usr/bin:/sbin:/bin")


def run(*argv):
    subprocess.run(argv, check=True, env=ENV, capture_output=True)


@pytest.fixture
def kthin(tmp_path):
    pool = Pool.create(tmp_path / "pool", data_size="256M", metadata_size="16M",
                       backend="kernel")
    try:
        thin = pool.create_thin(1, "64M")
        # Docker's options, and the geometry of its 10G base (4K blocks) on a small device
        run("mkfs.ext4", "-q", "-T", "default", "-E",
            "nodiscard,lazy_itable_init=0,lazy_journal_init=0", thin.path)
        yield thin, tmp_path / "mnt"
    finally:
        pool.close()


def snapshot_os(root):
    """{path: (mode, uid, gid, nlink, size, mtime_ns, content, target, rdev, xattrs)}"""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            full = os.path.join(dirpath, n)
            rel = os.path.relpath(full, root)
            if rel == "lost+found":
                continue
            s = os.lstat(full)
            content = Path(full).read_bytes() if stat.S_ISREG(s.st_mode) else None
            target = os.readlink(full) if stat.S_ISLNK(s.st_mode) else None
            xattrs = {} if stat.S_ISLNK(s.st_mode) else \
                {k: os.getxattr(full, k) for k in os.listxattr(full)}
            out[rel] = (s.st_mode, s.st_uid, s.st_gid, s.st_nlink, s.st_size if content else 0,
                        s.st_mtime_ns, content, target, s.st_rdev, xattrs)
    return out


def snapshot_view(fs):
    out = {}
    for rel, s in fs.walk():
        if rel == "lost+found":
            continue
        content = fs.read(rel) if s.is_reg else None
        target = fs.readlink(rel) if s.is_symlink else None
        xattrs = {} if s.is_symlink else {k: fs.getxattr(rel, k) for k in fs.listxattr(rel)}
        out[rel] = (s.st_mode, s.st_uid, s.st_gid, s.st_nlink, s.st_size if content else 0,
                    s.st_mtime_ns, content, target, s.st_rdev, xattrs)
    return out


def test_the_kernel_reads_what_the_view_wrote(kthin):
    thin, mnt = kthin
    with Filesystem(thin, write=True) as fs:
        fs.mkdir("d", 0o2755, 7, 8)
        fs.write_file("d/f", os.urandom(200_000), 0o640, 1, 2, mtime_ns=(1 << 33) * NS + 5)
        fs.link("d/f", "d/g")
        fs.symlink("f", "d/s")
        fs.symlink("y" * 300, "d/slow")
        fs.mknod("d/c", stat.S_IFCHR | 0o600, os.makedev(259, 300000))
        fs.mkfifo("d/p")
        fs.setxattr("d/f", "user.k", b"v")
        fs.setxattr("d", "trusted.t", b"x" * 3000)
        fs.pwrite("d/f", b"tail", 5 << 20)
        fs.truncate("d/f", 3 << 20)
        for i in range(500):
            fs.write_file(f"d/many-{i:04d}", str(i).encode())
        fs.utime("d", (NS, 2 * NS))
        want = snapshot_view(fs)
    run("e2fsck", "-fn", thin.path)
    mnt.mkdir()
    run("mount", "-t", "ext4", thin.path, str(mnt))
    try:
        assert snapshot_os(mnt) == want
    finally:
        run("umount", str(mnt))


def test_the_view_reads_what_the_kernel_wrote(kthin):
    thin, mnt = kthin
    mnt.mkdir()
    run("mount", "-t", "ext4", thin.path, str(mnt))
    try:
        os.makedirs(mnt / "a/b")
        (mnt / "a/b/f").write_bytes(os.urandom(1 << 20))
        (mnt / "a/empty").write_bytes(b"")
        os.link(mnt / "a/b/f", mnt / "a/h")
        os.symlink("../a/b", mnt / "a/s")
        os.mknod(mnt / "a/blk", stat.S_IFBLK | 0o660, os.makedev(8, 1))
        os.chown(mnt / "a/b", 100000, 65534)
        os.setxattr(mnt / "a/b/f", "user.x", b"1" * 100)
        with open(mnt / "a/sparse", "wb") as f:
            f.seek(10 << 20)
            f.write(b"end")
        for i in range(300):
            (mnt / "a/b" / f"n{i}").write_text(str(i))
        os.utime(mnt / "a", ns=(-NS, 1_700_000_000 * NS + 123))
        want = snapshot_os(mnt)
    finally:
        run("umount", str(mnt))
    with Filesystem(thin) as fs:
        assert snapshot_view(fs) == want
    with Filesystem(thin, write=True) as fs:       # and the view can change it cleanly
        fs.rmtree("a/b")
        fs.unlink("a/h")
    run("e2fsck", "-fn", thin.path)
