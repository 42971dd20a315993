"""dmthin: Linux device-mapper thin provisioning from Python.

Two backends behind one API: a pure-Python simulator that reads and writes
the kernel's own metadata format (no root needed), and real device-mapper
thin pools through libdevmapper (root, Linux).

Main classes: :class:`Pool` (``create``, ``open``, ``adopt``),
:class:`ThinDevice`; :class:`BackendInfo`; status types :class:`PoolStatus`,
:class:`ThinStatus`; errors in :mod:`dmthin.errors`.

The names below load on first use (PEP 562 ``__getattr__``): importing any
``dmthin.*`` module runs this file first, and the metadata tools
(``dmthin dump``, ``check``, ...) start in a fraction of the time when they
do not pay for the pool facade, both backends and the graph driver.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: public name -> the module defining it
_HOME: dict[str, str] = {
    "BackendInfo": ".backend", "Pool": ".pool", "ThinDevice": ".thindev",
    "PoolStatus": ".target", "ThinStatus": ".target",
    **dict.fromkeys(("Sectors", "DataBlocks", "MetaBlocks", "parse_size", "format_size"),
                    ".units"),
    **dict.fromkeys(("DmThinError", "ThinOSError", "DeviceExists", "DeviceNotFound",
                     "InvalidArgument", "Busy", "NoSpace", "NotSupported", "NoSuchDevice",
                     "IOFailure", "TimedOut", "ReadOnly", "MetadataError", "UsageError",
                     "BackendUnavailable", "PoolLocked"), ".errors"),
}

__all__ = [
    "Pool", "ThinDevice", "BackendInfo", "PoolStatus", "ThinStatus",
    "Sectors", "DataBlocks", "MetaBlocks", "parse_size", "format_size",
    "DmThinError", "ThinOSError", "DeviceExists", "DeviceNotFound", "InvalidArgument",
    "Busy", "NoSpace", "NotSupported", "NoSuchDevice", "IOFailure", "TimedOut", "ReadOnly",
    "MetadataError", "UsageError", "BackendUnavailable", "PoolLocked", "__version__",
]


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (then cached here).
    Raises :class:`AttributeError` for any other name."""
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'dmthin' has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
