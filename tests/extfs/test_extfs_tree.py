"""The differ's tree over the ext4 view (ExtTree) against the kernel-mode
tree (DirTree) on a plain directory of the host: the same layer tars
applied to both give the same entries, the same Changes and byte-identical
diff tars; e2fsck finds the view's filesystem clean."""
import hashlib
import io
import os
import stat
import tarfile

import pytest

from dmthin.extfs import Filesystem
from dmthin.graph import differ
from dmthin.graph.exttree import ExtTree
from dmthin.graph.tree import DirTree
from extfs_helpers import fsck
from helpers import layer_tar

ROOT = os.geteuid() == 0
T0 = 1_500_000_000


def layer(entries):
    """A tar of (name, kind, extra) entries; mtimes fixed, owners as given."""
    return io.BytesIO(layer_tar(entries, t0=T0 + 0.25))


BASE = [("etc", "dir", {}), ("etc/hosts", "file", {}),
        ("etc/passwd", "file", {"mode": 0o600, "owner": (0, 42)}),
        ("usr", "dir", {}), ("usr/bin", "dir", {"mode": 0o711}),
        ("usr/bin/tool", "file", {"mode": 0o4755, "data": os.urandom(300_000)}),
        ("usr/bin/alias", "hard", {"to": "usr/bin/tool"}),
        ("usr/lib", "sym", {"to": "../lib"}), ("lib", "dir", {}),
        ("lib/libx.so", "file", {"data": bytes(70_000)}),
        ("var", "dir", {}), ("var/lib", "dir", {}), ("var/lib/x", "file", {}),
        ("tmp", "dir", {"mode": 0o1777, "owner": (3, 4)})]
if ROOT:
    BASE += [("dev", "dir", {}), ("dev/fifo", "fifo", {}), ("dev/null0", "chr", {})]
CAP = b"\x01\x00\x00\x02\x00\x20\x00\x00" + bytes(12)
TOP = [("etc", "dir", {}), ("etc/hosts", "file", {"data": b"changed\n"}),
       ("usr", "dir", {}), ("usr/bin", "dir", {"mode": 0o711}),
       ("usr/bin/ping", "file", {"xattrs": {"security.capability": CAP, "user.u": b"\xff"}}),
       ("lib", "dir", {}), ("lib/.wh..wh..opq", "file", {"data": b""}),
       ("lib/new.so", "file", {}), ("lib/new2.so", "hard", {"to": "lib/new.so"}),
       ("etc/.wh.passwd", "file", {"data": b""}), ("var", "dir", {}),
       ("var/.wh.lib", "file", {"data": b""}), ("home", "dir", {}),
       ("home/u", "dir", {"owner": (1000, 1000)}),
       ("home/u/big", "file", {"data": os.urandom(3 << 20)})]


def apply_all(tree, layers):
    return [differ.apply_layer(tree, layer(ents)) for ents in layers]


@pytest.fixture
def trees(device, tmp_path):
    _pool, thin = device
    d = tmp_path / "dir"
    d.mkdir()
    os.chmod(d, 0o755)
    with Filesystem(thin, write=True) as fs:
        yield DirTree(d), ExtTree(fs), thin


def test_layers_apply_to_the_same_tree(trees, tmp_path):
    dirtree, ext, thin = trees
    assert apply_all(dirtree, [BASE, TOP]) == apply_all(ext, [BASE, TOP])
    want, got = dirtree.walk(), ext.walk()
    got.pop("lost+found")
    assert got == want
    for path, e in want.items():
        if e.is_reg:
            with dirtree.open_read(path) as a, ext.open_read(path) as b:
                assert hashlib.sha256(a.read()).digest() == hashlib.sha256(b.read()).digest()
    assert ext.fs.stat("usr/bin/alias").st_ino == ext.fs.stat("usr/bin/tool").st_ino
    ext.fs.sync()
    fsck(thin, tmp_path)


def test_changes_and_diff_tars_are_identical(trees, monkeypatch):
    dirtree, ext, _ = trees
    monkeypatch.setattr(differ.time, "time", lambda: float(T0))
    apply_all(dirtree, [BASE])
    apply_all(ext, [BASE])
    old_d, old_e = dirtree.walk(), ext.walk()
    old_e.pop("lost+found")
    apply_all(dirtree, [TOP])
    apply_all(ext, [TOP])
    new_d, new_e = dirtree.walk(), ext.walk()
    new_e.pop("lost+found")
    ch_d, ch_e = differ.changes(new_d, old_d), differ.changes(new_e, old_e)
    assert ch_d == ch_e and "D /etc/passwd" in map(str, ch_e) and "D /var/lib" in map(str, ch_e)
    assert "D /lib/libx.so" in map(str, ch_e) and "A /lib/new2.so" in map(str, ch_e)
    assert differ.changes_size(new_d, ch_d) == differ.changes_size(new_e, ch_e)
    tar_d, tar_e = io.BytesIO(), io.BytesIO()
    differ.export_changes(dirtree, new_d, ch_d, tar_d)
    differ.export_changes(ext, new_e, ch_e, tar_e)
    assert tar_d.getvalue() == tar_e.getvalue()
    members = {m.name: m for m in tarfile.open(fileobj=io.BytesIO(tar_e.getvalue()))}
    assert members["lib/new2.so"].islnk() and members["lib/new2.so"].linkname == "lib/new.so"
    assert members["usr/bin/ping"].pax_headers["SCHILY.xattr.security.capability"] == \
        CAP.decode("utf-8", "surrogateescape")
    assert ext.fs.getxattr("usr/bin/ping", "user.u") == b"\xff"
    assert stat.S_ISDIR(new_e["home/u"].mode) and new_e["home/u"].uid == 1000
