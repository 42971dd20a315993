"""dmthin: Linux device-mapper thin provisioning from Python.

Two backends behind one API: a pure-Python simulator that reads and writes
the kernel's own metadata format (no root needed), and real device-mapper
thin pools through libdevmapper (root, Linux).

Main classes: :class:`Pool` (``create``, ``open``, ``adopt``),
:class:`ThinDevice`; :class:`BackendInfo`; status types :class:`PoolStatus`,
:class:`ThinStatus`; errors in :mod:`dmthin.errors`.
"""
from .backend import BackendInfo
from .errors import (
                     BackendUnavailable,
                     Busy,
                     DeviceExists,
                     DeviceNotFound,
                     DmThinError,
                     InvalidArgument,
                     IOFailure,
                     MetadataError,
                     NoSpace,
                     NoSuchDevice,
                     NotSupported,
                     PoolLocked,
                     ReadOnly,
                     ThinOSError,
                     TimedOut,
                     UsageError,
)
from .pool import Pool
from .target import PoolStatus, ThinStatus
from .thindev import ThinDevice
from .units import DataBlocks, MetaBlocks, Sectors, format_size, parse_size

__version__ = "0.1.0"

__all__ = [
    "Pool", "ThinDevice", "BackendInfo", "PoolStatus", "ThinStatus",
    "Sectors", "DataBlocks", "MetaBlocks", "parse_size", "format_size",
    "DmThinError", "ThinOSError", "DeviceExists", "DeviceNotFound", "InvalidArgument",
    "Busy", "NoSpace", "NotSupported", "NoSuchDevice", "IOFailure", "TimedOut", "ReadOnly",
    "MetadataError", "UsageError", "BackendUnavailable", "PoolLocked", "__version__",
]
