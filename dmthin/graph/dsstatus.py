"""Docker's devicemapper ``Status()`` report for a :class:`DeviceSet`.

Field order is moby's since 17.11; optional fields appear only when they
have a value.  Sizes use ``units.HumanSize`` (decimal, ``%.4g``): 64K prints
``65.54kB``, 100G ``107.4GB``.  Used/Total come from the pool's status line
(data blocks x block size; metadata blocks x 4096); Available is
Total - Used, capped by the free space of the filesystem holding the loop
file, as Docker caps it (moby multiplies statfs's ``Bfree`` by ``Bsize``;
here ``f_bfree`` is multiplied by ``f_frsize``, the unit POSIX gives
``f_blocks``/``f_bfree`` -- the same on local filesystems, where the two
sizes agree).

:func:`pool_summary` is the part of the report that needs only a pool
(``dmthin pool status`` prints it).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..pool import Pool
from ..target import PoolStatus
from ..units import human_size_decimal as human

if TYPE_CHECKING:
    from .deviceset import DeviceSet

METADATA_BLOCK = 4096


def _fs_free(path: str | os.PathLike[str]) -> int | None:
    """Free bytes of the filesystem holding *path*, or None."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bfree * st.f_frsize


def space_usage(pool: Pool, st: PoolStatus, *, loop_files: bool) -> list[tuple[str, str]]:
    """Docker's Data/Metadata Space Used/Total/Available for *pool* with
    status *st*; *loop_files*: cap Available by the free space of the
    filesystems holding the pool's data and metadata files."""
    bs = pool.data_block_size
    data_used = int(st.used_data_blocks) * bs
    data_total = int(st.total_data_blocks) * bs
    data_avail = data_total - data_used
    meta_used = int(st.used_metadata_blocks) * METADATA_BLOCK
    meta_total = int(st.total_metadata_blocks) * METADATA_BLOCK
    meta_avail = meta_total - meta_used
    if loop_files and pool.pooldir is not None:      # None: attached by device name
        free = _fs_free(pool.pooldir.data_path)
        if free is not None and free < data_avail:
            data_avail = free
        free = _fs_free(pool.pooldir.metadata_path)
        if free is not None and free < meta_avail:
            meta_avail = free
    return [("Data Space Used", human(data_used)),
            ("Data Space Total", human(data_total)),
            ("Data Space Available", human(data_avail)),
            ("Metadata Space Used", human(meta_used)),
            ("Metadata Space Total", human(meta_total)),
            ("Metadata Space Available", human(meta_avail))]


def pool_summary(pool: Pool, st: PoolStatus) -> list[tuple[str, str]]:
    """The figures of a pool directory's pool in ``docker info``'s words:
    Pool Blocksize, then :func:`space_usage` over its loop files."""
    return [("Pool Blocksize", human(pool.data_block_size)),
            *space_usage(pool, st, loop_files=True)]


def deviceset_status(ds: DeviceSet) -> list[tuple[str, str]]:
    """Ordered (name, value) pairs, as ``docker info`` prints them."""
    pool = ds.live_pool
    st = pool.status()
    info = pool.info()
    bs = pool.data_block_size
    min_free = (int(st.total_data_blocks) * ds.options.min_free_space_percent // 100) * bs
    base = ds.devices.get("")
    out = [("Pool Name", info.device_name or ds.pool_name),
           ("Pool Blocksize", human(bs)),
           ("Base Device Size", human(base.size if base else 0)),
           ("Backing Filesystem", ds.base_fs),
           ("Udev Sync Supported", _bool(info.udev_sync_supported))]
    if info.data_device:
        out.append(("Data file", info.data_device))
    if info.metadata_device:
        out.append(("Metadata file", info.metadata_device))
    if ds.managed:
        out += [("Data loop file", str(ds.loop_dir / "data")),
                ("Metadata loop file", str(ds.loop_dir / "metadata"))]
    out += space_usage(pool, st, loop_files=ds.managed)
    out += [("Thin Pool Minimum Free Space", human(min_free)),
            ("Deferred Removal Enabled", _bool(ds.options.deferred_removal)),
            ("Deferred Deletion Enabled", _bool(ds.options.deferred_deletion)),
            ("Deferred Deleted Device Count", str(ds.nr_deleted))]
    if info.library_version:
        out.append(("Library Version", info.library_version))
    return out


def _bool(value: bool) -> str:
    return "true" if value else "false"


def format_status(pairs: list[tuple[str, str]]) -> str:
    """``docker info`` style lines: `` Name: value``."""
    return "".join(f" {k}: {v}\n" for k, v in pairs)
