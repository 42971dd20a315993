"""The thin pool of a graph root, opened the way dockerd opens it.

A driver home (``/var/lib/docker/devicemapper``) holds its pool in
``devicemapper/{data,metadata}`` (loop-lvm), or uses an existing pool named
by ``dm.thinpooldev``.  This module finds or makes that pool:

- ``dm.thinpooldev=/dev/mapper/NAME`` (or a bare NAME): attach to the
  active kernel pool NAME; the driver never tears it down.  The absolute
  path of a dmthin pool *directory* is accepted there too (for the
  simulator).
- ``devicemapper/data`` and ``metadata`` exist: the pool dockerd (or
  dmthin) made.  With dmthin's ``pool.json`` it is opened as a dmthin pool;
  without, it is *adopted*: block size and sizes come from its superblock
  and nothing is written until something changes.  Never formatted.
- neither exists: a new pool with Docker's table: ``dm.blocksize``
  (default 64K), low water mark 32768 blocks, ``skip_block_zeroing``.

Names are Docker's: ``docker-MAJ:MIN-INO`` of the driver home (see
:func:`dmthin.pooldir.device_prefix` with ``head="docker"``), the pool
``<prefix>-pool``, thin devices ``<prefix>-<hash>`` and the base
``<prefix>-base``; the kernel backend uses them as device-mapper names.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .. import Pool
from ..blockdev import path_size
from ..errors import UsageError
from ..pooldir import CONFIG_NAME
from .options import DeviceSetOptions

log = logging.getLogger("dmthin.graph.deviceset")

DOCKER_LOW_WATER_MARK = 32768               # blocks: "... 128 32768 1 skip_block_zeroing"
DOCKER_FEATURES = ("skip_block_zeroing",)
MAPPER_DIR = "/dev/mapper/"


def driver_home(path: str | os.PathLike[str]) -> Path:
    """The driver home a user means by *path*: *path* itself, or dockerd's
    ``DATA_ROOT/devicemapper`` when given the data root (``/var/lib/docker``)."""
    p = Path(path)
    if not (p / "metadata").is_dir() and (p / "devicemapper" / "metadata").is_dir():
        return p / "devicemapper"
    return p


@dataclass(frozen=True)
class RootPool:
    """The opened pool and what Docker knows about it."""
    pool: Pool
    #: Docker's pool name (``<prefix>-pool`` or the dm.thinpooldev name)
    name: str
    #: the driver's own loop-lvm pool (False for dm.thinpooldev)
    managed: bool
    #: this call formatted a new pool
    created: bool


def is_loop_root(home: Path) -> bool:
    """True if ``home/devicemapper`` holds a data or metadata file (Docker's
    ``hasImage``)."""
    pooldir = home / "devicemapper"
    return (pooldir / "data").exists() or (pooldir / "metadata").exists()


def open_root_pool(home: Path, options: DeviceSetOptions, prefix: str,
                   backend: str | None, readonly: bool) -> RootPool:
    """Open (or, read-write and absent, create) the pool of driver home *home*.

    Raises :class:`~dmthin.errors.UsageError` (read-only and no pool), and
    what :meth:`Pool.open`, :meth:`Pool.adopt` and :meth:`Pool.create` raise.
    """
    if options.thin_pool_dev:
        return _open_thinpooldev(options.thin_pool_dev, backend, readonly)
    name = f"{prefix}-pool"
    pooldir = home / "devicemapper"
    if is_loop_root(home):
        if (pooldir / CONFIG_NAME).exists():
            pool = Pool.open(pooldir, backend=backend, readonly=readonly, name=name)
        else:
            pool = Pool.adopt(pooldir, data=pooldir / "data", metadata=pooldir / "metadata",
                              backend=backend or "sim", readonly=readonly, name=name,
                              low_water_mark=DOCKER_LOW_WATER_MARK, features=DOCKER_FEATURES)
        if not readonly:
            try:
                _grow_loop_files(pool, pooldir, options)
            except BaseException:
                pool.close()
                raise
        return RootPool(pool, name, managed=True, created=False)
    if readonly:
        raise UsageError(f"{home} has no pool (no devicemapper/data, devicemapper/metadata, "
                         "no dm.thinpooldev): give a graph root dockerd or dmthin made")
    pool = Pool.create(pooldir, data_size=options.loop_data_size,
                       metadata_size=options.loop_metadata_size, block_size=options.block_size,
                       low_water_mark=DOCKER_LOW_WATER_MARK, features=DOCKER_FEATURES,
                       backend=backend or "sim", name=name)
    return RootPool(pool, name, managed=True, created=True)


def _open_thinpooldev(name: str, backend: str | None, readonly: bool) -> RootPool:
    """``dm.thinpooldev`` (``/dev/mapper/`` already stripped): an active
    kernel pool by name, or the absolute path of a dmthin pool directory."""
    if os.path.isabs(name) and os.path.isdir(name):
        pool = Pool.open(name, backend=backend, readonly=readonly)
        return RootPool(pool, pool.info().device_name or name, managed=False, created=False)
    pool = Pool.open(MAPPER_DIR + name, backend=backend or "kernel", readonly=readonly)
    return RootPool(pool, name, managed=False, created=False)


def _grow_loop_files(pool: Pool, pooldir: Path, options: DeviceSetOptions) -> None:
    """Docker's ``ensureImage`` on restart: grow data/metadata to an explicit
    ``dm.loopdatasize``/``dm.loopmetadatasize``, never shrink."""
    for name, size, given, resize in (
            ("data", options.loop_data_size, options.user_loop_data_size, pool.resize_data),
            ("metadata", options.loop_metadata_size, options.user_loop_metadata_size,
             pool.resize_metadata)):
        if not given:
            continue
        have = path_size(pooldir / name)
        if size > have:
            resize(size)
        elif size < have:
            log.warning("devmapper: Can't shrink loopback file %s", pooldir / name)
