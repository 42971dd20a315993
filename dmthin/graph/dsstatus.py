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

from ..pool import Pool
from ..target import PoolStatus
from ..units import human_size_decimal as human

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
    if loop_files:
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
    return [("Pool Blocksize", human(pool.data_block_size))] + \
        space_usage(pool, st, loop_files=True)


def deviceset_status(ds) -> list[tuple[str, str]]:
    """Ordered (name, value) pairs, as ``docker info`` prints them."""
    pool = ds.pool
    st = pool.status()
    bs = pool.data_block_size
    managed = not ds.options.thin_pool_dev
    data_file = pool.pooldir.data_path
    meta_file = pool.pooldir.metadata_path
    min_free = (int(st.total_data_blocks) * ds.options.min_free_space_percent // 100) * bs
    base = ds.devices.get("")
    out = [("Pool Name", pool.device_name or ds.pool_name),
           ("Pool Blocksize", human(bs)),
           ("Base Device Size", human(base.size if base else 0)),
           ("Backing Filesystem", ds.base_fs),
           ("Udev Sync Supported", _bool(getattr(pool, "udev_sync_supported", False)))]
    if pool.data_device:
        out.append(("Data file", pool.data_device))
    if pool.metadata_device:
        out.append(("Metadata file", pool.metadata_device))
    if managed:
        out += [("Data loop file", str(data_file)), ("Metadata loop file", str(meta_file))]
    out += space_usage(pool, st, loop_files=managed)
    out += [("Thin Pool Minimum Free Space", human(min_free)),
            ("Deferred Removal Enabled", _bool(ds.options.deferred_removal)),
            ("Deferred Deletion Enabled", _bool(ds.options.deferred_deletion)),
            ("Deferred Deleted Device Count", str(ds.nr_deleted))]
    version = getattr(pool, "library_version", "")
    if version:
        out.append(("Library Version", str(version)))
    return out


def _bool(value) -> str:
    return "true" if value else "false"


def format_status(pairs) -> str:
    """``docker info`` style lines: `` Name: value``."""
    return "".join(f" {k}: {v}\n" for k, v in pairs)
