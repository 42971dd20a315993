"""The graph layer on real device-mapper, Docker's way (run in the qemu
guest): Docker's dm names and pool table are the ones in the kernel, a
layer's files are at the same paths for the kernel and the simulator, a
root read through the kernel backend keeps every byte, and a pool given by
``dm.thinpooldev=/dev/mapper/NAME`` outlives the driver."""
import subprocess
import tarfile

import pytest

from dmthin import Pool
from dmthin.graph import Driver
from dmthin.graph.inspection import cat, export, list_devices
from dmthin.graph.layerdb import LayerDB
from graph_helpers import make_docker_root, tree_digest, write_files

pytestmark = pytest.mark.real_dm

MB = 1 << 20
OPTS = ("dm.loopdatasize=300M", "dm.loopmetadatasize=64M", "dm.basesize=64M", "dm.fs=ext4",
        "dm.min_free_space=0%")


def dmsetup(*args):
    return subprocess.run(["dmsetup", *args], capture_output=True, text=True,
                          check=True).stdout


def dm_names():
    out = subprocess.run(["dmsetup", "ls"], capture_output=True, text=True, check=False).stdout
    return {ln.split()[0] for ln in out.splitlines() if ln.strip() and "No devices" not in ln}


def test_names_and_table_are_dockers(tmp_path):
    with Driver(tmp_path / "root", OPTS, backend="kernel", cleanup_interval=None) as drv:
        ds = drv.deviceset
        drv.create("layer", "")
        thin = ds.activate_device("layer")
        prefix = ds.prefix
        assert thin.name == f"{prefix}-layer" and thin.path == f"/dev/mapper/{prefix}-layer"
        assert {f"{prefix}-pool", f"{prefix}-layer"} <= dm_names()
        table = dmsetup("table", f"{prefix}-pool").split()
        assert table[2] == "thin-pool" and table[5:] == ["128", "32768", "1",
                                                          "skip_block_zeroing"]
        assert dict(drv.status())["Pool Name"] == f"{prefix}-pool"
        assert drv.get_metadata("layer")["DeviceName"] == f"{prefix}-layer"
    assert not {n for n in dm_names() if n.startswith(prefix)}


def test_kernel_and_simulator_see_the_same_paths(tmp_path):
    root = tmp_path / "root"
    with Driver(root, OPTS, backend="kernel", cleanup_interval=None) as drv:
        drv.create("k", "")
        rootfs = drv.get("k")
        with open(f"{rootfs}/from-kernel", "wb") as f:
            f.write(b"written through the mount\n")
        drv.put("k")
    with Driver(root, OPTS, backend="sim", cleanup_interval=None) as drv:
        with drv.open_fs("k") as tree, tree.open_read("from-kernel") as f:
            assert f.read() == b"written through the mount\n"
        drv.create("s", "k")
        write_files(drv, "s", files=[("from-sim", b"written by the simulator\n", 0o644, 0, 0)])
    with Driver(root, OPTS, backend="kernel", cleanup_interval=None) as drv:
        rootfs = drv.get("s")
        try:
            with open(f"{rootfs}/from-sim", "rb") as f:
                assert f.read() == b"written by the simulator\n"
            with open(f"{rootfs}/from-kernel", "rb") as f:
                assert f.read() == b"written through the mount\n"
        finally:
            drv.put("s")


def test_kernel_readonly_inspection_changes_no_byte(tmp_path):
    root, layers = make_docker_root(tmp_path, "kernel")
    before = tree_digest(root.parent)
    names = dm_names()
    with Driver(root, backend="kernel", readonly=True) as drv:
        rows = list_devices(drv, LayerDB.for_root(root))
        assert [r.label for r in rows] == ["base", "layer1", "layer2", "ctr-init", "ctr"]
        with open(tmp_path / "out", "wb") as f:
            cat(drv, "ctr", "etc/motd", f)
        assert (tmp_path / "out").read_bytes() == layers["layer2"]["etc/motd"]
        with open(tmp_path / "ctr.tar", "wb") as f:
            export(drv, "ctr", "ctr-init", f)
    with tarfile.open(tmp_path / "ctr.tar") as t:
        assert t.extractfile("etc/hostname").read() == layers["ctr"]["etc/hostname"]
    assert tree_digest(root.parent) == before
    assert dm_names() == names


def test_thinpooldev_pool_outlives_the_driver(tmp_path):
    name = "dmthin-graph-thinpooldev"
    pool = Pool.create(tmp_path / "pool", data_size="300M", metadata_size="64M",
                       backend="kernel", name=name)
    pool.close(keep_active=True)
    try:
        opts = (f"dm.thinpooldev=/dev/mapper/{name}", "dm.basesize=64M", "dm.fs=ext4",
                "dm.min_free_space=0%")
        with Driver(tmp_path / "root", opts, backend="kernel", cleanup_interval=None) as drv:
            assert dict(drv.status())["Pool Name"] == name
            drv.create("a", "")
            rootfs = drv.get("a")
            with open(f"{rootfs}/x", "wb") as f:
                f.write(b"on the shared pool\n")
            drv.put("a")
        assert name in dm_names()
        with Driver(tmp_path / "root", opts, backend="kernel", readonly=True) as drv, \
                open(tmp_path / "x", "wb") as f:
            cat(drv, "a", "/x", f)
        assert (tmp_path / "x").read_bytes() == b"on the shared pool\n"
        assert name in dm_names()
    finally:
        Pool.open(tmp_path / "pool", backend="kernel").deactivate()
    assert name not in dm_names()
