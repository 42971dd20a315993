"""dmthin: Linux device-mapper thin provisioning from Python.

Two backends behind one API: a pure-Python simulator that reads and writes
the kernel's own metadata format (no root needed), and real device-mapper
thin pools through libdevmapper (root, Linux).

Main classes: :class:`Pool`, :class:`ThinDevice`; status types
:class:`PoolStatus`, :class:`ThinStatus`; errors in :mod:`dmthin.errors`.
"""
from .errors import (BackendUnavailable, Busy, DeviceExists, DeviceNotFound, DmThinError,
                     InvalidArgument, MetadataError, NoSpace, NotSupported, PoolLocked,
                     ThinOSError, UsageError)
from .pool import Pool, ThinDevice
from .target import PoolStatus, ThinStatus
from .units import DataBlocks, MetaBlocks, Sectors, format_size, parse_size

__version__ = "0.1.0"

__all__ = [
    "Pool", "ThinDevice", "PoolStatus", "ThinStatus",
    "Sectors", "DataBlocks", "MetaBlocks", "parse_size", "format_size",
    "DmThinError", "ThinOSError", "DeviceExists", "DeviceNotFound", "InvalidArgument",
    "Busy", "NoSpace", "NotSupported", "MetadataError", "UsageError", "BackendUnavailable",
    "PoolLocked", "__version__",
]
