"""File trees the differ reads and writes: a mounted directory, or an
unmounted ext4 image / device through e2fsprogs' ``debugfs``.

:class:`DirTree` is the kernel-mode tree (the rootfs Docker's ``Get``
returns).  :class:`ImageTree` gives the simulator honest filesystem content
without root or mounts: it lists (``ls -p``, ``stat``), reads (``dump``)
and writes (``mkdir``, ``write``, ``symlink``, ``mknod``, ``sif``, ``rm``)
the ext4 filesystem inside a thin device's image mirror, and the mirror's
changed blocks go back to the thin device.

Limits of :class:`ImageTree`, all refused with a clear error rather than
done wrong: ext4 only (debugfs does not write xfs); names containing ``"``
or a newline; hard links are written as separate copies.  debugfs writes
all-zero blocks of a file as holes.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..errors import InvalidArgument, IOFailure, NotSupported
from .blockfs import probe_fs_type, run_tool, tool_env


@dataclass(frozen=True)
class Entry:
    """One file's metadata, with a path relative to the tree's root."""
    path: str
    mode: int              # full st_mode (type and permission bits)
    uid: int
    gid: int
    size: int
    mtime_ns: int
    link: str = ""         # symlink target
    rdev: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)


class DirTree:
    """A directory tree (a mounted rootfs)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def _abs(self, path: str) -> Path:
        """*path* (relative to the tree; a leading ``/`` is the tree's root,
        never the host's) below :attr:`root`."""
        return self.root / path.lstrip("/")

    def walk(self) -> dict[str, Entry]:
        """Every entry below the root (the root itself excluded)."""
        out: dict[str, Entry] = {}
        stack = [""]
        while stack:
            rel = stack.pop()
            with os.scandir(self._abs(rel) if rel else self.root) as it:
                for de in it:
                    p = f"{rel}/{de.name}" if rel else de.name
                    st = de.stat(follow_symlinks=False)
                    link = os.readlink(de.path) if stat.S_ISLNK(st.st_mode) else ""
                    size = st.st_size if stat.S_ISREG(st.st_mode) else 0
                    out[p] = Entry(p, st.st_mode, st.st_uid, st.st_gid, size,
                                   st.st_mtime_ns, link, st.st_rdev)
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(p)
        return out

    @contextlib.contextmanager
    def open_read(self, path: str) -> Iterator[IO[bytes]]:
        """Open regular file *path* (never following a final symlink)."""
        fd = os.open(self._abs(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            yield f

    def lookup(self, path: str) -> Entry | None:
        try:
            st = os.lstat(self._abs(path))
        except FileNotFoundError:
            return None
        return Entry(path, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns)

    def lstat(self, path: str) -> Entry | None:
        """*path*'s entry (symlinks not followed, target in ``link``), or
        None.  *path* must hold no symlink before its last component (see
        :func:`resolve`)."""
        try:
            st = os.lstat(self._abs(path))
        except (FileNotFoundError, NotADirectoryError):
            return None
        link = os.readlink(self._abs(path)) if stat.S_ISLNK(st.st_mode) else ""
        size = st.st_size if stat.S_ISREG(st.st_mode) else 0
        return Entry(path, st.st_mode, st.st_uid, st.st_gid, size, st.st_mtime_ns, link,
                     st.st_rdev)

    # -- writing: each call takes effect at once ---------------------------
    def begin(self) -> None:
        pass

    def hardlink(self, path: str, target: str) -> None:
        os.link(self._abs(target), self._abs(path))

    def remove(self, path: str) -> None:
        p = self._abs(path)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def mkdir(self, e: Entry) -> None:
        p = self._abs(e.path)
        if not p.is_dir():
            p.mkdir()
        self._attrs(p, e)

    def write_file(self, e: Entry, src: IO[bytes]) -> None:
        p = self._abs(e.path)
        with open(p, "wb") as f:
            shutil.copyfileobj(src, f, 1 << 20)
        self._attrs(p, e)

    def symlink(self, e: Entry) -> None:
        p = self._abs(e.path)
        os.symlink(e.link, p)
        os.lchown(p, e.uid, e.gid)
        os.utime(p, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)

    def mknod(self, e: Entry) -> None:
        p = self._abs(e.path)
        if stat.S_ISFIFO(e.mode):
            os.mkfifo(p)
        else:
            os.mknod(p, e.mode, e.rdev)
        self._attrs(p, e)

    def set_times(self, e: Entry) -> None:
        os.utime(self._abs(e.path), ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)

    def commit(self) -> None:
        pass

    @staticmethod
    def _attrs(p: Path, e: Entry) -> None:
        os.lchown(p, e.uid, e.gid)
        os.chmod(p, stat.S_IMODE(e.mode))
        os.utime(p, ns=(e.mtime_ns, e.mtime_ns))


def _quote(path: str) -> str:
    if '"' in path or "\n" in path:
        raise NotSupported(f"debugfs cannot name {path!r}: names with '\"' or newlines need "
                           "the kernel backend")
    return f'"/{path}"'


class ImageTree:
    """An unmounted ext4 filesystem (image file or device node) via debugfs.

    *base* is the directory of the filesystem the tree starts at: Docker
    keeps a layer's files under ``rootfs/`` of its device's filesystem, so
    the graph driver passes ``base="rootfs"`` and paths are the ones a
    container sees.  A missing *base* reads as an empty tree;
    :meth:`ensure_base` creates it as Docker's ``Get`` does.
    """

    def __init__(self, image: str | os.PathLike[str], workdir: str | os.PathLike[str],
                 base: str = ""):
        fs = probe_fs_type(str(image))
        if fs != "ext4":
            raise NotSupported(f"the simulator reaches files through debugfs, which handles "
                               f"ext4 only, not {fs}: use dm.fs=ext4 or the kernel backend")
        self.image = str(image)
        self.workdir = Path(workdir)
        self.base = base.strip("/")
        self._script: list[str] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def _q(self, path: str) -> str:
        """*path* (relative to the tree; a leading ``/`` is the tree's root)
        quoted for debugfs."""
        path = path.strip("/")
        full = f"{self.base}/{path}" if self.base and path else (self.base or path)
        return _quote(full)

    def ensure_base(self, id_text: str) -> None:
        """Create *base* (0755, root) and the ``id`` file beside it holding
        *id_text* (0600), as Docker's ``Get`` does on a layer's first mount;
        existing ones are left alone.  Raises ``IOFailure``."""
        if not self.base:
            return
        present = {line.strip("/").split("/")[4] for _, lines in self._run(["ls -p /"])
                   for line in lines if line.startswith("/") and line.count("/") >= 6}
        script: list[str] = []
        if self.base not in present:
            q = _quote(self.base)
            script += [f"mkdir {q}", f"sif {q} mode 040755", f"sif {q} uid 0", f"sif {q} gid 0"]
        if "id" not in present:
            local = Path(self._scratch()) / "id"
            local.write_bytes(id_text.encode())
            script += [f"write {local} /id", "sif /id mode 0100600", "sif /id uid 0",
                       "sif /id gid 0"]
        if script:
            self._run_checked(script)

    def _run(self, cmds: list[str], write: bool = False) -> list[tuple[str, list[str]]]:
        """Run debugfs commands from a file; return (command, output lines)."""
        with tempfile.NamedTemporaryFile("w", dir=self.workdir, prefix=".debugfs",
                                         suffix=".cmd") as f:
            f.write("\n".join(cmds) + "\n")
            f.flush()
            argv = ["debugfs", *(["-w"] if write else []), "-f", f.name, self.image]
            out = run_tool(argv, on_image=True)
        sections: list[tuple[str, list[str]]] = []
        for line in out.splitlines():
            if line.startswith("debugfs: "):
                sections.append((line[9:], []))
            elif sections:
                sections[-1][1].append(line)
        return sections

    # -- reading ----------------------------------------------------------------
    def walk(self) -> dict[str, Entry]:
        """Every entry below the root: ``ls -p`` level by level, then one
        ``stat`` pass for mtimes, link targets and device numbers."""
        raw: dict[str, tuple[int, int, int, int]] = {}
        level = [""]
        while level:
            sections = self._run([f"ls -p {self._q(d)}" for d in level])
            nxt = []
            for d, (_, lines) in zip(level, sections):
                for line in lines:
                    if not line.startswith("/") or not line.endswith("/"):
                        continue
                    name, fields = _ls_line(line)
                    if name in (".", "..") or not name:
                        continue
                    p = f"{d}/{name}" if d else name
                    raw[p] = fields
                    if stat.S_ISDIR(fields[0]):
                        nxt.append(p)
            level = nxt
        extra: dict[str, tuple[int, str, int]] = {}
        paths = list(raw)
        for i in range(0, len(paths), 2000):
            batch = paths[i:i + 2000]
            for p, (_, lines) in zip(batch, self._run([f"stat {self._q(p)}" for p in batch])):
                extra[p] = _parse_stat(lines)
        for p, (m, _, _, size) in raw.items():
            if stat.S_ISLNK(m) and not extra[p][1] and size:     # slow symlink: dump it
                with self.open_read(p) as f:
                    extra[p] = (extra[p][0], f.read().decode("utf-8", "surrogateescape"), 0)
        return {p: Entry(p, m, u, g, s if stat.S_ISREG(m) else 0, extra[p][0], extra[p][1],
                         extra[p][2]) for p, (m, u, g, s) in raw.items()}

    def lstat(self, path: str) -> Entry | None:
        """*path*'s entry (symlinks not followed, target in ``link``), or
        None.  *path* must hold no symlink before its last component (see
        :func:`resolve`)."""
        if not path:
            return None
        parent, _, name = path.rpartition("/")
        sections = self._run([f"ls -p {self._q(parent)}", f"stat {self._q(path)}"])
        if len(sections) < 2:
            return None
        found = None
        for line in sections[0][1]:
            if line.startswith("/") and line.endswith("/"):
                entry_name, fields = _ls_line(line)
                if entry_name == name:
                    found = fields
        if found is None:
            return None
        mode, uid, gid, size = found
        mtime_ns, link, rdev = _parse_stat(sections[1][1])
        if stat.S_ISLNK(mode) and not link and size:                # slow symlink
            with self.open_read(path) as f:
                link = f.read().decode("utf-8", "surrogateescape")
        return Entry(path, mode, uid, gid, size if stat.S_ISREG(mode) else 0, mtime_ns, link,
                     rdev)

    def _scratch(self) -> str:
        """The tree's private scratch directory (made on first use)."""
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(dir=self.workdir, prefix=".tree")
        return self._tmp.name

    @contextlib.contextmanager
    def open_read(self, path: str) -> Iterator[IO[bytes]]:
        local = Path(self._scratch()) / "out"
        self._run([f"dump {self._q(path)} {local}"])
        try:
            with open(local, "rb") as f:
                yield f
        finally:
            with contextlib.suppress(FileNotFoundError):
                local.unlink()

    # -- writing: commands are queued and run by commit() --------------------
    def begin(self) -> None:
        self._script = []
        self._scratch()
        self._existing = self.walk()
        self._written: dict[str, str] = {}

    def lookup(self, path: str) -> Entry | None:
        return self._existing.get(path)

    def hardlink(self, path: str, target: str) -> None:
        """Written as a copy of *target* (debugfs ``ln`` keeps no link count)."""
        e = self._existing.get(target)
        if e is None or not e.is_reg:
            raise InvalidArgument(f"hard link {path!r} to missing or non-regular {target!r}")
        copy = Entry(path, e.mode, e.uid, e.gid, e.size, e.mtime_ns)
        local = self._written.get(target)
        if local is not None:
            with open(local, "rb") as f:
                self.write_file(copy, f)
        else:
            with self.open_read(target) as f:
                self.write_file(copy, f)

    def remove(self, path: str) -> None:
        e = self._existing.pop(path, None)
        self._written.pop(path, None)
        if e is None:
            return
        if e.is_dir:
            for child in sorted((p for p in self._existing if p.startswith(path + "/")),
                                reverse=True):
                self._rm_one(self._existing.pop(child))
        self._rm_one(e)

    def _rm_one(self, e: Entry) -> None:
        self._script.append(f"{'rmdir' if e.is_dir else 'rm'} {self._q(e.path)}")

    def _attrs(self, e: Entry) -> None:
        q = self._q(e.path)
        self._script += [f"sif {q} mode 0{e.mode:o}", f"sif {q} uid {e.uid}",
                         f"sif {q} gid {e.gid}"]
        self.set_times(e)

    def mkdir(self, e: Entry) -> None:
        if e.path not in self._existing:
            self._script.append(f"mkdir {self._q(e.path)}")
        self._existing[e.path] = e
        self._attrs(e)

    def write_file(self, e: Entry, src: IO[bytes]) -> None:
        fd, local = tempfile.mkstemp(dir=self._scratch())
        with os.fdopen(fd, "wb") as f:
            shutil.copyfileobj(src, f, 1 << 20)
        if " " in local or '"' in local:
            raise InvalidArgument(f"work directory path {local!r} must not contain spaces")
        self._script.append(f"write {local} {self._q(e.path)}")
        self._existing[e.path] = e
        self._written[e.path] = local
        self._attrs(e)

    def symlink(self, e: Entry) -> None:
        if '"' in e.link or "\n" in e.link:
            raise NotSupported(f"debugfs cannot write symlink target {e.link!r}")
        self._script.append(f'symlink {self._q(e.path)} "{e.link}"')
        self._existing[e.path] = e
        q = self._q(e.path)
        self._script += [f"sif {q} uid {e.uid}", f"sif {q} gid {e.gid}"]
        self.set_times(e)

    def mknod(self, e: Entry) -> None:
        parent, _, name = e.path.rpartition("/")
        if stat.S_ISFIFO(e.mode):
            kind = "p"
        else:
            kind = "c" if stat.S_ISCHR(e.mode) else "b"
            kind += f" {os.major(e.rdev)} {os.minor(e.rdev)}"
        self._script += [f"cd {self._q(parent)}", f"mknod {name} {kind}", "cd /"]
        self._existing[e.path] = e
        self._attrs(e)

    def set_times(self, e: Entry) -> None:
        sec, nsec = divmod(e.mtime_ns, 1_000_000_000)
        q = self._q(e.path)
        self._script += [f"sif {q} mtime @{sec}", f"sif {q} mtime_extra {nsec << 2}"]

    def commit(self) -> None:
        """Run the queued commands; raise :class:`~dmthin.errors.IOFailure`
        on the first debugfs complaint."""
        script, self._script = self._script, []
        for i in range(0, len(script), 5000):
            self._run_checked(script[i:i + 5000])
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _run_checked(self, cmds: list[str]) -> None:
        with tempfile.NamedTemporaryFile("w", dir=self.workdir, prefix=".debugfs",
                                         suffix=".cmd") as f:
            f.write("\n".join(cmds) + "\n")
            f.flush()
            proc = subprocess.run(["debugfs", "-w", "-f", f.name, self.image],
                                  capture_output=True, env=tool_env(True), check=False)
        errs = [ln for ln in proc.stderr.decode(errors="replace").splitlines()
                if ln.strip() and not ln.startswith("debugfs ")]
        if proc.returncode or errs:
            raise IOFailure(f"debugfs on {self.image}: {errs[0] if errs else proc.returncode}")

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _ls_line(line: str) -> tuple[str, tuple[int, int, int, int]]:
    """(name, (mode, uid, gid, size)) of a debugfs ``ls -p`` line
    ``/ino/mode/uid/gid/name/size/``."""
    _ino, mode, uid, gid, rest = line[1:-1].split("/", 4)
    name, _, size = rest.rpartition("/")
    return name, (int(mode, 8), int(uid), int(gid), int(size or 0))


MAX_SYMLINKS = 40          # the kernel's limit on symlinks followed in one lookup


def resolve(tree: DirTree | ImageTree, path: str) -> Entry:
    """Resolve *path* as a process chrooted into *tree* would: ``..`` stops at
    the root, symlinks (absolute ones relative to the root) are followed,
    at most 40 of them.  Returns the final entry (never a symlink).

    Raises :class:`FileNotFoundError`, ``NotADirectoryError`` or
    :class:`~dmthin.errors.InvalidArgument` (a symlink loop), naming *path*.
    """
    todo = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    last: Entry | None = None
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            last = None
            continue
        rel = "/".join([*done, part])
        e = tree.lstat(rel)
        if e is None:
            raise FileNotFoundError(errno.ENOENT, f"no such file in the layer: /{rel}", path)
        if stat.S_ISLNK(e.mode):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise InvalidArgument(f"too many levels of symbolic links resolving {path}")
            if e.link.startswith("/"):
                done = []
            todo = [p for p in e.link.split("/") if p not in ("", ".")] + todo
            last = None
            continue
        if todo and not e.is_dir:
            raise NotADirectoryError(errno.ENOTDIR, f"not a directory in the layer: /{rel}",
                                     path)
        done.append(part)
        last = e
    if not done:
        return Entry("", stat.S_IFDIR | 0o755, 0, 0, 0, 0)
    if last is None:
        last = tree.lstat("/".join(done))
        if last is None:
            raise FileNotFoundError(errno.ENOENT, f"no such file in the layer: {path}", path)
    return last


def _parse_stat(lines: list[str]) -> tuple[int, str, int]:
    """(mtime_ns, link target, rdev) from debugfs ``stat`` output."""
    mtime_ns, link, rdev = 0, "", 0
    for line in lines:
        s = line.strip()
        if s.startswith("mtime: 0x"):
            word = s.split()[1]
            sec, _, extra = word.partition(":")
            secs = int(sec, 16)
            ext = int(extra, 16) if extra else 0
            secs += (ext & 3) << 32
            mtime_ns = secs * 1_000_000_000 + (ext >> 2)
        elif s.startswith("Fast link dest: "):
            link = s[len("Fast link dest: "):].strip().strip('"')
        elif s.startswith("Device major/minor number:"):
            mm = s.split(":", 1)[1].split()[0]
            major, _, minor = mm.partition(":")
            rdev = os.makedev(int(major), int(minor))
    return mtime_ns, link, rdev
