"""Docker's dm.* option parsing: defaults, sizes, error texts (moby NewDeviceSet)."""
import pytest

from dmthin.errors import UsageError
from dmthin.graph.options import parse_options, ram_in_bytes


def test_defaults_are_dockers():
    o = parse_options(())
    assert o.base_size == 10 << 30
    assert o.loop_data_size == 100 << 30
    assert o.loop_metadata_size == 2 << 30
    assert o.block_size == 64 << 10
    assert o.min_free_space_percent == 10
    assert o.blkdiscard is True
    assert o.filesystem is None and o.mkfs_args == [] and o.mount_options == ""
    assert o.deferred_removal and o.deferred_deletion


@pytest.mark.parametrize(("text", "expected"), [
    ("10G", 10 << 30), ("10g", 10 << 30), ("10GB", 10 << 30), ("10GiB", 10 << 30),
    ("512m", 512 << 20), ("64K", 64 << 10), ("1.5G", 3 << 29), ("100", 100),
])
def test_ram_in_bytes_is_binary(text, expected):
    assert ram_in_bytes(text) == expected


def test_values_and_case_insensitive_keys():
    o = parse_options(["DM.BaseSize=20G", "dm.loopdatasize=1G", "dm.fs=xfs",
                       "dm.mkfsarg=-K", "dm.mkfsarg=-m crc=0", "dm.mountopt=nodiscard",
                       "dm.mountopt=noatime", "dm.blocksize=512K", "dm.min_free_space=0%",
                       "dm.use_deferred_deletion=false", "dm.use_deferred_removal=0",
                       "dm.blkdiscard=F"])
    assert o.base_size == 20 << 30 and o.user_base_size
    assert o.loop_data_size == 1 << 30
    assert o.filesystem == "xfs"
    assert o.mkfs_args == ["-K", "-m crc=0"]
    assert o.mount_options == "nodiscard,noatime"
    assert o.block_size == 512 << 10
    assert o.min_free_space_percent == 0
    assert not o.deferred_deletion and not o.deferred_removal and not o.blkdiscard


def test_thinpooldev_strips_prefix_and_turns_blkdiscard_off():
    o = parse_options(["dm.thinpooldev=/dev/mapper/mypool"])
    assert o.thin_pool_dev == "mypool" and o.blkdiscard is False
    o = parse_options(["dm.thinpooldev=mypool", "dm.blkdiscard=true"])
    assert o.blkdiscard is True


@pytest.mark.parametrize(("opt", "message"), [
    ("dm.foo=1", "devmapper: Unknown option dm.foo"),
    ("dm.fs=btrfs", "devmapper: Unsupported filesystem btrfs"),
    ("dm.min_free_space=10", "devmapper: Option dm.min_free_space requires % suffix"),
    ("dm.min_free_space=100%", "devmapper: Invalid value 100% for option dm.min_free_space"),
    ("dm.basesize=ten", "invalid size: 'ten'"),
    ("dm.blkdiscard=yes", 'strconv.ParseBool: parsing "yes": invalid syntax'),
    ("dm.libdm_log_level=9", "dm.libdm_log_level must be in range [2,7]"),
    ("novalue", "Unable to parse key/value option: novalue"),
])
def test_docker_error_texts(opt, message):
    with pytest.raises(UsageError) as exc:
        parse_options([opt])
    assert str(exc.value).startswith(message)


def test_deferred_deletion_needs_deferred_removal():
    with pytest.raises(UsageError, match="Deferred deletion can not be enabled as deferred "
                                         "removal is not enabled"):
        parse_options(["dm.use_deferred_removal=false", "dm.use_deferred_deletion=true"])
