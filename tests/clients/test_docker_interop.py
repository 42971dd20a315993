"""dmthin's graph layer and Docker's own daemon on the same roots, both ways.

dockerd 20.10 (Debian 12's docker.io, devicemapper driver) runs in the guest
as the real counterpart (tests/clients fixtures):

(a) a root dockerd made (loop-lvm) is inspected by ``dmthin graph
    status|ls|cat|export`` on both backends without a byte, inode or
    timestamp of it changing; then dmthin writes into a copy on each backend
    and dockerd, started on it again, knows every image and container with
    the same devices and sees every old file and the new one;
(b) a root dmthin made (simulator or kernel) is accepted by dockerd, which
    imports, creates, copies, commits and removes on it and reads a file
    dmthin wrote under ``rootfs/`` of a container's device;
(c) ``dm.thinpooldev=/dev/mapper/NAME`` with a pool from ``dmthin pool
    activate``: dockerd and dmthin take turns on it (dockerd imports,
    creates, copies, commits and removes), and neither tears the pool down.
"""
from __future__ import annotations

import contextlib
import io
import tarfile
from pathlib import Path

import pytest

from client_docker import Dockerd, image_tar, known_content
from client_env import Scratch, assert_same_state, dmthin, run, tree_state
from client_fixtures import MADE_FILES, DockerRoot, assert_root_contents, copy_root
from dmthin.cli.main import main as dmthin_main
from dmthin.graph import Driver
from dmthin.graph.layerdb import LayerDB
from dmthin.graph.tree import Entry

pytestmark = [pytest.mark.real_dm, pytest.mark.clients]

BACKENDS = ("sim", "kernel")
#: the options of client_docker.LOOP_LVM_OPTS, for dmthin opening the same roots
OPTS = ("dm.loopdatasize=2G", "dm.loopmetadatasize=128M", "dm.basesize=256M", "dm.fs=ext4")
NOW = 1_700_000_000 * 10**9


def dm_names() -> list[str]:
    out = run(["dmsetup", "ls"], check=False).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.strip() and "No devices" not in ln]


def home(root: DockerRoot | Path) -> Path:
    """The driver home (``DATA_ROOT/devicemapper``)."""
    return (root.path if isinstance(root, DockerRoot) else root) / "devicemapper"


def device_hash(root: DockerRoot, ref: str) -> str:
    """Docker's device hash of *ref*: its dm name ``docker-MAJ:MIN-INO-<hash>``
    without the prefix (which names the root dockerd ran on, not a copy)."""
    return root.devices[ref]["DeviceName"].split("-", 3)[3]


def write_file(drv: Driver, device: str, path: str, data: bytes) -> None:
    """Write *path* (as the container sees it) into *device* with dmthin:
    mounted (kernel) or through the simulator's tree API."""
    with drv.open_fs(device, write=True) as tree:
        tree.begin()
        tree.remove(path)
        tree.write_file(Entry(path, 0o100644, 0, 0, len(data), NOW), io.BytesIO(data))
        tree.commit()


@pytest.mark.parametrize("backend", BACKENDS)
def test_graph_inspects_a_dockerd_root_without_changing_it(docker_made_root: DockerRoot,
                                                           backend: str, tmp_path: Path) -> None:
    root = docker_made_root
    before = tree_state(root.path)
    names_before = set(dm_names())
    args = [str(home(root)), "--backend", backend]

    status = dmthin("graph", "status", *args).stdout
    assert "Backing Filesystem: ext4" in status and "Base Device Size: 268.4MB" in status
    listing = dmthin("graph", "ls", *args).stdout
    for ref, dev in root.devices.items():
        h = device_hash(root, ref)
        assert any(line.split()[:2] == [h, dev["DeviceId"]] for line in listing.splitlines()), \
            (ref, listing)
    for gone in root.removed:
        assert not any(line.split()[1:2] == [gone] for line in listing.splitlines()[1:])

    for ref, files in root.files.items():
        ident = device_hash(root, ref)
        # every file of the container; one of each image (each cat opens the root anew)
        for path, data in sorted(files.items())[:None if ref in root.containers else 1]:
            assert cat_bytes(args, ident, path) == data, (ref, path)
    # a container is also named by its id (dockerd's layer store)
    cid = root.containers["made-c2"]
    assert cat_bytes(args, cid[:12], "/data/c2-only") == b"written in made-c2\n"

    committed = device_hash(root, "dmthin-test:committed")
    tar = tmp_path / "committed.tar"
    dmthin("graph", "export", *args, committed, "-o", str(tar))
    with tarfile.open(tar) as t:
        assert t.extractfile("etc/added").read() == known_content("added", 70 * 1024)
        assert "data/blob" not in t.getnames()          # the parent's files are not in the diff

    assert_same_state(before, tree_state(root.path), "dockerd's root")
    assert set(dm_names()) == names_before             # nothing left active


def cat_bytes(args: list[str], ident: str, path: str) -> bytes:
    """``dmthin graph cat``'s stdout as bytes (run in this process, as
    client_env.dmthin does, the file's bytes kept binary)."""
    out = io.BytesIO()
    wout = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
    with contextlib.redirect_stdout(wout):
        rc = dmthin_main(["graph", "cat", *args, ident, path])
        wout.flush()
    assert rc == 0, (ident, path, rc)
    return out.getvalue()


@pytest.mark.parametrize("backend", BACKENDS)
def test_dmthin_writes_a_dockerd_root_and_dockerd_reads_it(docker_made_root: DockerRoot,
                                                           dockerd_factory: object,
                                                           clients_scratch: Scratch,
                                                           backend: str) -> None:
    root = copy_root(docker_made_root, clients_scratch.mkdir(f"graph-rw-{backend}") / "root")
    c2 = device_hash(root, "made-c2")
    news = known_content(f"from dmthin {backend}", 40 * 1024 + 3)
    with Driver(home(root), OPTS, backend=backend, cleanup_interval=None) as drv:
        assert drv.deviceset.transaction_id > 0           # Docker's pool, not a new one
        write_file(drv, c2, "/data/from-dmthin", news)
        drv.create("dmthin-extra", c2)
    d: Dockerd = dockerd_factory(data_root=root.path)  # type: ignore[operator]
    with d.running():
        assert d.cp_out("made-c2", "/data/from-dmthin") == news
        assert_root_contents(d, root)                     # every image, container, byte
        cid = d.create("dmthin-test:committed", ["/bin/true"])
        d.cp_in(cid, "/etc", {"after": b"dockerd after dmthin\n"})
        image = d.commit(cid, "dmthin-test:after")
        d.rm(cid)
        assert d.read_file(image, "/etc/after") == b"dockerd after dmthin\n"
    with Driver(home(root), backend=backend, readonly=True) as drv:
        assert drv.deviceset.has_device("dmthin-extra")


@pytest.mark.parametrize("backend", BACKENDS)
def test_dockerd_accepts_a_root_dmthin_made(dockerd_factory: object, backend: str) -> None:
    d: Dockerd = dockerd_factory()  # type: ignore[operator]
    with Driver(home(d.data_root), OPTS, backend=backend, cleanup_interval=None):
        pass                                                # pool + base, Docker's way
    with d.running():
        st = d.driver_status()
        assert st["Pool Blocksize"] == "65.54kB" and st["Backing Filesystem"] == "ext4"
        assert st["Base Device Size"] == "268.4MB"
        image = d.import_image(image_tar(MADE_FILES), "dmthin-made:base")
        cid = d.create(image, ["/bin/true"], name="on-dmthin")
        d.cp_in(cid, "/etc", {"copied": b"copied by docker\n"})
    layers = LayerDB.for_root(home(d.data_root))
    mount = layers.resolve(cid, set())
    ours = known_content(f"written by dmthin ({backend})", 100 * 1024)
    with Driver(home(d.data_root), OPTS, backend=backend, cleanup_interval=None) as drv:
        with drv.open_fs(mount) as tree, tree.open_read("etc/copied") as f:
            assert f.read() == b"copied by docker\n"      # docker's file, under rootfs/
        write_file(drv, mount, "/etc/from-dmthin", ours)
    with d.running():
        assert d.cp_out("on-dmthin", "/etc/from-dmthin") == ours
        assert d.cp_out("on-dmthin", "/etc/hello") == MADE_FILES["/etc/hello"]
        committed = d.commit(cid, "dmthin-made:committed")
        d.rm(cid)
        assert d.read_file(committed, "/etc/from-dmthin") == ours
        d.rmi(committed)


def test_thinpooldev_from_dmthin_pool_activate(dockerd_factory: object,
                                               clients_scratch: Scratch) -> None:
    pooldir = clients_scratch.mkdir("thinpooldev") / "pool"
    name = "dmthin-test-thinpool"
    dmthin("pool", "create", str(pooldir), "--backend", "kernel", "--data-size", "2G",
           "--metadata-size", "64M")
    dmthin("pool", "activate", str(pooldir), "--name", name)
    try:
        opts = (f"dm.thinpooldev=/dev/mapper/{name}", "dm.basesize=256M", "dm.fs=ext4")
        d: Dockerd = dockerd_factory(storage_opts=opts)  # type: ignore[operator]
        with d.running():
            assert d.driver_status()["Pool Name"] == name
            image = d.import_image(image_tar(MADE_FILES), "dmthin-pool:base")
            cid = d.create(image, ["/bin/true"], name="on-pool")
            d.cp_in(cid, "/data", {"x": b"on a dmthin pool\n"})
            d.rm(d.create(image, ["/bin/true"]))
        assert name in dm_names()                          # dockerd left it active
        ho = home(d.data_root)
        assert dmthin("graph", "cat", str(ho), "--opt", f"dm.thinpooldev=/dev/mapper/{name}",
                      cid, "/data/x").stdout == "on a dmthin pool\n"
        mount = LayerDB.for_root(ho).resolve(cid, set())
        listing = dmthin("graph", "ls", str(ho), "--opt", f"dm.thinpooldev=/dev/mapper/{name}",
                         "--backend", "kernel").stdout           # as the README shows it
        assert any(line.split()[:1] == [mount] for line in listing.splitlines()), listing
        with Driver(ho, opts, backend="kernel", cleanup_interval=None) as drv:
            write_file(drv, mount, "/data/y", b"dmthin on the same pool\n")
        assert name in dm_names()                          # and so did dmthin
        with d.running():
            assert d.cp_out("on-pool", "/data/y") == b"dmthin on the same pool\n"
            assert d.cp_out("on-pool", "/data/x") == b"on a dmthin pool\n"
            committed = d.commit(cid, "dmthin-pool:committed")
            d.rm(cid)
            assert d.read_file(committed, "/data/y") == b"dmthin on the same pool\n"
    finally:
        dmthin("pool", "deactivate", str(pooldir), check=False)
    assert name not in dm_names()
