"""Docker's devicemapper graph driver over dmthin pools.

:class:`DeviceSet` manages thin devices for image layers and containers
(ids, transactions, deferred deletion, base filesystem); :class:`Driver` is
the graph driver on top (create/remove/get/put, naive tar differ).  Options
are Docker's ``dm.*`` strings (:func:`parse_options`).

Kernel backend: everything, including mounts.  Simulator backend: every
block-level behaviour, plus filesystem content through image mirrors and
e2fsprogs' ``debugfs`` (no mounts); see :mod:`dmthin.graph.deviceset` and
:mod:`dmthin.graph.tree`.
"""
from .deviceset import DeviceSet
from .driver import Driver
from .dsstatus import format_status
from .options import DeviceSetOptions, parse_options
from .store import DevInfo

__all__ = ["DevInfo", "DeviceSet", "DeviceSetOptions", "Driver", "format_status", "parse_options"]
