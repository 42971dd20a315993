"""The device set's metadata files and id allocator (moby's formats)."""
import json
import os

import pytest

from dmthin.errors import ReadOnly, UsageError
from dmthin.graph.store import (
    MAX_DEVICE_ID,
    DeviceSetMeta,
    DevInfo,
    IdAllocator,
    MetadataStore,
    Transaction,
    check_hash,
    go_json,
)


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
    store.save_deviceset(DeviceSetMeta(5, "uuid", "ext4"))
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
    assert not [p for p in tmp_path.iterdir()
                if p.name.startswith(".tmp") and p.name != ".tmp12345"]


def test_corrupt_device_file_is_one_line_error(tmp_path):
    store = MetadataStore(tmp_path)
    (tmp_path / "bad").write_text("{")
    with pytest.raises(UsageError, match=r"Error loading device metadata file .*bad"):
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


def test_bytes_are_go_json_marshal(tmp_path):
    """moby writes json.Marshal of its structs: compact, declaration order."""
    store = MetadataStore(tmp_path)
    store.save_device(DevInfo("", 1, 10 << 30, 1, True, False))
    store.save_deviceset(DeviceSetMeta(7, "0f1e2d3c-aaaa-bbbb-cccc-0123456789ab", "xfs"))
    store.save_transaction(Transaction(15, "f00d", 7))
    assert (tmp_path / "base").read_bytes() == (
        b'{"device_id":1,"size":10737418240,"transaction_id":1,"initialized":true,'
        b'"deleted":false}')
    assert (tmp_path / "deviceset-metadata").read_bytes() == (
        b'{"next_device_id":7,"BaseDeviceUUID":"0f1e2d3c-aaaa-bbbb-cccc-0123456789ab",'
        b'"BaseDeviceFilesystem":"xfs"}')
    assert (tmp_path / "transaction-metadata").read_bytes() == \
        b'{"open_transaction_id":15,"device_hash":"f00d","device_id":7}'
    # Go escapes HTML characters and U+2028/9; non-ASCII stays UTF-8
    assert go_json([("s", "a<b>&\u2028\u00e9")]) == '{"s":"a\\u003cb\\u003e\\u0026\\u2028\u00e9"}'


def test_transaction_file_as_moby_reads_it(tmp_path):
    store = MetadataStore(tmp_path)
    assert store.load_transaction() is None                # no file: nothing open
    (tmp_path / "transaction-metadata").write_text("{not json")
    assert store.load_transaction() == Transaction(0, "", 0)   # moby ignores the error
    (tmp_path / "transaction-metadata").write_text(
        '{"open_transaction_id":3,"device_hash":"","device_id":1,"extra":true}')
    assert store.load_transaction() == Transaction(3, "", 1)


def test_readonly_store_writes_nothing(tmp_path):
    ro = MetadataStore(tmp_path / "missing", readonly=True)
    assert not (tmp_path / "missing").exists()
    assert ro.load_devices() == {} and ro.load_deviceset() == DeviceSetMeta()
    for call in (lambda: ro.save_device(DevInfo("a", 1, 1, 1)), lambda: ro.remove_device("a"),
                 lambda: ro.save_deviceset(DeviceSetMeta()), ro.remove_transaction,
                 lambda: ro.save_transaction(Transaction(1, "", 1))):
        with pytest.raises(ReadOnly):
            call()
    assert not (tmp_path / "missing").exists()


def test_records_are_not_read_through_symlinks(tmp_path):
    store = MetadataStore(tmp_path / "m")
    (tmp_path / "secret").write_text('{"device_id":1,"size":1}')
    (tmp_path / "m" / "link").symlink_to(tmp_path / "secret")
    assert store.load_devices() == {}
