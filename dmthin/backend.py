"""The interface both backends implement.

:class:`dmthin.Pool` and :class:`dmthin.ThinDevice` are facades over these;
code above them (graph layer, CLI) never asks which backend it has.  A
backend raises :class:`~dmthin.errors.ThinOSError` subclasses with the
kernel's errno for everything the kernel would refuse.

Backends are registered by name in :data:`BACKENDS` (module path and class)
and loaded lazily, so the simulator never imports cffi.
"""
from __future__ import annotations

import importlib
from typing import Protocol

from .errors import UsageError
from .pooldir import PoolConfig, PoolDir
from .target import PoolStatus, ThinStatus

#: backend name -> "module:Class" of its PoolBackend implementation
BACKENDS = {
    "sim": "dmthin.sim.pool:SimPoolBackend",
    "kernel": "dmthin.dm.pool:KernelPoolBackend",
}

#: the backend of a new pool unless one is named (no root needed)
DEFAULT_BACKEND = "sim"


class ThinBackend(Protocol):
    """One active thin device."""

    #: the block device node (kernel backend) or None (simulator)
    path: str | None

    def read(self, offset: int, length: int) -> bytes: ...
    def write(self, offset: int, data: bytes) -> int: ...
    def discard(self, offset: int, length: int) -> None: ...
    def flush(self) -> None: ...
    def status(self) -> ThinStatus: ...
    def deactivate(self) -> None: ...
    def resize(self, size: int) -> None:
        """Change the active device's size in bytes."""
        ...
    def in_use(self) -> bool:
        """True if something outside this process holds the device open."""
        ...


class PoolBackend(Protocol):
    """A thin pool over a :class:`~dmthin.pooldir.PoolDir`.

    ``create(pooldir, config)`` formats a new pool over the directory's
    files; ``open(pooldir, config)`` attaches to an existing one.  Both are
    classmethods.  ``config`` is the sidecar; the backend may read it but the
    facade owns writing it.
    """

    name: str

    @classmethod
    def create(cls, pooldir: PoolDir, config: PoolConfig) -> "PoolBackend": ...
    @classmethod
    def open(cls, pooldir: PoolDir, config: PoolConfig) -> "PoolBackend": ...

    def message(self, text: str) -> str | None:
        """Send a thin-pool message (kernel syntax and errors)."""
        ...
    def status(self) -> PoolStatus: ...
    def table_line(self) -> str: ...
    def thin_ids(self) -> list[int]: ...
    @property
    def event_nr(self) -> int: ...
    def wait_event(self, event_nr: int, timeout: float | None = None) -> int:
        """Block until the event counter passes *event_nr*; TimedOut."""
        ...
    def activate_thin(self, dev_id: int, size: int) -> ThinBackend:
        """Activate thin *dev_id* with *size* bytes; raise ENODATA if absent."""
        ...
    def suspend_thin(self, dev_id: int) -> None:
        """Suspend an active thin (around create_snap of an active origin)."""
        ...
    def resume_thin(self, dev_id: int) -> None: ...
    def close(self) -> None:
        """Commit, deactivate what this backend activated, release resources."""
        ...


def load_backend(name: str) -> type:
    """Return the backend class registered as *name*."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise UsageError(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
