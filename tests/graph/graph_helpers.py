"""Constants shared by the graph tests (a uniquely named module, so test
files never import a ``conftest``)."""
import io
import stat

from dmthin.graph.tree import Entry

#: the backend under test on the host: the simulator
BACKEND = "sim"

#: Docker's test defaults (300M data, 200M metadata, 300M base) scaled down so the
#: simulator runs in seconds
SMALL = ("dm.loopdatasize=64M", "dm.loopmetadatasize=16M", "dm.basesize=16M", "dm.fs=ext4",
         "dm.min_free_space=0%")

NOW = 1_700_000_000 * 10**9


def write_files(driver, id, files=(), dirs=(), remove=()):
    """Write through the tree API: files = (path, data, mode, uid, gid),
    dirs = (path, mode, uid, gid)."""
    with driver.open_fs(id, write=True) as tree:
        tree.begin()
        for p in remove:
            tree.remove(p)
        for p, mode, uid, gid in dirs:
            tree.mkdir(Entry(p, stat.S_IFDIR | mode, uid, gid, 0, NOW))
        for p, data, mode, uid, gid in files:
            tree.remove(p)
            tree.write_file(Entry(p, stat.S_IFREG | mode, uid, gid, len(data), NOW),
                            io.BytesIO(data))
        tree.commit()


def tree_digest(root):
    """{relative path: sha256 of the bytes (files), "dir" or "link:TARGET"} of
    everything under *root*, so a test can assert that nothing changed."""
    import hashlib
    import os
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "link:" + os.readlink(p)
            elif os.path.isdir(p):
                out[rel] = "dir"
            else:
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                st = os.stat(p)
                out[rel] = f"{h.hexdigest()} {st.st_size} {oct(st.st_mode)}"
    return out


def make_docker_root(tmp_path, backend, name="root"):
    """A graph root as dockerd leaves it (loop-lvm): layers written by the
    graph layer with the simulator, then every dmthin side file removed
    (pool.json, .lock, tmp/), so only Docker's files remain.  Returns
    (root, layers) with layers = {hash: {path: bytes}}."""
    import shutil

    from dmthin.graph import Driver
    root = tmp_path / "data-root" / "devicemapper"
    root.parent.mkdir(parents=True, exist_ok=True)
    layers = {"layer1": {"etc/os-release": b"NAME=test\n", "bin/tool": b"\x7fELF" + bytes(3000)},
              "layer2": {"etc/motd": b"hello from layer2\n"},
              "ctr": {"etc/hostname": b"container\n"}}
    with Driver(root, SMALL, backend=backend, cleanup_interval=None) as drv:
        drv.create("layer1", "")
        write_files(drv, "layer1", dirs=[("etc", 0o755, 0, 0), ("bin", 0o755, 0, 0)],
                    files=[(p, d, 0o644, 0, 0) for p, d in layers["layer1"].items()])
        drv.create("layer2", "layer1")
        write_files(drv, "layer2", files=[(p, d, 0o644, 0, 0)
                                          for p, d in layers["layer2"].items()])
        drv.create("ctr-init", "layer2")
        drv.create("ctr", "ctr-init")
        write_files(drv, "ctr", files=[(p, d, 0o644, 0, 0) for p, d in layers["ctr"].items()])
    for side in ("devicemapper/pool.json", "devicemapper/.lock"):
        (root / side).unlink(missing_ok=True)
    shutil.rmtree(root / "tmp", ignore_errors=True)
    return root, layers
