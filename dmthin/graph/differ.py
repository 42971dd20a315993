"""Docker's naive differ (``graphdriver.NaiveDiffDriver``) over file trees.

:func:`changes` compares two trees as moby's ``ChangesDirs`` does: an entry
is modified when its mode, owner, group, device number or
``security.capability`` differ, or (not for directories) its mtime, size or
symlink target; a directory holding changes is listed as modified; a
deleted directory is listed alone.  :func:`export_changes` writes a tar of
the changed entries with ``.wh.<name>`` whiteouts for deletions, hard links
as links to the first path written, ``security.capability`` as a PAX
``SCHILY.xattr`` record (moby's addTarFile); :func:`apply_layer` applies
such a tar as moby's UnpackLayer: whiteouts delete, ``.wh..wh..opq`` empties
its directory of what the layer did not unpack, top-level ``.wh..wh.*``
aufs bookkeeping is skipped, PAX xattrs are set; it returns the summed
sizes of the entries, as ``ApplyUncompressedLayer`` does.
Trees are :class:`~dmthin.graph.tree.DirTree` (kernel mode, a mounted
rootfs) or :class:`~dmthin.graph.exttree.ExtTree` (simulator, libext2fs).
"""
from __future__ import annotations

import errno
import os
import posixpath
import stat
import tarfile
import time
from dataclasses import dataclass
from typing import IO

from ..errors import InvalidArgument
from .exttree import ExtTree
from .tree import CAPABILITY, DirTree, Entry

Tree = DirTree | ExtTree

MODIFY, ADD, DELETE = 0, 1, 2
_KIND = {MODIFY: "C", ADD: "A", DELETE: "D"}
WHITEOUT = ".wh."
WHITEOUT_META = ".wh..wh."
OPAQUE = ".wh..wh..opq"
XATTR_PAX = "SCHILY.xattr."


@dataclass(frozen=True, order=True)
class Change:
    """One change: ``path`` is absolute (``/a/b``); ``kind`` MODIFY/ADD/DELETE."""
    path: str
    kind: int

    def __str__(self) -> str:
        return f"{_KIND[self.kind]} {self.path}"


def _differs(old: Entry, new: Entry) -> bool:
    if (old.mode, old.uid, old.gid, old.rdev, old.capability) != \
            (new.mode, new.uid, new.gid, new.rdev, new.capability):
        return True
    if new.is_dir:
        return False
    return old.mtime_ns != new.mtime_ns or old.size != new.size or old.link != new.link


def changes(new: dict[str, Entry], old: dict[str, Entry]) -> list[Change]:
    """Changes from tree *old* (the parent) to tree *new*, sorted by path."""
    out: dict[str, int] = {}
    for p, e in new.items():
        o = old.get(p)
        if o is None:
            out[p] = ADD
        elif _differs(o, e):
            out[p] = MODIFY
    for p in old:
        if p not in new:
            parent = posixpath.dirname(p)
            if not parent or parent in new:
                out[p] = DELETE
    for p in list(out):
        parent = posixpath.dirname(p)
        while parent and parent not in out:
            out[parent] = MODIFY
            parent = posixpath.dirname(parent)
    return sorted(Change("/" + p, k) for p, k in out.items())


def changes_size(new: dict[str, Entry], chs: list[Change]) -> int:
    """``archive.ChangesSize``: bytes of added or modified regular files."""
    total = 0
    for c in chs:
        if c.kind != DELETE:
            e = new.get(c.path[1:])
            if e is not None and e.is_reg:
                total += e.size
    return total


def export_changes(tree: Tree, new: dict[str, Entry], chs: list[Change],
                   out: IO[bytes]) -> None:
    """Write a tar of *chs* (contents read from *tree*) to file object *out*."""
    now = time.time()
    seen: dict[int, str] = {}            # inode -> first path written (moby's SeenFiles)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for c in chs:
            rel = c.path[1:]
            if c.kind == DELETE:
                d, name = posixpath.split(rel)
                ti = tarfile.TarInfo(posixpath.join(d, WHITEOUT + name))
                ti.mtime, ti.mode, ti.size = now, 0, 0
                tar.addfile(ti)
                continue
            e = new[rel]
            ti = tarfile.TarInfo(rel)
            ti.mode = stat.S_IMODE(e.mode)
            ti.uid, ti.gid = e.uid, e.gid
            ti.mtime = e.mtime_ns / 1e9
            if e.capability:
                ti.pax_headers = {XATTR_PAX + CAPABILITY:
                                  e.capability.decode("utf-8", "surrogateescape")}
            if not e.is_dir and e.nlink > 1 and e.ino:
                first = seen.setdefault(e.ino, rel)
                if first != rel:
                    ti.type, ti.linkname = tarfile.LNKTYPE, first
                    tar.addfile(ti)
                    continue
            if e.is_dir:
                ti.type = tarfile.DIRTYPE
                tar.addfile(ti)
            elif e.is_reg:
                ti.size = e.size
                with tree.open_read(rel) as f:
                    tar.addfile(ti, f)
            elif stat.S_ISLNK(e.mode):
                ti.type, ti.linkname = tarfile.SYMTYPE, e.link
                tar.addfile(ti)
            elif stat.S_ISFIFO(e.mode):
                ti.type = tarfile.FIFOTYPE
                tar.addfile(ti)
            elif stat.S_ISCHR(e.mode) or stat.S_ISBLK(e.mode):
                ti.type = tarfile.CHRTYPE if stat.S_ISCHR(e.mode) else tarfile.BLKTYPE
                ti.devmajor, ti.devminor = os.major(e.rdev), os.minor(e.rdev)
                tar.addfile(ti)
            # sockets are skipped, as Go's archive/tar does


def _clean(name: str) -> str:
    root = "/__layer__"
    joined = posixpath.normpath(f"{root}/{name}")     # filepath.Join(dest, hdr.Name)
    if joined == root:
        return ""
    if not joined.startswith(root + "/"):
        raise InvalidArgument(f"tar entry {name!r} points outside the layer")
    return joined[len(root) + 1:]


_TYPE = {tarfile.DIRTYPE: stat.S_IFDIR, tarfile.SYMTYPE: stat.S_IFLNK,
         tarfile.FIFOTYPE: stat.S_IFIFO, tarfile.CHRTYPE: stat.S_IFCHR,
         tarfile.BLKTYPE: stat.S_IFBLK}


def _ensure_parents(tree: Tree, d: str) -> None:
    """Create missing parent directories (0755 root), as UnpackLayer does."""
    missing = []
    while d and tree.lookup(d) is None:
        missing.append(d)
        d = posixpath.dirname(d)
    now = time.time_ns()
    for p in reversed(missing):
        tree.mkdir(Entry(p, stat.S_IFDIR | 0o755, 0, 0, 0, now))


def _opaque(tree: Tree, d: str, unpacked: set[str]) -> None:
    """``.wh..wh..opq`` in *d*: remove everything below *d* that this layer
    did not unpack (moby's UnpackLayer walks *d* the same way)."""
    stack = [d]
    while stack:
        cur = stack.pop()
        for name in tree.listdir(cur):
            p = posixpath.join(cur, name) if cur else name
            if p in unpacked:
                e = tree.lookup(p)
                if e is not None and e.is_dir:
                    stack.append(p)
                continue
            tree.remove(p)


def _xattrs(tree: Tree, rel: str, m: tarfile.TarInfo) -> None:
    """Set the xattrs of PAX ``SCHILY.xattr.*`` records; EPERM and
    EOPNOTSUPP are ignored, as moby's createTarFile does."""
    for key, value in m.pax_headers.items():
        if key.startswith(XATTR_PAX):
            try:
                tree.setxattr(rel, key[len(XATTR_PAX):],
                              value.encode("utf-8", "surrogateescape"))
            except OSError as err:
                if err.errno not in (errno.EPERM, errno.EOPNOTSUPP):
                    raise


def apply_layer(tree: Tree, layer: IO[bytes]) -> int:
    """Apply tar stream *layer* to *tree*; return the summed entry sizes.

    Raises :class:`~dmthin.errors.InvalidArgument` for entries outside the
    layer, and the tree's errors.
    """
    size = 0
    dirs: list[Entry] = []
    unpacked: set[str] = set()
    tree.begin()
    with tarfile.open(fileobj=layer, mode="r|*", encoding="utf-8",
                      errors="surrogateescape") as tar:
        for m in tar:
            rel = _clean(m.name)
            if not rel:
                continue
            d, base = posixpath.split(rel)
            if rel.startswith(WHITEOUT_META) and rel != OPAQUE:
                continue                     # aufs bookkeeping at the top (moby: hdr.Name)
            if base == OPAQUE:
                _opaque(tree, d, unpacked)
                continue
            if base.startswith(WHITEOUT):
                tree.remove(posixpath.join(d, base[len(WHITEOUT):]))
                continue
            size += m.size
            _ensure_parents(tree, d)
            unpacked.add(rel)
            if m.islnk():
                target = _clean(m.linkname)
                tree.remove(rel)
                tree.hardlink(rel, target)
                continue
            ftype = stat.S_IFREG if m.isreg() else _TYPE.get(m.type)
            if ftype is None:
                continue
            rdev = os.makedev(m.devmajor, m.devminor) if m.ischr() or m.isblk() else 0
            e = Entry(rel, ftype | (m.mode & 0o7777), m.uid, m.gid, m.size,
                      round(m.mtime * 1e9), m.linkname if m.issym() else "", rdev)
            if m.isdir():
                old = tree.lookup(rel)
                if old is not None and not old.is_dir:
                    tree.remove(rel)
                tree.mkdir(e)
                _xattrs(tree, rel, m)
                dirs.append(e)
                continue
            tree.remove(rel)
            src = tar.extractfile(m) if m.isreg() else None
            if src is not None:
                tree.write_file(e, src)
            elif m.issym():
                tree.symlink(e)
            else:
                tree.mknod(e)
            _xattrs(tree, rel, m)
    for e in reversed(dirs):
        tree.set_times(e)
    tree.commit()
    return size
