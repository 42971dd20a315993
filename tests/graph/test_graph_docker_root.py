"""Roots as dockerd leaves them, on the simulator: opened without
formatting, read-only inspection that changes no byte, moby's record bytes,
processPendingTransaction's three cases, layer files under rootfs/, Docker's
pool table, sizes from Docker's records, the pool's metadata as the list of
devices.  The real dockerd counterparts are in tests/clients."""
import errno
import json
import subprocess

import pytest

from dmthin import Pool
from dmthin.errors import ReadOnly, UsageError
from dmthin.graph import DeviceSet, Driver
from dmthin.graph.inspection import cat, export, list_devices
from dmthin.graph.layerdb import LayerDB
from graph_helpers import SMALL, make_docker_root, tree_digest, write_files

MB = 1 << 20


@pytest.fixture
def docker_root(tmp_path, backend):
    return make_docker_root(tmp_path, backend)


def records(root):
    return {p.name: p.read_bytes() for p in (root / "metadata").iterdir()}


def test_records_are_mobys_bytes(docker_root):
    root, _ = docker_root
    rec = records(root)
    assert rec["base"] == (b'{"device_id":1,"size":16777216,"transaction_id":1,'
                           b'"initialized":true,"deleted":false}')
    assert rec["layer1"] == (b'{"device_id":2,"size":16777216,"transaction_id":2,'
                             b'"initialized":false,"deleted":false}')
    uuid = json.loads(rec["deviceset-metadata"])["BaseDeviceUUID"]
    assert len(uuid) == 36
    assert rec["deviceset-metadata"] == (b'{"next_device_id":5,"BaseDeviceUUID":"'
                                         + uuid.encode() + b'","BaseDeviceFilesystem":"ext4"}')
    assert rec["transaction-metadata"] == \
        b'{"open_transaction_id":5,"device_hash":"ctr","device_id":5}'


def test_opening_a_docker_root_never_formats_it(docker_root, backend):
    root, layers = docker_root
    before = records(root)
    with Driver(root, SMALL, backend=backend, cleanup_interval=None) as drv:
        ds = drv.deviceset
        assert ds.transaction_id == 5
        assert ds.live_pool.thin_ids() == [1, 2, 3, 4, 5]
        assert set(ds.devices) == {"", "layer1", "layer2", "ctr-init", "ctr"}
        with drv.open_fs("ctr") as tree, tree.open_read("etc/motd") as f:
            assert f.read() == layers["layer2"]["etc/motd"]
        drv.create("more", "ctr")
        assert ds.device_info("more").device_id == 6
    after = records(root)
    assert {k: v for k, v in after.items() if k not in ("more", "deviceset-metadata",
                                                        "transaction-metadata")} == \
        {k: v for k, v in before.items() if k not in ("deviceset-metadata",
                                                      "transaction-metadata")}


def test_pool_table_is_dockers(tmp_path, backend):
    with DeviceSet(tmp_path / "r", (*SMALL, "dm.blocksize=512K"), backend=backend,
                   cleanup_interval=None) as ds:
        table = ds.live_pool.table_line().rstrip()
        assert table.endswith(" 1024 32768 1 skip_block_zeroing"), table
        assert ds.pool_name == ds.prefix + "-pool"
        assert ds.device_name("") == ds.prefix + "-base"


def test_readonly_inspection_changes_no_byte(docker_root, backend, tmp_path):
    root, layers = docker_root
    data_root = root.parent
    before = tree_digest(data_root)
    with Driver(root, backend=backend, readonly=True) as drv:
        status = dict(drv.status())
        assert status["Base Device Size"] == "16.78MB"
        assert status["Backing Filesystem"] == "ext4"
        layerdb = LayerDB.for_root(root)
        rows = list_devices(drv, layerdb)
        assert [(r.label, r.device_id, r.in_pool) for r in rows] == [
            ("base", 1, True), ("layer1", 2, True), ("layer2", 3, True),
            ("ctr-init", 4, True), ("ctr", 5, True)]
        out = tmp_path / "hostname"
        with open(out, "wb") as f:
            assert cat(drv, "ctr", "/etc/hostname", f) == len(layers["ctr"]["etc/hostname"])
        assert out.read_bytes() == layers["ctr"]["etc/hostname"]
        tar = tmp_path / "layer2.tar"
        with open(tar, "wb") as f:
            export(drv, "layer2", "layer1", f)
        for what in (lambda: drv.create("x", ""), lambda: drv.remove("layer1"),
                     lambda: drv.deviceset.resize_pool(data_size=128 * MB)):
            with pytest.raises(ReadOnly) as exc:
                what()
            assert exc.value.errno == errno.EROFS
    assert tree_digest(data_root) == before
    import tarfile
    with tarfile.open(tar) as t:
        assert t.getnames() == ["etc", "etc/motd"]
        assert t.extractfile("etc/motd").read() == layers["layer2"]["etc/motd"]


def test_readonly_needs_a_graph_root(tmp_path, backend):
    with pytest.raises(UsageError, match="not a graph root"):
        DeviceSet(tmp_path, backend=backend, readonly=True)
    assert list(tmp_path.iterdir()) == []


def test_layer_files_live_under_rootfs(docker_root, backend, tmp_path):
    """What dockerd's Get returns is mnt/<id>/rootfs: the files are under
    rootfs/ of the device's filesystem, the id beside it."""
    root, layers = docker_root
    with DeviceSet(root, backend=backend, readonly=True) as ds, \
            ds.device_access("layer2", write=False) as image:
        def dfs(cmd):
            return subprocess.run(["debugfs", "-R", cmd, image], capture_output=True,
                                  check=True).stdout
        assert dfs("cat /rootfs/etc/motd") == layers["layer2"]["etc/motd"]
        assert dfs("cat /rootfs/etc/os-release") == layers["layer1"]["etc/os-release"]
        # Get writes id only when missing: a snapshot keeps its parent's, as in moby
        assert dfs("cat /id") == b"layer1"
        assert b"etc" not in dfs("ls -p /").split(b"/")


def _set_transaction(root, open_id, hash_, dev_id):
    (root / "metadata/transaction-metadata").write_text(json.dumps(
        {"open_transaction_id": open_id, "device_hash": hash_, "device_id": dev_id}))


@pytest.mark.parametrize("delta", [0, -1])
def test_no_rollback_unless_the_open_id_is_above_the_pools(docker_root, backend, delta, caplog):
    """open id == pool's: nothing to do; below: moby only logs.  Either
    way no device is deleted and transaction-metadata stays."""
    root, _ = docker_root
    _set_transaction(root, 5 + delta, "layer2", 3)
    tx = (root / "metadata/transaction-metadata").read_bytes()
    with DeviceSet(root, SMALL, backend=backend, cleanup_interval=None) as ds:
        assert ds.live_pool.thin_ids() == [1, 2, 3, 4, 5]
        assert ds.has_device("layer2") and ds.transaction_id == 5
        assert (root / "metadata/transaction-metadata").read_bytes() == tx
    assert ("Open Transaction id 4 is less than pool transaction id 5" in caplog.text) == \
        (delta == -1)
    assert "Rolling back" not in caplog.text


def test_rollback_when_the_open_id_is_above_the_pools(docker_root, backend, caplog):
    root, _ = docker_root
    with Pool.adopt(root / "devicemapper", backend=backend) as pool:
        pool.create_thin(9, 16 * MB)           # the create whose transaction never closed
    _set_transaction(root, 6, "victim", 9)
    (root / "metadata/victim").write_text(json.dumps(
        {"device_id": 9, "size": 16 * MB, "transaction_id": 6, "initialized": False,
         "deleted": False}))
    with DeviceSet(root, backend=backend, readonly=True) as ro:
        assert ro.pending_rollback is not None and ro.pending_rollback.device_id == 9
        assert 9 in ro.live_pool.thin_ids()
    assert (root / "metadata/victim").exists()
    with DeviceSet(root, SMALL, backend=backend, cleanup_interval=None) as ds:
        assert "Rolling back open transaction: TransactionID=6 hash=victim" in caplog.text
        assert ds.live_pool.thin_ids() == [1, 2, 3, 4, 5]
        assert not ds.has_device("victim") and ds.transaction_id == 5
    assert not (root / "metadata/victim").exists()
    assert not (root / "metadata/transaction-metadata").exists()


def test_sizes_come_from_dockers_records(docker_root, backend):
    root, _ = docker_root
    with Driver(root, SMALL, backend=backend, cleanup_interval=None) as drv:
        drv.create("big", "layer1", {"size": "32M"})
    (root / "devicemapper/pool.json").unlink(missing_ok=True)
    with DeviceSet(root, backend=backend, readonly=True) as ds:
        assert ds.activate_device("big").size == 32 * MB
        assert ds.activate_device("layer1").size == 16 * MB


def test_pool_devices_without_a_record_are_listed(docker_root, backend):
    root, _ = docker_root
    with Pool.adopt(root / "devicemapper", backend=backend) as pool:
        pool.create_thin(40, 16 * MB)
    (root / "metadata/layer2").unlink()
    with Driver(root, backend=backend, readonly=True) as drv:
        rows = {r.device_id: r for r in list_devices(drv, LayerDB.for_root(root))}
    assert rows[40].hash is None and rows[40].in_pool and rows[40].label == "-"
    assert 3 in rows and rows[3].hash is None          # layer2's device, record gone


def _layerdb(root, chains, mounts):
    """Docker's layer store beside *root*: chains = [(chain, cache_id, parent)],
    mounts = [(container, mount_id, init_id, parent_chain)]."""
    db = root.parent / "image" / "devicemapper" / "layerdb"
    for chain, cache, parent in chains:
        d = db / "sha256" / chain
        d.mkdir(parents=True)
        (d / "cache-id").write_text(cache)
        if parent:
            (d / "parent").write_text("sha256:" + parent)
    for ctr, mount, init, parent in mounts:
        d = db / "mounts" / ctr
        d.mkdir(parents=True)
        (d / "mount-id").write_text(mount)
        (d / "init-id").write_text(init)
        (d / "parent").write_text("sha256:" + parent)


def test_layer_store_names_devices_and_parents(docker_root, backend):
    root, _ = docker_root
    c1, c2, ctr = "a1" * 32, "b2" * 32, "c3" * 32
    _layerdb(root, [(c1, "layer1", ""), (c2, "layer2", c1)], [(ctr, "ctr", "ctr-init", c2)])
    db = LayerDB.for_root(root)
    devices = {"", "layer1", "layer2", "ctr-init", "ctr"}
    assert db.resolve("sha256:" + c2, devices) == "layer2"
    assert db.resolve(c2[:12], devices) == "layer2"
    assert db.resolve(ctr[:12], devices) == "ctr"
    assert db.resolve("base", devices) == ""
    assert db.parent_of("layer2") == "layer1" and db.parent_of("layer1") == ""
    assert db.parent_of("ctr") == "ctr-init" and db.parent_of("ctr-init") == "layer2"
    assert db.parent_of("nope") is None
    with pytest.raises(UsageError, match="no device, layer or container 'zz'"):
        db.resolve("zz", devices)


def test_layers_written_in_a_docker_root_show_in_the_same_paths(docker_root, backend):
    root, _ = docker_root
    with Driver(root, SMALL, backend=backend, cleanup_interval=None) as drv:
        drv.create("new", "ctr")
        # a leading "/" is the layer's root (the container's view), never the host's
        write_files(drv, "new", files=[("/etc/new", b"new file", 0o600, 0, 0)])
    with Driver(root, backend=backend, readonly=True) as drv, drv.open_fs("new") as tree:
        names = set(tree.walk())
    assert {"etc/new", "etc/hostname", "etc/motd", "bin/tool"} <= names
