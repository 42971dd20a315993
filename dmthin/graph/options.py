"""Docker's devicemapper storage options (``--storage-opt dm.*``).

Keys, defaults and error texts follow moby's ``NewDeviceSet``: keys are
case-insensitive, sizes are binary (``units.RAMInBytes``: ``10G`` is
10*2^30), booleans are Go's ``strconv.ParseBool`` spellings.  Options Docker
knows but dmthin cannot honour (``dm.datadev``, ``dm.metadatadev``, the
direct-lvm family) are refused with a message naming the alternative.

Deferred removal and deletion default to on, as Docker does on any kernel
whose device-mapper driver is at least 4.27.0.

``dm.thinpooldev`` names an active kernel pool (``/dev/mapper/NAME`` or
``NAME``, e.g. one from ``dmthin pool activate``; the prefix is stripped as
Docker does) or, for the simulator, the absolute path of a dmthin pool
directory; as in Docker the pool must be unused (no data
blocks, transaction id 0) on first use, and ``dm.blkdiscard`` then defaults
to false.

``dm.loopdatasize``/``dm.loopmetadatasize`` grow an existing root's files
only when given (Docker also grows them to its defaults on restart).
"""
from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import UsageError

DEFAULT_BASE_SIZE = 10 << 30          # dm.basesize 10G
DEFAULT_LOOP_DATA_SIZE = 100 << 30    # dm.loopdatasize 100G
DEFAULT_LOOP_METADATA_SIZE = 2 << 30  # dm.loopmetadatasize 2G
DEFAULT_BLOCK_SIZE = 64 << 10         # dm.blocksize 64K (128 sectors)
DEFAULT_MIN_FREE_SPACE = 10           # dm.min_free_space 10%

_RAM_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?$", re.IGNORECASE)
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_UNSUPPORTED = {
    "dm.datadev": "activate a pool with 'dmthin pool activate' and use dm.thinpooldev",
    "dm.metadatadev": "activate a pool with 'dmthin pool activate' and use dm.thinpooldev",
    "dm.directlvm_device": "activate a pool with 'dmthin pool activate' and use dm.thinpooldev",
    "dm.directlvm_device_force": "activate a pool with 'dmthin pool activate' and use "
                                 "dm.thinpooldev",
    "dm.thinp_percent": "direct-lvm setup is not supported",
    "dm.thinp_metapercent": "direct-lvm setup is not supported",
    "dm.thinp_autoextend_percent": "direct-lvm setup is not supported",
    "dm.thinp_autoextend_threshold": "direct-lvm setup is not supported",
}


def ram_in_bytes(text: str) -> int:
    """Docker's ``units.RAMInBytes``: ``10G``, ``512m``, ``1.5GiB`` -> bytes.

    Raises :class:`~dmthin.errors.UsageError` (``invalid size: '...'``).
    """
    m = _RAM_RE.match(text.strip())
    if not m:
        raise UsageError(f"invalid size: '{text}' (use a size like 10G, 512M)")
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
            "p": 1 << 50}[m.group(2).lower()]
    size = float(m.group(1)) * mult
    if not size < 1 << 63:            # Go's ParseFloat: out of range past float64, int64
        raise UsageError(f"invalid size: '{text}' is out of range (at most 8E)")
    return int(size)


def parse_bool(text: str, key: str) -> bool:
    """Go's ``strconv.ParseBool``; raises :class:`UsageError`."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise UsageError(f'strconv.ParseBool: parsing "{text}": invalid syntax '
                     f"(option {key}: use true or false)")


def auto_filesystem() -> str:
    """Docker's default for ``dm.fs``: xfs if ``mkfs.xfs`` is on PATH and
    the kernel lists xfs in /proc/filesystems, else ext4."""
    if shutil.which("mkfs.xfs"):
        try:
            with open("/proc/filesystems") as f:
                if "\txfs\n" in f.read():
                    return "xfs"
        except OSError:
            pass
    return "ext4"


@dataclass
class DeviceSetOptions:
    """Parsed ``dm.*`` options; ``None`` means "Docker's automatic choice"."""
    base_size: int = DEFAULT_BASE_SIZE
    user_base_size: bool = False
    loop_data_size: int = DEFAULT_LOOP_DATA_SIZE
    user_loop_data_size: bool = False
    loop_metadata_size: int = DEFAULT_LOOP_METADATA_SIZE
    user_loop_metadata_size: bool = False
    filesystem: str | None = None
    mkfs_args: list[str] = field(default_factory=list)
    mount_options: str = ""
    thin_pool_dev: str = ""
    block_size: int = DEFAULT_BLOCK_SIZE
    blkdiscard: bool = True
    override_udev_sync_check: bool = False
    deferred_removal: bool = True
    deferred_deletion: bool = True
    min_free_space_percent: int = DEFAULT_MIN_FREE_SPACE
    xfs_nospace_max_retries: str = ""
    libdm_log_level: int = 2


def join_mount_options(a: str, b: str) -> str:
    """Join two comma-separated option strings, as Docker does."""
    return ",".join(x for x in (a, b) if x)


def parse_options(options: Iterable[str] | None) -> DeviceSetOptions:
    """Parse Docker ``key=value`` storage options.

    Raises :class:`~dmthin.errors.UsageError` with Docker's texts, e.g.
    ``devmapper: Unknown option dm.foo``.
    """
    opts = DeviceSetOptions()
    found_blkdiscard = False
    for option in options or ():
        key, sep, val = str(option).partition("=")
        if not sep:
            raise UsageError(f"Unable to parse key/value option: {option} (use key=value)")
        key, val = key.strip().lower(), val.strip()
        if key == "dm.basesize":
            opts.base_size, opts.user_base_size = ram_in_bytes(val), True
        elif key == "dm.loopdatasize":
            opts.loop_data_size, opts.user_loop_data_size = ram_in_bytes(val), True
        elif key == "dm.loopmetadatasize":
            opts.loop_metadata_size, opts.user_loop_metadata_size = ram_in_bytes(val), True
        elif key == "dm.fs":
            if val not in ("ext4", "xfs"):
                raise UsageError(f"devmapper: Unsupported filesystem {val} (use ext4 or xfs)")
            opts.filesystem = val
        elif key == "dm.mkfsarg":
            opts.mkfs_args.append(val)
        elif key == "dm.mountopt":
            opts.mount_options = join_mount_options(opts.mount_options, val)
        elif key == "dm.thinpooldev":
            opts.thin_pool_dev = val.removeprefix("/dev/mapper/")
        elif key == "dm.blkdiscard":
            found_blkdiscard = True
            opts.blkdiscard = parse_bool(val, key)
        elif key == "dm.blocksize":
            opts.block_size = (ram_in_bytes(val) >> 9) << 9
        elif key == "dm.override_udev_sync_check":
            opts.override_udev_sync_check = parse_bool(val, key)
        elif key == "dm.use_deferred_removal":
            opts.deferred_removal = parse_bool(val, key)
        elif key == "dm.use_deferred_deletion":
            opts.deferred_deletion = parse_bool(val, key)
        elif key == "dm.min_free_space":
            if not val.endswith("%"):
                raise UsageError("devmapper: Option dm.min_free_space requires % suffix")
            num = val[:-1]
            if not num.isdigit():
                raise UsageError(f'strconv.ParseUint: parsing "{num}": invalid syntax '
                                 "(use dm.min_free_space=N% with N from 0 to 99)")
            if int(num) >= 100:
                raise UsageError(f"devmapper: Invalid value {val} for option dm.min_free_space")
            opts.min_free_space_percent = int(num)
        elif key == "dm.xfs_nospace_max_retries":
            if not val.isdigit():
                raise UsageError(f'strconv.ParseUint: parsing "{val}": invalid syntax '
                                 "(dm.xfs_nospace_max_retries takes a number)")
            opts.xfs_nospace_max_retries = val
        elif key == "dm.libdm_log_level":
            try:
                level = int(val)
            except ValueError:
                raise UsageError(f"could not parse `dm.libdm_log_level={val}`") from None
            if not 2 <= level <= 7:
                raise UsageError("dm.libdm_log_level must be in range [2,7]")
            opts.libdm_log_level = level
        elif key in _UNSUPPORTED:
            raise UsageError(f"devmapper: option {key} is not supported by dmthin: "
                             f"{_UNSUPPORTED[key]}")
        else:
            raise UsageError(f"devmapper: Unknown option {key}")
    if not found_blkdiscard and opts.thin_pool_dev:
        opts.blkdiscard = False
    if opts.deferred_deletion and not opts.deferred_removal:
        raise UsageError("devmapper: Deferred deletion can not be enabled as deferred removal "
                         "is not enabled. Enable deferred removal using --storage-opt "
                         "dm.use_deferred_removal=true parameter")
    return opts
