"""The guest side of the real-client tests: where the clients are, the guest
system they need, a scratch file system, commands, and content digests.

Docker's daemon and LVM2 come unpacked from Debian's packages by
tools/fetch-clients (tools/test exports the tree's root as $DMTHIN_CLIENTS).
They run only inside the tools/vmrun guest, where the host's root is
read-only and nothing they do can reach the host: dockerd wants a writable
``/etc`` and a cgroup2 mount, both prepared here for the guest alone.  The
thin tools open files with O_DIRECT, which the guest's tmpfs refuses, so the
clients' files live on a scratch ext4 (a sparse file on tmpfs, ``-o discard``
so deleted files give their memory back).

Importable by any test directory (``sys.path.insert(0, tests/clients)``).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import helpers

#: programs of the clients' tree, relative to its root
DOCKERD = "usr/sbin/dockerd"
DOCKER = "usr/bin/docker"
LVM = "sbin/lvm"

#: the scratch file system: a sparse file on the guest's tmpfs
SCRATCH_IMAGE = "/tmp/dmthin-clients-scratch.img"
SCRATCH_MOUNT = "/run/dmthin-clients"
SCRATCH_SIZE = 16 << 30

CHUNK = 1 << 20
_ZERO_CHUNK = bytes(CHUNK)


class ClientError(AssertionError):
    """A client command failed; the message holds its output."""


def run(argv: Sequence[str | os.PathLike[str]], *, check: bool = True, timeout: float = 300,
        env: dict[str, str] | None = None, input: bytes | None = None,
        cwd: str | os.PathLike[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run *argv*; text output captured.

    :raises ClientError: *check* and a non-zero exit (the message holds the
        command, its status and its output).
    """
    args = [os.fspath(a) for a in argv]
    p = subprocess.run(args, check=False, capture_output=True, timeout=timeout, env=env,
                       input=input, cwd=cwd)
    out = p.stdout.decode(errors="replace")
    err = p.stderr.decode(errors="replace")
    if check and p.returncode != 0:
        raise ClientError(f"{' '.join(args)} exited {p.returncode}:\n{out}{err}".rstrip())
    return subprocess.CompletedProcess(args, p.returncode, out, err)


def dmthin(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``dmthin ARGS`` run in this process (helpers.run_dmthin): under TCG a
    new Python process costs seconds to import dmthin, the command itself a
    fraction of that.  (LVM runs dmthin's console scripts as processes:
    tests/clients/test_lvm_tools.py.)

    :raises ClientError: *check* and a non-zero exit.
    """
    p = helpers.run_dmthin(*args, text=True)
    if check and p.returncode != 0:
        raise ClientError(f"dmthin {' '.join(args)} exited {p.returncode}:\n"
                          f"{p.stdout}{p.stderr}".rstrip())
    return p


def require_guest() -> None:
    """Skip (fail under CI) unless inside the tools/vmrun guest as root with
    device-mapper: the clients write to /etc and mount things."""
    missing = helpers.real_dm_missing()
    if missing is None and not helpers.in_vm():
        missing = "not inside the tools/vmrun guest (the real clients change /etc and mounts)"
    if missing is not None:
        helpers.skip_or_fail(f"real clients need the guest: {missing}; run "
                             "tools/test --guest-only tests/clients")


def clients_root() -> Path:
    """Root of the unpacked clients' tree: $DMTHIN_CLIENTS, else what
    tools/fetch-clients prints (it needs the network only the first time).

    Skips (fails under CI) when the tree is missing.
    """
    path = os.environ.get("DMTHIN_CLIENTS")
    if not path:
        fetch = helpers.TOOLS / "fetch-clients"
        try:
            p = subprocess.run([str(fetch), "--quiet"], check=False, capture_output=True,
                               text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            helpers.skip_or_fail(f"tools/fetch-clients did not run: {e}")
            raise  # unreachable: skip_or_fail raises
        if p.returncode != 0:
            helpers.skip_or_fail("tools/fetch-clients failed: " + p.stderr.strip())
        path = p.stdout.strip().splitlines()[-1]
    root = Path(path)
    for rel in (DOCKERD, DOCKER, LVM):
        if not os.access(root / rel, os.X_OK):
            helpers.skip_or_fail(f"{root / rel} missing: run tools/fetch-clients")
    return root


def mounted(path: str) -> str | None:
    """The file system type mounted at *path*, or None."""
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[1] == path:
                return fields[2]
    return None


@contextlib.contextmanager
def guest_system() -> Iterator[None]:
    """Make the guest fit for dockerd: a writable /etc (an overlay on the
    read-only host copy, or a copy bind-mounted over it) and cgroup2 at
    /sys/fs/cgroup.  Undone on exit."""
    undo: list[list[str]] = []
    try:
        if not os.access("/etc", os.W_OK) or _read_only("/etc"):
            _writable_etc(undo)
        if mounted("/sys/fs/cgroup") is None:
            run(["mount", "-t", "cgroup2", "cgroup2", "/sys/fs/cgroup"])
            undo.append(["umount", "/sys/fs/cgroup"])
        yield
    finally:
        for argv in reversed(undo):
            run(argv, check=False)


def _read_only(path: str) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def _writable_etc(undo: list[list[str]]) -> None:
    base = Path("/run/dmthin-etc")
    upper, work = base / "upper", base / "work"
    upper.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    p = run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir=/etc,upperdir={upper},workdir={work}", "/etc"], check=False)
    if p.returncode != 0:  # no overlayfs over 9p: a copy
        copy = base / "copy"
        shutil.copytree("/etc", copy, symlinks=True, dirs_exist_ok=True,
                        ignore_dangling_symlinks=True)
        run(["mount", "--bind", str(copy), "/etc"])
    undo.append(["umount", "-l", "/etc"])


@dataclass
class Scratch:
    """The scratch ext4 file system; :meth:`mkdir` gives each user a fresh
    directory on it."""

    mount: Path
    device: str

    def mkdir(self, name: str) -> Path:
        """A new empty directory (an old one of that name is removed)."""
        path = self.mount / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(mode=0o700)
        return path


@contextlib.contextmanager
def scratch_fs() -> Iterator[Scratch]:
    """Create, mount and finally remove the scratch file system."""
    image = Path(SCRATCH_IMAGE)
    mount = Path(SCRATCH_MOUNT)
    device = None
    try:
        with open(image, "wb") as f:
            f.truncate(SCRATCH_SIZE)
        device = run(["losetup", "-f", "--show", str(image)]).stdout.strip()
        run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1",
             "-O", "^has_journal", device])
        mount.mkdir(parents=True, exist_ok=True)
        run(["mount", "-o", "discard,noatime", device, str(mount)])
        yield Scratch(mount, device)
    finally:
        if mounted(str(mount)):
            run(["umount", str(mount)], check=False)
        if device:
            run(["losetup", "-d", device], check=False)
        image.unlink(missing_ok=True)


# ---------------------------------------------------------------- digests

def content_digest(path: str | os.PathLike[str]) -> str:
    """A digest of the bytes of a file or block device that is cheap on
    sparse files: sha256 over one token per 1 MiB chunk, the chunk's own
    sha256, or ``z`` for a chunk of zeros.  Holes (SEEK_DATA) are not read,
    so a 2 GiB mostly empty file costs what its data costs; two files get
    the same digest exactly when their bytes are the same."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        size = os.lseek(fd, 0, os.SEEK_END)
        h.update(b"%d;" % size)
        pos = 0
        while pos < size:
            data_at = pos
            if regular:
                try:
                    data_at = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError:  # ENXIO: only a hole after pos
                    data_at = size
                data_at -= data_at % CHUNK
            while pos < data_at:
                h.update(b"z")
                pos += CHUNK
            if pos >= size:
                break
            chunk = os.pread(fd, min(CHUNK, size - pos), pos)
            if not chunk:
                raise OSError(f"{os.fspath(path)}: short read at {pos}")
            h.update(b"z" if chunk == _ZERO_CHUNK[:len(chunk)]
                     else hashlib.sha256(chunk).digest())
            pos += len(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def tree_state(root: str | os.PathLike[str]) -> dict[str, tuple[object, ...]]:
    """Everything that must not change when a tree is only read: for each
    entry under *root* its type, mode, owner, size, inode, mtime and ctime
    (ns) and, for files, the digest of its bytes; symlinks by target.
    Access times are left out."""
    out: dict[str, tuple[object, ...]] = {}
    base = os.fspath(root)
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for path in [dirpath] + [os.path.join(dirpath, n) for n in sorted(filenames) + links]:
            st = os.lstat(path)
            meta = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                    st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
            if stat.S_ISREG(st.st_mode):
                meta += (content_digest(path),)
            elif stat.S_ISLNK(st.st_mode):
                meta += (os.readlink(path),)
            out[os.path.relpath(path, base)] = meta
    return out


def assert_same_state(before: dict[str, tuple[object, ...]],
                      after: dict[str, tuple[object, ...]], what: str) -> None:
    """Fail naming every entry of a tree that appeared, vanished or changed."""
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    added = sorted(after.keys() - before.keys())
    gone = sorted(before.keys() - after.keys())
    assert not (changed or added or gone), (
        f"{what} was modified by a read: changed {changed}, added {added}, removed {gone}")


def wait_for(predicate: object, timeout: float, interval: float = 0.1) -> bool:
    """Poll the callable *predicate* until it returns true or *timeout* passes."""
    assert callable(predicate)
    end = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > end:
            return False
        time.sleep(interval)
