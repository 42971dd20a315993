"""A hypothesis model of file operations: every generated operation runs on
the ext4 view of a simulated thin device and, through ``os``, on a plain
directory of the host; both must succeed or fail with the same errno, and
afterwards hold the same tree (types, modes, owners, sizes, link counts,
symlink targets, device numbers, contents, xattrs, times that were set).
At the end the view's filesystem is reopened and e2fsck finds it clean."""
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dmthin.extfs import Filesystem
from extfs_helpers import fsck, new_device

ROOT = os.geteuid() == 0
NAMES = st.sampled_from(["a", "b", "c", "d", "a/b", "a/c", "a/b/d", "c/a", "b/b", "lnk/x"])
DATA = st.binary(max_size=9000) | st.builds(lambda n, b: bytes([b]) * n,
                                            st.integers(0, 300_000), st.integers(0, 255))
TIME = st.integers(-(1 << 31), (1 << 34)).map(lambda s: s * 1_000_000_000) | \
    st.integers(0, 2_000_000_000_000_000_000)


def outcome(call):
    """("ok", value) or ("err", errno) of *call*."""
    try:
        return "ok", call()
    except OSError as e:
        return "err", e.errno


class FsModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="extfs-model-"))
        self.pool, self.thin = new_device(self.tmp, size="32M", data="128M")
        self.fs = Filesystem(self.thin, write=True)
        self.ref = self.tmp / "ref"
        self.ref.mkdir()
        os.chmod(self.ref, 0o755)
        self.timed: set[str] = set()       # paths whose mtime was set explicitly since

    def teardown(self):
        try:
            self.fs.close()
            with Filesystem(self.thin) as fs:        # reopened: everything was written out
                assert self.tree(fs) == self.ref_tree()
            fsck(self.thin, self.tmp)
        finally:
            self.pool.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def p(self, name: str) -> Path:
        return self.ref / name

    def both(self, view_call, ref_call):
        got, want = outcome(view_call), outcome(ref_call)
        assert got[0] == want[0] and (got[0] == "ok" or got[1] == want[1]), (got, want)
        self.timed.clear()         # any change may move a compared mtime to "now"
        return got

    def regular(self, name: str) -> Path:
        """The reference path, refusing (EINVAL, as the view) to open a fifo or
        device node: the host would block on a fifo or write to a real device."""
        p = self.p(name)
        try:
            mode = os.stat(p).st_mode
        except FileNotFoundError:
            return p
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise OSError(errno.EINVAL, "not a regular file")
        return p

    # -- operations ---------------------------------------------------------------------
    @rule(name=NAMES, mode=st.sampled_from([0o755, 0o700, 0o1777, 0o2750]))
    def mkdir(self, name, mode):
        def ref():
            os.mkdir(self.p(name))
            os.chmod(self.p(name), mode)
        self.both(lambda: self.fs.mkdir(name, mode), ref)

    @rule(name=NAMES, data=DATA, mode=st.sampled_from([0o644, 0o600, 0o4755]))
    def write_file(self, name, data, mode):
        def ref():
            p = self.regular(name)
            existed = os.path.exists(p)
            with open(p, "wb") as f:
                f.write(data)
            if not existed:
                os.chmod(p, mode)
        self.both(lambda: self.fs.write_file(name, data, mode), ref)

    @rule(name=NAMES, data=DATA, offset=st.integers(0, 300_000))
    def pwrite(self, name, data, offset):
        def ref():
            if os.path.isdir(self.p(name)):
                raise IsADirectoryError(errno.EISDIR, name)
            fd = os.open(self.regular(name), os.O_WRONLY)
            try:
                os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
        self.both(lambda: self.fs.pwrite(name, data, offset), ref)

    @rule(name=NAMES, size=st.integers(0, 400_000))
    def truncate(self, name, size):
        self.both(lambda: self.fs.truncate(name, size),
                  lambda: os.truncate(self.regular(name), size))

    # relative targets that stay inside the reference directory (absolute ones would reach
    # the host's own files there; the view resolves them inside itself: test_extfs_ops)
    @rule(name=NAMES, dest=st.sampled_from(["a", "b/c", "c/../a", "nowhere", "x" * 80]))
    def symlink(self, name, dest):
        self.both(lambda: self.fs.symlink(dest, name), lambda: os.symlink(dest, self.p(name)))

    @rule(src=NAMES, dst=NAMES)
    def link(self, src, dst):
        self.both(lambda: self.fs.link(src, dst),
                  lambda: os.link(self.p(src), self.p(dst), follow_symlinks=False))

    @rule(name=NAMES)
    def unlink(self, name):
        self.both(lambda: self.fs.unlink(name), lambda: os.unlink(self.p(name)))

    @rule(name=NAMES)
    def rmdir(self, name):
        self.both(lambda: self.fs.rmdir(name), lambda: os.rmdir(self.p(name)))

    @rule(name=NAMES)
    def rmtree(self, name):
        def ref():
            if stat.S_ISDIR(os.lstat(self.p(name)).st_mode):
                shutil.rmtree(self.p(name))
            else:
                os.unlink(self.p(name))
        self.both(lambda: self.fs.remove(name), ref)

    @rule(name=NAMES, mode=st.integers(0, 0o7777))
    def chmod(self, name, mode):
        self.both(lambda: self.fs.chmod(name, mode), lambda: os.chmod(self.p(name), mode))

    @precondition(lambda self: ROOT)
    @rule(name=NAMES, uid=st.sampled_from([-1, 0, 1, 65535, 100000]),
          gid=st.sampled_from([-1, 0, 7, 70000]))
    def chown(self, name, uid, gid):
        self.both(lambda: self.fs.chown(name, uid, gid),
                  lambda: os.chown(self.p(name), uid, gid, follow_symlinks=False))

    @rule(name=NAMES, atime=TIME, mtime=TIME)
    def utime(self, name, atime, mtime):
        got = self.both(lambda: self.fs.utime(name, (atime, mtime)),
                        lambda: os.utime(self.p(name), ns=(atime, mtime), follow_symlinks=False))
        if got[0] == "ok":
            self.timed.add(name)        # compared by the invariant right after this step

    @precondition(lambda self: ROOT)
    @rule(name=NAMES, kind=st.sampled_from(["fifo", "chr", "blk"]),
          dev=st.sampled_from([(1, 3), (8, 17), (259, 300000), (4095, 1048575)]))
    def mknod(self, name, kind, dev):
        mode = {"fifo": stat.S_IFIFO | 0o640, "chr": stat.S_IFCHR | 0o600,
                "blk": stat.S_IFBLK | 0o660}[kind]
        rdev = os.makedev(*dev) if kind != "fifo" else 0

        def ref():
            os.mknod(self.p(name), mode, rdev)
            os.chmod(self.p(name), stat.S_IMODE(mode))
        self.both(lambda: self.fs.mknod(name, mode, rdev), ref)

    @rule(name=NAMES, key=st.sampled_from(["user.a", "user.bb", "trusted.t"]),
          value=st.binary(max_size=600))
    def setxattr(self, name, key, value):
        if key.startswith("trusted.") and not ROOT:
            return
        self.both(lambda: self.fs.setxattr(name, key, value),
                  lambda: os.setxattr(self.p(name), key, value, follow_symlinks=False))

    @rule(name=NAMES, key=st.sampled_from(["user.a", "user.bb", "trusted.t"]))
    def removexattr(self, name, key):
        if key.startswith("trusted.") and not ROOT:
            return
        self.both(lambda: self.fs.removexattr(name, key),
                  lambda: os.removexattr(self.p(name), key, follow_symlinks=False))

    @rule(name=NAMES, offset=st.integers(0, 300_000), size=st.integers(-1, 70_000))
    def read(self, name, offset, size):
        def ref():
            with open(self.regular(name), "rb") as f:
                f.seek(offset)
                return f.read(size)
        self.both(lambda: self.fs.read(name, offset, size), ref)

    # -- the same tree ---------------------------------------------------------------------
    def tree(self, fs):
        out = {}
        for path, s in fs.walk():
            if path == "lost+found":
                continue
            out[path] = self.describe(
                path, s, lambda path=path: fs.read(path), lambda path=path: fs.readlink(path),
                lambda path=path: {k: fs.getxattr(path, k) for k in fs.listxattr(path)})
        return out

    def ref_tree(self):
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.ref):
            for n in dirnames + filenames:
                full = os.path.join(dirpath, n)
                path = os.path.relpath(full, self.ref)
                s = os.lstat(full)

                def content(full=full, s=s):
                    with open(full, "rb") as f:
                        return f.read()
                out[path] = self.describe(
                    path, s, content if stat.S_ISREG(s.st_mode) else (lambda: None),
                    lambda full=full: os.readlink(full),
                    lambda full=full: {k: os.getxattr(full, k, follow_symlinks=False)
                                       for k in os.listxattr(full, follow_symlinks=False)})
        return out

    def describe(self, path, s, content, target, xattrs):
        mode = s.st_mode
        return (mode, s.st_uid if ROOT else None, s.st_gid if ROOT else None, s.st_nlink,
                s.st_size if not stat.S_ISDIR(mode) else None,
                content() if stat.S_ISREG(mode) else None,
                target() if stat.S_ISLNK(mode) else None,
                s.st_rdev if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else 0,
                {k: v for k, v in xattrs().items() if not k.startswith("security.")},
                s.st_mtime_ns if path in self.timed else None)

    @invariant()
    def same_tree(self):
        assert self.tree(self.fs) == self.ref_tree()


FsModel.TestCase.settings = settings(
    max_examples=int(os.environ.get("DMTHIN_MODEL_EXAMPLES", "40")), stateful_step_count=40,
    deadline=None, suppress_health_check=list(HealthCheck))
test_file_operations_match_a_plain_directory = FsModel.TestCase
