"""The device set's metadata files and id allocator (moby's formats)."""
import json
import os

import pytest

from dmthin.errors import UsageError
from dmthin.graph.store import (MAX_DEVICE_ID, DevInfo, IdAllocator, MetadataStore,
                                Transaction, check_hash)


def test_device_files_have_dockers_fields(tmp_path):
    store = MetadataStore(tmp_path / "metadata")
    store.save_device(DevInfo("", 1, 10 << 30, 1, True, False))
    store.save_device(DevInfo("abc", 2, 10 << 30, 2))
    assert json.loads((tmp_path / "metadata/base").read_text()) == {
        "device_id": 1, "size": 10 << 30, "transaction_id": 1, "initialized": True,
        "deleted": False}
    assert set(json.loads((tmp_path / "metadata/abc").read_text())) == {
        "device_id", "size", "transaction_id", "initialized", "deleted"}
    assert oct(os.stat(tmp_path / "metadata/abc").st_mode & 0o777) == "0o600"
    assert oct(os.stat(tmp_path / "metadata").st_mode & 0o777) == "0o700"


def test_load_skips_temp_dot_and_special_files(tmp_path):
    store = MetadataStore(tmp_path)
    store.save_device(DevInfo("x", 5, 4096, 3))
    store.save_deviceset(5, "uuid", "ext4")
    store.save_transaction(Transaction(4, "x", 5))
    (tmp_path / ".tmp12345").write_text("{garbage")      # moby#9644: leftover temp file
    (tmp_path / "json.migrated").write_text("{}")
    (tmp_path / "toobig").write_text(json.dumps({"device_id": MAX_DEVICE_ID + 1, "size": 1,
                                                 "transaction_id": 1}))
    devices = store.load_devices()
    assert list(devices) == ["x"] and devices["x"].device_id == 5
    assert json.loads((tmp_path / "deviceset-metadata").read_text()) == {
        "next_device_id": 5, "BaseDeviceUUID": "uuid", "BaseDeviceFilesystem": "ext4"}
    assert json.loads((tmp_path / "transaction-metadata").read_text()) == {
        "open_transaction_id": 4, "device_hash": "x", "device_id": 5}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp") and p.name != ".tmp12345"]


def test_corrupt_device_file_is_one_line_error(tmp_path):
    store = MetadataStore(tmp_path)
    (tmp_path / "bad").write_text("{")
    with pytest.raises(UsageError, match="Error loading device metadata file .*bad"):
        store.load_devices()


def test_id_allocator_steps_and_wraps():
    ids = IdAllocator()
    assert [ids.next_free() for _ in range(3)] == [1, 2, 3]
    ids.mark_free(2)
    assert ids.next_free() == 4          # stepping continues from next_id, as Docker's does
    ids = IdAllocator(MAX_DEVICE_ID - 1)
    ids.mark_used(0)
    assert ids.next_free() == MAX_DEVICE_ID
    assert ids.next_free() == 1          # wrapped past the used 0


@pytest.mark.parametrize("bad", ["", ".hidden", "a/b", "base", "deviceset-metadata",
                                 "transaction-metadata", "x.migrated"])
def test_bad_hashes(bad):
    with pytest.raises(UsageError):
        check_hash(bad)
