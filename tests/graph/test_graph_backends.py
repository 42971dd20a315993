"""The graph driver on both backends (real_dm: in the qemu guest): the same
layers applied and diffed through the kernel's mount (kernel backend) and
through the ext4 view of the simulated thin device (simulator) give the
same files, the same Changes, DiffSize and byte-identical diff tars."""
import hashlib
import os

import pytest

from dmthin.graph import Driver, differ
from graph_helpers import SMALL
from helpers import layer_tar

pytestmark = pytest.mark.real_dm
T0 = 1_600_000_000
CAP = b"\x01\x00\x00\x02\x00\x20\x00\x00" + bytes(12)


def tar_of(entries):
    return layer_tar(entries, t0=T0 + 0.5, fill=50, chr_dev=(4, 64))


BASE = tar_of([("etc", "dir", {}), ("etc/hosts", "file", {}),
               ("etc/shadow", "file", {"mode": 0o640, "owner": (0, 42)}),
               ("bin", "dir", {}), ("bin/sh", "file", {"mode": 0o755, "data": os.urandom(70000)}),
               ("bin/ash", "hard", {"to": "bin/sh"}), ("lib", "sym", {"to": "usr/lib"}),
               ("usr", "dir", {}), ("usr/lib", "dir", {}), ("usr/lib/a.so", "file", {}),
               ("usr/lib/b.so", "file", {}), ("dev", "dir", {}), ("dev/tty0", "chr", {}),
               ("run", "dir", {"mode": 0o1777}), ("run/fifo", "fifo", {})])
TOP = tar_of([("etc", "dir", {}), ("etc/hosts", "file", {"data": b"changed"}),
              ("etc/.wh.shadow", "file", {"data": b""}), ("usr", "dir", {}),
              ("usr/lib", "dir", {}), ("usr/lib/.wh..wh..opq", "file", {"data": b""}),
              ("usr/lib/c.so", "file", {}),
              ("bin", "dir", {}), ("bin/ping", "file", {"xattrs": {"security.capability": CAP}}),
              ("home", "dir", {}), ("home/big", "file", {"data": os.urandom(3 << 20)})])


def run_on(backend, root, monkeypatch):
    monkeypatch.setattr(differ.time, "time", lambda: float(T0))
    drv = Driver(root, SMALL, backend=backend, cleanup_interval=None)
    try:
        drv.create("lower", "")
        drv.apply_diff("lower", "", BASE)
        drv.create("upper", "lower")
        drv.apply_diff("upper", "lower", TOP)
        with drv.open_fs("upper") as tree:
            files = tree.walk()
            contents = {}
            for p, e in files.items():
                if e.is_reg:
                    with tree.open_read(p) as f:
                        contents[p] = hashlib.sha256(f.read()).hexdigest()
        changes = [str(c) for c in drv.changes("upper", "lower")]
        size = drv.diff_size("upper", "lower")
        with drv.diff("upper", "lower") as f:
            tar = f.read()
        with drv.diff("upper", "lower", stream=True) as f:
            streamed = f.read()
        assert streamed == tar
        return files, contents, changes, size, tar
    finally:
        drv.cleanup()


def test_kernel_and_simulator_give_the_same_layers(tmp_path, monkeypatch):
    kernel = run_on("kernel", tmp_path / "k", monkeypatch)
    sim = run_on("sim", tmp_path / "s", monkeypatch)
    for name, k, s in zip(("files", "contents", "changes", "diff size", "diff tar"),
                          kernel, sim, strict=True):
        assert k == s, name
    assert "D /etc/shadow" in sim[2] and "D /usr/lib/a.so" in sim[2]
