"""The base device of a :class:`~dmthin.graph.DeviceSet` (Docker's
``setupBaseImage``): created once, formatted with Docker's mkfs options,
its filesystem UUID recorded in ``deviceset-metadata`` and verified on every
start, grown when ``dm.basesize`` rises, never shrunk.

A device without a node (the simulator) is formatted by
:func:`dmthin.extfs.mkfs` (mke2fs on a sparse scratch file, only the blocks
it wrote go to the device) and its UUID read from its superblock; only
ext4 there (``dm.fs=xfs`` is refused naming ``dm.fs=ext4``; the automatic
choice is ext4).  Growing the base (or a layer created larger than it)
reactivates the device with the size in its record, then grows the
filesystem (e2fsck + resize2fs on an image mirror, :mod:`.blockfs`, in the
simulator).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .. import ThinDevice, extfs
from ..errors import DmThinError, UsageError
from ..units import human_size_decimal
from . import blockfs
from .options import auto_filesystem
from .store import DevInfo

if TYPE_CHECKING:
    from .deviceset import DeviceSet

log = logging.getLogger("dmthin.graph.deviceset")


def setup_base_image(ds: DeviceSet) -> None:
    """Docker's setupBaseImage: verify (UUID, growth) or (re)create the base."""
    old = ds.devices.get("")
    if old is not None:
        if old.initialized and not old.deleted:
            verify_base_uuid_fs(ds, old)
            check_grow_base(ds, old)
            return
        log.debug("devmapper: Removing uninitialized base image")
        ds.delete_device("", sync_delete=True)
    if not ds.managed and old is None:
        st = ds.live_pool.status()
        if st.used_data_blocks != 0:
            raise UsageError(f"devmapper: Unable to take ownership of thin-pool "
                             f"({ds.pool_name}) that already has used data blocks")
        if st.transaction_id != 0:
            raise UsageError(f"devmapper: Unable to take ownership of thin-pool "
                             f"({ds.pool_name}) with non-zero transaction ID")
    create_base_image(ds)


def create_base_image(ds: DeviceSet) -> None:
    """createBaseImage: register, activate, mkfs, mark initialized, save UUID."""
    info = ds._create_register("", ds.options.base_size, None)
    thin = ds._activate(info)
    if not ds.filesystem:
        # Docker's automatic choice is xfs where it can mount it; a device without a node
        # (the simulator) is formatted and read through libext2fs: ext4
        ds.filesystem = auto_filesystem() if thin.path is not None else "ext4"
    if thin.path is None:
        extfs.mkfs(thin, ds.filesystem, ds.options.mkfs_args, ds.work_dir)
    else:
        blockfs.mkfs(thin.path, ds.filesystem, ds.options.mkfs_args, False)
    info.initialized = True
    ds.store.save_device(info)
    try:
        ds.base_uuid = read_uuid(ds, thin)
    except (OSError, DmThinError) as err:
        raise UsageError(f"devmapper: Could not query and save base device UUID:{err}") \
            from None
    ds.base_fs = ds.filesystem
    ds._save_deviceset()
    ds._deactivate(info)


def read_uuid(ds: DeviceSet, thin: ThinDevice) -> str:
    """blkid's UUID of *thin* (read from its superblock when it has no node)."""
    if thin.path is not None:
        return blockfs.fs_uuid(thin.path)
    return extfs.read_uuid(thin)


def verify_base_uuid_fs(ds: DeviceSet, info: DevInfo) -> None:
    """Compare the base's UUID with the recorded one; adopt its filesystem."""
    thin = ds._activate(info)
    try:
        uuid = read_uuid(ds, thin)
        if not ds.base_uuid:
            ds.base_uuid = uuid
        elif uuid != ds.base_uuid:
            raise UsageError(
                f"devmapper: Base Device UUID and Filesystem verification failed: "
                f"devmapper: Current Base Device UUID:{uuid} does not match with stored "
                f"UUID:{ds.base_uuid}. Possibly using a different thin pool than last "
                "invocation")
        if not ds.base_fs:
            ds.base_fs = ds.filesystem or "ext4"
        if ds.filesystem and ds.filesystem != ds.base_fs:
            log.warning("devmapper: Base device already exists and has filesystem %s on "
                        "it. User specified filesystem %s will be ignored.",
                        ds.base_fs, ds.filesystem)
        ds.filesystem = ds.base_fs
        ds._save_deviceset()
    finally:
        ds._deactivate(info)


def check_grow_base(ds: DeviceSet, info: DevInfo) -> None:
    """Grow the base when dm.basesize rose; refuse shrinking."""
    if not ds.options.user_base_size:
        return
    if ds.options.base_size < info.size:
        raise UsageError(f"devmapper: Base device size cannot be smaller than "
                         f"{human_size_decimal(info.size)}")
    if ds.options.base_size == info.size:
        return
    info.size = ds.options.base_size
    ds.store.save_device(info)
    grow_fs(ds, info)


def grow_fs(ds: DeviceSet, info: DevInfo) -> None:
    """growFS: reactivate the device with its recorded size, then grow the
    filesystem on it."""
    ds._deactivate(info)
    thin = ds._activate(info)
    try:
        fs = ds.base_fs or "ext4"
        if thin.path is None or fs == "ext4":
            with blockfs.device_access(thin, ds.work_dir, ds.chunk) as path:
                blockfs.grow_fs_offline(path, fs)
        else:
            mp = ds.work_dir / "growfs"
            mp.mkdir(mode=0o700, exist_ok=True)
            blockfs.mount(thin.path, mp, "xfs", "nouuid")
            try:
                blockfs.run_tool(["xfs_growfs", str(mp)])
            finally:
                blockfs.umount(mp)
    finally:
        ds._deactivate(info)
