"""DeviceSet at block level on the simulator: device lifecycle, ids,
transactions and rollback, free-space errors, deferred removal and deletion,
status, restart.  Expected values come from Docker's algorithms
(docs/docker.md), the pool's own status, blkid/dumpe2fs and
thin_check 0.9.0."""
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from dmthin import Pool
from dmthin.errors import Busy, DeviceExists, DeviceNotFound, NoSpace, NotSupported, UsageError
from dmthin.graph import DeviceSet
from dmthin.graph.blockfs import fs_uuid
from dmthin.units import human_size_decimal
from graph_helpers import BACKEND

MB = 1 << 20


def meta(ds, name):
    return json.loads((ds.root / "metadata" / name).read_text())


def test_first_start_creates_pool_base_and_records(make_ds):
    ds = make_ds()
    assert (ds.root / "devicemapper" / "data").stat().st_size == 64 * MB
    assert (ds.root / "devicemapper" / "metadata").stat().st_size == 16 * MB
    for d in ("", "devicemapper", "metadata", "mnt"):
        assert oct((ds.root / d).stat().st_mode & 0o777) == "0o700"
    base = meta(ds, "base")
    assert base == {"device_id": 1, "size": 16 * MB, "transaction_id": 1,
                    "initialized": True, "deleted": False}
    dsm = meta(ds, "deviceset-metadata")
    assert dsm["next_device_id"] == 1 and dsm["BaseDeviceFilesystem"] == "ext4"
    assert ds.pool.status().transaction_id == 1
    assert ds.pool.thin_ids() == [1]
    assert not ds.is_active("")            # created, formatted, deactivated
    # the UUID recorded is the one blkid reads from the device's own bytes
    with ds.device_access("", write=False) as image:
        assert fs_uuid(image) == dsm["BaseDeviceUUID"]
        out = subprocess.run(["dumpe2fs", "-h", image], capture_output=True, text=True).stdout
    assert "Filesystem magic number:  0xEF53" in out
    assert "Block count:              16384" in out     # 16M of 1K blocks


def test_add_device_ids_transactions_and_records(make_ds):
    ds = make_ds()
    ds.add_device("layer1", "")
    ds.add_device("layer2", "layer1")
    ds.add_device("ctr", "layer2", size=16 * MB)
    assert [meta(ds, h)["device_id"] for h in ("layer1", "layer2", "ctr")] == [2, 3, 4]
    assert [meta(ds, h)["transaction_id"] for h in ("layer1", "layer2", "ctr")] == [2, 3, 4]
    assert meta(ds, "layer1")["initialized"] is False
    assert ds.pool.status().transaction_id == 4
    assert meta(ds, "transaction-metadata") == {"open_transaction_id": 4,
                                                "device_hash": "ctr", "device_id": 4}
    assert ds.pool.thin_ids() == [1, 2, 3, 4]
    with pytest.raises(DeviceExists, match=r"devmapper: device layer1 already exists. "
                                           "Deleted=false"):
        ds.add_device("layer1", "")
    with pytest.raises(DeviceNotFound, match="devmapper: Unknown device nope"):
        ds.add_device("x", "nope")
    with pytest.raises(UsageError, match="devmapper: Container size cannot be smaller than "
                                         + human_size_decimal(16 * MB)):
        ds.add_device("small", "", size=8 * MB)
    # a snapshot shares all of its origin's blocks: no new data blocks
    used = ds.pool.status().used_data_blocks
    ds.add_device("layer3", "layer2")
    assert ds.pool.status().used_data_blocks == used


def test_delete_frees_id_and_records(make_ds):
    ds = make_ds()
    ds.add_device("a", "")
    ds.add_device("b", "a")
    ds.delete_device("a")
    assert not ds.has_device("a") and not (ds.root / "metadata" / "a").exists()
    assert ds.pool.thin_ids() == [1, 3]
    assert ds.pool.status().transaction_id == 4       # create, create, delete
    ds.add_device("c", "b")
    assert meta(ds, "c")["device_id"] == 4             # next_device_id keeps stepping
    with pytest.raises(DeviceNotFound):
        ds.delete_device("a")


def test_restart_reloads_everything(make_ds, tmp_path):
    ds = make_ds()
    ds.add_device("a", "")
    ds.add_device("b", "a")
    uuid = ds.base_uuid
    ds.shutdown()
    ds2 = make_ds()
    assert set(ds2.devices) == {"", "a", "b"}
    assert ds2.base_uuid == uuid and ds2.transaction_id == 3
    ds2.add_device("c", "b")
    assert ds2.device_info("c").device_id == 4


def test_pool_dir_is_an_ordinary_dmthin_pool(make_ds, thin_tools_090):
    ds = make_ds()
    ds.add_device("a", "")
    ds.shutdown()
    with Pool.open(ds.root / "devicemapper") as pool:
        assert pool.thin_ids() == [1, 2]
        assert pool.status().transaction_id == 2
    proc = subprocess.run([thin_tools_090["thin_check"], str(ds.root / "devicemapper/metadata")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_id_collision_retries_with_next_id(make_ds, caplog):
    ds = make_ds()
    ds.pool.create_thin(2, "1M", activate=False)       # someone took id 2 behind our back
    ds.add_device("a", "")
    assert ds.device_info("a").device_id == 3
    assert meta(ds, "transaction-metadata")["device_id"] == 3
    assert "Device ID 2 exists in pool but it is supposed to be unused" in caplog.text
    assert ds.pool.thin_ids() == [1, 2, 3]


CRASH = textwrap.dedent("""
    import os, sys
    sys.path[:0] = [{repo!r}, {here!r}]
    import graph_helpers
    from dmthin.graph import DeviceSet
    ds = DeviceSet({root!r}, graph_helpers.SMALL, backend={backend!r}, cleanup_interval=None)
    def crash(old, new):
        os._exit(9)                      # the process dies before closing the transaction
    ds.pool.set_transaction_id = crash
    ds.add_device("victim", "")
""")


def test_restart_rolls_back_an_open_transaction(make_ds, tmp_path, caplog):
    root = tmp_path / "root"
    make_ds().shutdown()
    here = os.path.dirname(__file__)
    code = CRASH.format(repo=os.path.dirname(os.path.dirname(here)), here=here, root=str(root),
                        backend=BACKEND)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    assert meta_path_exists(root, "victim")
    assert json.loads((root / "metadata/transaction-metadata").read_text())[
        "open_transaction_id"] == 2
    ds = make_ds()
    assert "Rolling back open transaction" in caplog.text
    assert not ds.has_device("victim") and not meta_path_exists(root, "victim")
    assert not (root / "metadata/transaction-metadata").exists()
    assert 2 not in ds.pool.thin_ids()
    assert ds.transaction_id == 1
    ds.add_device("next", "")
    assert ds.pool.status().transaction_id == 2


def meta_path_exists(root, name):
    return (root / "metadata" / name).exists()


def test_min_free_space_error_text(make_ds):
    ds = make_ds("dm.min_free_space=99%")
    st = ds.pool.status()
    free = st.total_data_blocks - st.used_data_blocks
    need = st.total_data_blocks * 99 // 100
    assert free < need
    with pytest.raises(NoSpace) as exc:
        ds.add_device("a", "")
    assert str(exc.value) == (
        f"devmapper: Thin Pool has {free} free data blocks which is less than minimum required "
        f"{need} free data blocks. Create more free space in thin pool or use "
        "dm.min_free_space option to change behavior")
    assert not ds.has_device("a") and ds.pool.thin_ids() == [1]


def _busy_delete(ds, monkeypatch, dev_id):
    real = ds.pool.delete

    def delete(i):
        if i == dev_id:
            raise Busy("Device or resource busy")      # e.g. a mount leaked into a namespace
        return real(i)
    monkeypatch.setattr(ds.pool, "delete", delete)
    return real


def test_busy_delete_is_deferred_and_retried(make_ds, monkeypatch):
    ds = make_ds()
    ds.add_device("a", "")
    dev_id = ds.device_info("a").device_id
    _busy_delete(ds, monkeypatch, dev_id)
    ds.delete_device("a")
    assert ds.has_device("a") and meta(ds, "a")["deleted"] is True
    assert dict(ds.status())["Deferred Deleted Device Count"] == "1"
    with pytest.raises(Busy, match="devmapper: Base device a has been marked for deferred "
                                   "deletion"):
        ds.add_device("b", "a")
    with pytest.raises(Busy):
        ds.activate_device("a")
    with pytest.raises(Busy):
        ds.delete_device("a", sync_delete=True)
    ds.cleanup_deleted_devices()                        # still busy: stays
    assert ds.has_device("a")
    monkeypatch.undo()
    ds.cleanup_deleted_devices()
    assert not ds.has_device("a") and dev_id not in ds.pool.thin_ids()
    assert dict(ds.status())["Deferred Deleted Device Count"] == "0"


def test_deferred_deletion_survives_restart_and_worker_retries(make_ds, monkeypatch):
    ds = make_ds()
    ds.add_device("a", "")
    _busy_delete(ds, monkeypatch, ds.device_info("a").device_id)
    ds.delete_device("a")
    monkeypatch.undo()
    ds.shutdown()
    ds = make_ds(cleanup_interval=0.05)
    assert ds.nr_deleted == 1 or not ds.has_device("a")
    deadline = time.monotonic() + 10
    while ds.has_device("a") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not ds.has_device("a") and ds.nr_deleted == 0


def test_busy_delete_without_deferred_deletion_fails(make_ds, monkeypatch):
    ds = make_ds("dm.use_deferred_deletion=false")
    ds.add_device("a", "")
    _busy_delete(ds, monkeypatch, ds.device_info("a").device_id)
    with pytest.raises(Busy):
        ds.delete_device("a")
    assert meta(ds, "a")["deleted"] is False


def test_deferred_removal_of_a_busy_device(make_ds, monkeypatch):
    ds = make_ds()
    ds.add_device("a", "")
    thin = ds.activate_device("a")
    real = thin.deactivate
    monkeypatch.setattr(thin, "deactivate", lambda: (_ for _ in ()).throw(Busy("busy")))
    ds.deactivate_device("a")
    assert ds.is_active("a")                           # removal deferred
    assert ds.activate_device("a") is thin             # re-activation cancels it
    ds.deactivate_device("a")
    monkeypatch.setattr(thin, "deactivate", real)
    ds.cleanup_deleted_devices()
    assert not ds.is_active("a")


def test_discard_on_delete_returns_blocks(make_ds):
    ds = make_ds()
    ds.add_device("a", "")
    thin = ds.activate_device("a")
    thin.write(8 * MB, b"\1" * (2 * MB))
    ds.deactivate_device("a")
    used = ds.pool.status().used_data_blocks
    ds.delete_device("a")
    assert ds.pool.status().used_data_blocks == used - (2 * MB) // ds.pool.data_block_size


def test_status_pairs_in_dockers_order(make_ds):
    ds = make_ds()
    ds.add_device("a", "")
    st = ds.pool.status()
    bs = ds.pool.data_block_size
    pairs = ds.status()
    assert [k for k, _ in pairs] == [
        "Pool Name", "Pool Blocksize", "Base Device Size", "Backing Filesystem",
        "Udev Sync Supported", "Data loop file", "Metadata loop file", "Data Space Used",
        "Data Space Total", "Data Space Available", "Metadata Space Used",
        "Metadata Space Total", "Metadata Space Available", "Thin Pool Minimum Free Space",
        "Deferred Removal Enabled", "Deferred Deletion Enabled",
        "Deferred Deleted Device Count"]
    d = dict(pairs)
    assert d["Pool Name"] == ds.prefix + "-pool" and d["Pool Name"].startswith("docker-")
    assert d["Pool Blocksize"] == "65.54kB"
    assert d["Base Device Size"] == "16.78MB"
    assert d["Backing Filesystem"] == "ext4"
    assert d["Data loop file"] == str(ds.root / "devicemapper" / "data")
    assert d["Data Space Used"] == human_size_decimal(st.used_data_blocks * bs)
    assert d["Data Space Total"] == "67.11MB"
    assert d["Metadata Space Total"] == "16.78MB"
    assert d["Metadata Space Used"] == human_size_decimal(st.used_metadata_blocks * 4096)
    assert d["Thin Pool Minimum Free Space"] == "0B"           # SMALL sets 0%
    assert d["Deferred Removal Enabled"] == "true"
    assert d["Deferred Deleted Device Count"] == "0"


def test_min_free_space_status_value(make_ds):
    ds = make_ds("dm.min_free_space=10%")
    assert dict(ds.status())["Thin Pool Minimum Free Space"] == human_size_decimal(
        (1024 * 10 // 100) * 65536)                               # 6.685MB


def test_base_uuid_mismatch_is_refused(make_ds):
    ds = make_ds()
    ds.shutdown()
    p = ds.root / "metadata/deviceset-metadata"
    d = json.loads(p.read_text())
    real, d["BaseDeviceUUID"] = d["BaseDeviceUUID"], "00000000-1111-2222-3333-444444444444"
    p.write_text(json.dumps(d))
    with pytest.raises(UsageError, match=f"Current Base Device UUID:{real} does not match "
                                         "with stored UUID:00000000-1111-2222-3333-44444444"):
        make_ds()


def test_base_size_cannot_shrink(make_ds):
    make_ds().shutdown()
    with pytest.raises(UsageError, match=r"devmapper: Base device size cannot be smaller than "
                                         "16.78MB"):
        make_ds("dm.basesize=8M")


def test_base_size_grows_on_restart(make_ds):
    make_ds().shutdown()
    ds = make_ds("dm.basesize=32M")
    assert ds.device_info("").size == 32 * MB
    with ds.device_access("", write=False) as image:
        out = subprocess.run(["dumpe2fs", "-h", image], capture_output=True, text=True).stdout
    assert "Block count:              32768" in out


def test_loop_files_grow_on_restart_never_shrink(make_ds):
    make_ds().shutdown()
    ds = make_ds("dm.loopdatasize=128M", "dm.loopmetadatasize=8M")
    assert (ds.root / "devicemapper/data").stat().st_size == 128 * MB
    assert (ds.root / "devicemapper/metadata").stat().st_size == 16 * MB
    assert dict(ds.status())["Data Space Total"] == "134.2MB"


def test_mount_needs_kernel_backend_in_sim(make_ds, tmp_path):
    if BACKEND != "sim":
        pytest.fail("this test is for the simulator")
    ds = make_ds()
    ds.add_device("a", "")
    with pytest.raises(NotSupported, match="needs the kernel backend"):
        ds.mount_device("a", tmp_path / "mp")


def test_shutdown_leaves_nothing_active(make_ds):
    ds = make_ds()
    ds.add_device("a", "")
    ds.activate_device("a")
    ds.activate_device("")
    ds.shutdown()
    assert ds.pool is None and not ds._active
    ds.shutdown()                                              # twice is fine


def test_unknown_option_fails_before_touching_root(tmp_path, backend):
    with pytest.raises(UsageError, match=r"devmapper: Unknown option dm.nope"):
        DeviceSet(tmp_path / "r", ["dm.nope=1"], backend=backend)
    assert not (tmp_path / "r").exists()


def test_resize_pool_grows_the_data_file(make_ds):
    ds = make_ds()
    ds.add_device("a", "")
    thin = ds.activate_device("a")                 # live: devices stay active
    ds.resize_pool(data_size="96M", metadata_size="24M")
    assert (ds.root / "devicemapper/data").stat().st_size == 96 * MB
    assert (ds.root / "devicemapper/metadata").stat().st_size == 24 * MB
    assert dict(ds.status())["Data Space Total"] == human_size_decimal(96 * MB)
    assert ds.is_active("a") and thin.active
    ds.add_device("b", "a")                        # the grown pool works
    with pytest.raises(UsageError, match="Can't shrink"):
        ds.resize_pool(data_size="32M")


def test_thinpooldev_uses_an_existing_empty_pool(tmp_path, backend):
    pooldir = tmp_path / "ext-pool"
    Pool.create(pooldir, data_size="64M", metadata_size="16M", backend=backend).close()
    ds = DeviceSet(tmp_path / "root", ("dm.thinpooldev=" + str(pooldir), "dm.basesize=16M",
                                        "dm.fs=ext4"), backend=backend, cleanup_interval=None)
    try:
        d = dict(ds.status())
        assert d["Pool Name"] == str(pooldir)
        assert "Data loop file" not in d
        assert ds.options.blkdiscard is False
        assert not (tmp_path / "root" / "devicemapper").exists()
    finally:
        ds.shutdown()


def test_thinpooldev_with_used_data_is_refused(tmp_path, backend):
    pooldir = tmp_path / "ext-pool"
    with Pool.create(pooldir, data_size="64M", metadata_size="16M", backend=backend) as pool:
        pool.create_thin(7, "1M").write(0, b"x" * 4096)
    with pytest.raises(UsageError, match=r"Unable to take ownership of thin-pool \(.*ext-pool\) "
                                         "that already has used data blocks"):
        DeviceSet(tmp_path / "root", ("dm.thinpooldev=" + str(pooldir), "dm.basesize=16M",
                                      "dm.fs=ext4"), backend=backend, cleanup_interval=None)
