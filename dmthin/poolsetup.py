"""Making, opening, adopting and attaching pools: the steps behind
:meth:`dmthin.Pool.create`, :meth:`~dmthin.Pool.open`,
:meth:`~dmthin.Pool.adopt` and ``Pool.open("/dev/mapper/NAME")``.

Each returns an :class:`Opened` (the backend, the pool directory with its
lock held, the config) for the facade, or raises having released
everything it took and removed exactly the files it made.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from .backend import PoolBackend, PoolSpec, load_backend
from .blockdev import backing_file_of, file_holders
from .errors import Busy, MetadataError, PoolLocked, UsageError
from .pooldir import Created, PoolConfig, PoolDir, device_prefix
from .poolmeta import holds_thin_magic, read_pool_superblock
from .target import PoolTable
from .target.table import normalise_features
from .thin.format import MAX_DATA_BLOCKS
from .thin.metadata_size import recommended_metadata_size
from .units import (
    MAX_METADATA_SECTORS,
    SECTOR_SIZE,
    check_data_block_size,
    check_name,
    format_size,
    parse_size,
)

DEFAULT_DATA_SIZE = "100G"       # Docker's dm.loopdatasize
DEFAULT_METADATA_SIZE = "2G"     # Docker's dm.loopmetadatasize
DEFAULT_BLOCK_SIZE = "64K"       # Docker's dm.blocksize
DOCKER_LOW_WATER_MARK = 32768    # blocks, Docker's pool table
MIN_METADATA_BYTES = 2 << 20     # LVM's minimum; the kernel needs a few blocks
MAX_METADATA_BYTES = MAX_METADATA_SECTORS * SECTOR_SIZE   # THIN_METADATA_MAX_SECTORS
_MiB = 1 << 20


def default_low_water_mark(nr_data_blocks: int) -> int:
    """Docker's 32768 blocks, capped at a tenth of the pool."""
    return min(DOCKER_LOW_WATER_MARK, nr_data_blocks // 10)


def default_metadata_size(nr_data_blocks: int) -> int:
    """The metadata the worst case of *nr_data_blocks* needs, with room for
    a thousand thin devices and a quarter to spare
    (:func:`~dmthin.thin.metadata_size.recommended_metadata_size`, what
    ``dmthin metadata-size --exact`` computes): close to LVM's rule of 64
    bytes per data block, at least 2 MiB, whole MiB, at most the kernel's
    maximum."""
    return recommended_metadata_size(max(nr_data_blocks, 1), 1)


@dataclass
class Opened:
    """A backend serving a pool, with what the facade needs to keep."""
    pooldir: PoolDir | None
    config: PoolConfig
    impl: PoolBackend
    spec: PoolSpec
    prefix: str                   # thin device dm names: <prefix>-<id>
    config_saved: bool            # False: pool.json not written yet (adopted)
    allow_other_owner: bool = False
    locker: PoolDir | None = None  # holds the pool lock when there is no pool directory


def check_low_water_mark(value: object) -> int:
    """A low water mark in data blocks (0 .. 2^64-1).  Raises UsageError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise UsageError(f"invalid low water mark {value!r}: give a number of data blocks "
                         "from 0 to 2^64-1")
    return int(value)


def pool_spec(pooldir: PoolDir, config: PoolConfig, name: str | None = None,
              readonly: bool = False, prefix: str | None = None) -> PoolSpec:
    """What a backend is given for the pool in *pooldir* with *config*: the
    dm name is *name*, the recorded one, or ``<prefix>-pool`` (default
    prefix: the pool directory's ``dmthin-MAJ:MIN-INO``)."""
    if name is not None:
        pool_name = check_name(name)
    elif config.pool_name:
        pool_name = config.pool_name
    else:
        pool_name = f"{prefix or device_prefix(pooldir.path)}-pool"
    return PoolSpec(pooldir.path, pooldir.data_path, pooldir.metadata_path,
                    config.data_block_sectors, config.low_water_mark, config.features,
                    pool_name, readonly)


def _refuse_live(pooldir: PoolDir, what: str) -> None:
    """Refuse to write metadata a kernel pool holds (Busy, naming it)."""
    holders = file_holders(pooldir.metadata_path)
    if holders:
        raise Busy(f"{what}: {pooldir.metadata_path} is in use by the active device-mapper "
                   f"device {holders[0]}; deactivate it first, open the pool with the kernel "
                   "backend, or open it read-only")


def _lock_dir(pooldir: PoolDir) -> int:
    fd = os.open(pooldir.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise PoolLocked(f"{pooldir.path}: another process is creating a pool there; "
                             "wait for it and open that pool") from None
        raise
    return fd


def create_pool(path: str | os.PathLike[str], data_size: int | str,
                metadata_size: int | str | None, block_size: int | str,
                low_water_mark: int | None, features: tuple[str, ...] | list[str],
                backend: str, name: str | None, force: bool,
                allow_other_owner: bool) -> Opened:
    """See :meth:`dmthin.Pool.create`."""
    data_bytes = parse_size(data_size, "data size")
    block_sectors = check_data_block_size(parse_size(block_size, "block size"))
    block_bytes = block_sectors * SECTOR_SIZE
    nr_blocks = data_bytes // block_bytes
    if nr_blocks < 1:
        raise UsageError(f"data size {format_size(data_bytes)} is smaller than one "
                         f"{format_size(block_bytes)} block; use at least {block_size}")
    if nr_blocks > MAX_DATA_BLOCKS or data_bytes // SECTOR_SIZE >= 1 << 63:
        raise UsageError(f"data size {data_size!r} is beyond the kernel's limits "
                         "(2^40 data blocks, 2^63 sectors)")
    meta_bytes = default_metadata_size(nr_blocks) if metadata_size is None else \
        parse_size(metadata_size, "metadata size")
    if meta_bytes < MIN_METADATA_BYTES:
        raise UsageError(f"metadata size {format_size(meta_bytes)} is too small: "
                         "use at least 2M")
    if meta_bytes > MAX_METADATA_BYTES:
        raise UsageError(f"metadata size {format_size(meta_bytes)} is above the kernel's "
                         f"maximum {format_size(MAX_METADATA_BYTES)}")
    lwm = default_low_water_mark(nr_blocks) if low_water_mark is None \
        else check_low_water_mark(low_water_mark)
    features = normalise_features(features)
    pool_name = None if name is None else check_name(name)
    backend_cls = load_backend(backend)
    backend_cls.available()                    # refuse before touching the filesystem
    pooldir = PoolDir(path)
    if pooldir.check_dir(allow_other_owner, must_exist=False) and pooldir.exists() \
            and not force:
        raise UsageError(f"{pooldir.path} already holds a pool; open it (Pool.open), or "
                         "format a new one over it with force=True / --force (destroys it)")
    made = pooldir.make_dir(allow_other_owner)
    dfd = _lock_dir(pooldir)
    fds: list[int] = []
    try:
        meta_fd, c = pooldir.create_file(pooldir.metadata_path, meta_bytes)
        fds.append(meta_fd)
        made += [c] if c else []
        if c is None and holds_thin_magic(meta_fd) and not force:
            raise UsageError(f"{pooldir.metadata_path} already holds a thin pool; adopt it "
                             "(Pool.adopt / 'dmthin pool adopt'), or format over it with "
                             "force=True / --force (destroys it)")
        _refuse_live(pooldir, "create")
        data_fd, c = pooldir.create_file(pooldir.data_path, data_bytes)
        fds.append(data_fd)
        made += [c] if c else []
        prefix = device_prefix(pooldir.path)
        config = PoolConfig(backend=backend, data_block_sectors=block_sectors,
                            low_water_mark=lwm, features=features, pool_name=pool_name)
        pooldir.lock(exclusive=True, note_pid=True)
        spec = pool_spec(pooldir, config, prefix=prefix)
        impl = backend_cls.create(spec)
        try:
            if pooldir.exists():          # force over a dmthin pool: replace its config
                pooldir.save_config(config)
            else:
                made.append(pooldir.write_config_new(config))
        except BaseException:
            impl.close()
            raise
    except BaseException:
        pooldir.unlock()
        if pooldir.note_created is not None:
            made.insert(len([m for m in made if m.is_dir]), pooldir.note_created)
        PoolDir.remove_created(made)
        raise
    finally:
        for fd in fds:
            os.close(fd)
        os.close(dfd)
    return Opened(pooldir, config, impl, spec, prefix, True, allow_other_owner)


def open_pool(path: str | os.PathLike[str], backend: str | None, readonly: bool,
              name: str | None, allow_other_owner: bool) -> Opened:
    """See :meth:`dmthin.Pool.open`."""
    pooldir = PoolDir(path)
    pooldir.check_dir(allow_other_owner)
    config = pooldir.load_config()
    if config.data_path is not None or config.metadata_path is not None:
        pooldir = PoolDir(path, config.data_path, config.metadata_path)
    return _serve(pooldir, config, backend or config.backend, readonly, name,
                  allow_other_owner, True)


def _serve(pooldir: PoolDir, config: PoolConfig, backend: str, readonly: bool,
           name: str | None, allow_other_owner: bool, saved: bool) -> Opened:
    backend_cls = load_backend(backend)
    backend_cls.available()
    pooldir.check_files()
    prefix = device_prefix(pooldir.path if pooldir.path.exists()
                           else pooldir.metadata_path.parent)
    spec = pool_spec(pooldir, config, name, readonly, prefix)
    if backend == "sim" and not readonly:
        _refuse_live(pooldir, "open with the simulator")
    pooldir.lock(exclusive=not readonly, note_pid=not readonly and saved
                 and pooldir.files_inside)
    try:
        impl = backend_cls.open(spec)
    except BaseException:
        pooldir.unlock()
        raise
    return Opened(pooldir, config, impl, spec, prefix, saved, allow_other_owner)


def _explicit(path: str | os.PathLike[str] | None) -> str | None:
    """A data or metadata path the user named: followed (LVM's
    /dev/VG/LV are symlinks), so it is recorded as the real path."""
    if path is None:
        return None
    if os.fspath(path) in ("", b""):
        raise UsageError("empty data or metadata path: give a file or block device")
    return os.path.realpath(path)


def adopt_pool(path: str | os.PathLike[str], data: str | os.PathLike[str] | None,
               metadata: str | os.PathLike[str] | None, backend: str | None, readonly: bool,
               name: str | None, low_water_mark: int | None,
               features: tuple[str, ...] | None, allow_other_owner: bool) -> Opened:
    """See :meth:`dmthin.Pool.adopt`."""
    pooldir = PoolDir(path, _explicit(data), _explicit(metadata))
    here = pooldir.check_dir(allow_other_owner, must_exist=data is None or metadata is None)
    if here and pooldir.exists():
        opened = open_pool(path, backend, readonly, name, allow_other_owner)
        assert opened.pooldir is not None
        for given, kept in ((pooldir.data_path, opened.pooldir.data_path),
                            (pooldir.metadata_path, opened.pooldir.metadata_path)):
            if (data is not None or metadata is not None) and given != kept:
                opened.impl.close()
                opened.pooldir.unlock()
                raise UsageError(f"{pooldir.config_path} records {kept}, not {given}; open "
                                 "the pool as recorded, or adopt into another directory")
        return opened
    pooldir.check_files()
    try:
        sb = read_pool_superblock(pooldir.metadata_path)
    except MetadataError as err:
        raise UsageError(f"{pooldir.metadata_path} holds no usable thin pool metadata "
                         f"({err}); make a new pool with Pool.create / 'dmthin pool "
                         "create'") from None
    except OSError as err:
        raise UsageError(f"{pooldir.metadata_path}: {os.strerror(err.errno or errno.EIO)}") \
            from None
    nr_blocks = sb.data_sm.nr_blocks
    lwm = default_low_water_mark(nr_blocks) if low_water_mark is None \
        else check_low_water_mark(low_water_mark)
    config = PoolConfig(backend=backend or "sim", data_block_sectors=sb.data_block_size,
                        low_water_mark=lwm, features=normalise_features(features or ()),
                        pool_name=None if name is None else check_name(name),
                        data_path=None if data is None else str(pooldir.data_path),
                        metadata_path=None if metadata is None else str(pooldir.metadata_path))
    return _serve(pooldir, config, config.backend, readonly, name, allow_other_owner, False)


def attach_device(device: str, backend: str | None, readonly: bool) -> Opened:
    """See :meth:`dmthin.Pool.open` with ``/dev/mapper/NAME``: attach to an
    active kernel pool.  Its table gives block size, low water mark and
    features; nothing is recorded (there is no pool directory)."""
    if backend not in (None, "kernel"):
        raise UsageError(f"{device} is a device-mapper device: only the kernel backend can "
                         "attach to it (backend='kernel')")
    backend_cls = load_backend("kernel")
    backend_cls.available()
    try:
        st = os.stat(device)
    except OSError as err:
        raise UsageError(f"{device}: {os.strerror(err.errno or errno.ENOENT)}; give an "
                         "active thin-pool device") from None
    if not stat.S_ISBLK(st.st_mode):
        raise UsageError(f"{device} is not a block device: give an active thin-pool device")
    name = _dm_name(st.st_rdev, device)
    prefix = name.removesuffix("-pool")
    spec = PoolSpec(Path(device), None, None, 128, 0, (), name, readonly)
    impl = backend_cls.open(spec)
    try:
        table = PoolTable.parse(impl.table_line())
        # the same lock a process opening the pool's directory takes: the
        # metadata file behind the loop device, or the metadata device
        meta = impl.info().metadata_device or device
        locker = PoolDir(Path(device).parent, metadata=backing_file_of(meta) or meta)
        locker.lock(exclusive=not readonly)
    except BaseException:
        impl.close(keep_active=True)
        raise
    config = PoolConfig(backend="kernel", data_block_sectors=table.data_block_sectors,
                        low_water_mark=table.low_water_mark, features=table.features,
                        pool_name=name)
    return Opened(None, config, impl, replace(spec, data_block_sectors=table.data_block_sectors),
                  prefix, False, locker=locker)


def _dm_name(rdev: int, device: str) -> str:
    sysname = f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}/dm/name"
    try:
        with open(sysname, encoding="utf-8", errors="surrogateescape") as f:
            return f.read().strip()
    except OSError:
        raise UsageError(f"{device} is not a device-mapper device; give /dev/mapper/NAME of "
                         "an active thin pool") from None


__all__ = [
    "Created",
    "Opened",
    "adopt_pool",
    "attach_device",
    "check_low_water_mark",
    "create_pool",
    "default_low_water_mark",
    "default_metadata_size",
    "open_pool",
    "pool_spec",
]
