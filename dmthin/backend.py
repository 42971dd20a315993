"""The contract both backends implement, declared once.

:class:`dmthin.Pool` and :class:`dmthin.ThinDevice` are facades over a
:class:`PoolBackend` and its :class:`ThinBackend` objects; code above them
(graph layer, CLI) never asks which backend it has.  Every member the facade
uses is declared here, typed; there is no feature probing.

Division of work:

* The **facade** validates every argument (types, sizes, ids, names), owns
  ``pool.json`` (sizes and names: what the kernel keeps outside its
  metadata), picks device-mapper names, and decides what to create.
* A **backend** assumes valid input and reproduces the kernel: it raises
  :class:`~dmthin.errors.ThinOSError` subclasses with the kernel's errno for
  everything the kernel would refuse.  It answers which thin devices exist
  from the pool's metadata (:meth:`PoolBackend.thin_ids`), never from
  ``pool.json``.

Backends are registered by name in :data:`BACKENDS` (module path and class)
and loaded lazily, so the simulator never imports cffi.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol, cast

from .errors import UsageError
from .target import Message, PoolStatus, ThinStatus

#: backend name -> "module:Class" of its PoolBackend implementation
BACKENDS = {
    "sim": "dmthin.sim.pool:SimPoolBackend",
    "kernel": "dmthin.dm.pool:KernelPoolBackend",
}

#: the backend of a new pool unless one is named (no root needed)
DEFAULT_BACKEND = "sim"

#: ``read_ids(metadata, superblock)``: the thin device ids recorded in the
#: metadata file or device *metadata*, read from the superblock (or
#: metadata snapshot) at block *superblock*.  The facade supplies it, so the
#: kernel backend needs no metadata decoder of its own.
MetadataReader = Callable[[str, int], "list[int]"]


@dataclass(frozen=True)
class PoolSpec:
    """What a backend needs to create or open one pool.

    ``data_path``/``metadata_path`` are files or block devices; both are
    None when the facade attaches to an active kernel pool by its device
    (``Pool.open("/dev/mapper/NAME")``), which the kernel backend then finds
    by ``name``.  ``path`` names the pool in error messages (the pool
    directory, or the device).  ``readonly``: never write a byte (the
    simulator opens the files O_RDONLY and never commits, showing the mode
    the metadata gives the pool; the kernel loads the table with
    ``read_only``, or attaches to the active pool without changing it).
    """
    path: Path
    data_path: Path | None
    metadata_path: Path | None
    data_block_sectors: int
    low_water_mark: int
    features: tuple[str, ...] = ()
    name: str | None = None
    readonly: bool = False


@dataclass(frozen=True)
class BackendInfo:
    """Where a pool lives (``Pool.info()``).

    ``pool_dev``: ``major:minor`` of the pool device, as thin tables name
    it (kernel) or None (simulator); ``device_name``: its device-mapper
    name; ``data_device``/``metadata_device``: the block devices under it
    (loop devices over the files, or the adopted devices), None in the
    simulator; ``library_version``: libdevmapper's version, or None;
    ``udev_sync_supported``: whether device nodes are synchronised with
    udev (False in the simulator).
    """
    pool_dev: str | None = None
    device_name: str | None = None
    data_device: str | None = None
    metadata_device: str | None = None
    library_version: str | None = None
    udev_sync_supported: bool = False


class ThinBackend(Protocol):
    """One active thin device.  Offsets and lengths arrive checked."""

    @property
    def dev_id(self) -> int: ...
    @property
    def size(self) -> int:
        """The device's size in bytes (the kernel: its table's length)."""
        ...
    @property
    def name(self) -> str | None:
        """The device-mapper name (kernel backend), or None (simulator)."""
        ...
    @property
    def path(self) -> str | None:
        """The block device node (kernel backend), or None (simulator)."""
        ...
    @property
    def activated(self) -> bool:
        """True if this process made the device (False: it was already
        active, e.g. from an earlier ``dmthin thin activate``)."""
        ...

    def read(self, offset: int, length: int) -> bytes: ...
    def write(self, offset: int, data: bytes) -> int: ...
    def discard(self, offset: int, length: int) -> None: ...
    def flush(self) -> None: ...
    def status(self) -> ThinStatus: ...
    def deactivate(self) -> None:
        """Remove the device; EBUSY (still active) if it is in use."""
        ...
    def release(self) -> None:
        """Let go of the device without removing it (``keep_active``)."""
        ...
    def resize(self, size: int) -> None:
        """Change the active device's size in bytes."""
        ...
    def in_use(self) -> bool:
        """True if something outside this object holds the device open."""
        ...


class PoolBackend(Protocol):
    """A thin pool: the simulated target or a real device-mapper pool.

    ``create(spec)`` formats a new pool over ``spec``'s files (the facade
    has already refused to format over a valid superblock unless forced);
    ``open(spec)`` serves an existing one, attaching to it when it is
    already active in the kernel.
    """

    #: the backend's registered name ("sim", "kernel")
    name: ClassVar[str]

    @classmethod
    def available(cls) -> None:
        """Raise :class:`~dmthin.errors.BackendUnavailable` (one line, with
        the fix) if this backend cannot run here; no side effects."""
        ...
    @classmethod
    def create(cls, spec: PoolSpec) -> PoolBackend: ...
    @classmethod
    def open(cls, spec: PoolSpec) -> PoolBackend: ...

    def message(self, msg: Message) -> str | None:
        """Send a thin-pool message (kernel semantics and errnos)."""
        ...
    def status(self) -> PoolStatus: ...
    def table_line(self) -> str:
        """The pool's table as ``dmsetup table`` echoes it."""
        ...
    def thin_ids(self, read_ids: MetadataReader) -> list[int]:
        """Ids of the thin devices in the pool's metadata, ascending.  The
        kernel backend reads a metadata snapshot through *read_ids*."""
        ...
    @property
    def event_nr(self) -> int: ...
    def wait_event(self, event_nr: int, timeout: float | None = None) -> int:
        """Block until the event counter passes *event_nr*; TimedOut."""
        ...
    def active_thins(self) -> list[ThinBackend]:
        """Thin devices of this pool that were already active when it was
        opened (kernel: activated by another process); never removed by
        ``close``."""
        ...
    def activate_thin(self, dev_id: int, size: int, name: str | None) -> ThinBackend:
        """Activate thin *dev_id* with *size* bytes under the dm *name*
        (kernel; None: the backend's default).  A device of this pool that
        is already active under *name* is attached to, not re-made.  Raises
        ENODATA if the metadata has no such device, EEXIST if *name* is
        taken by something else."""
        ...
    def suspend_thin(self, dev_id: int) -> None:
        """Suspend an active thin (around create_snap of an active origin)."""
        ...
    def resume_thin(self, dev_id: int) -> None: ...
    def resize_data(self, nbytes: int) -> None:
        """Grow the data device to *nbytes* live (reload and resume)."""
        ...
    def resize_metadata(self, nbytes: int) -> None:
        """Grow the metadata device to *nbytes* live."""
        ...
    def info(self) -> BackendInfo: ...
    def close(self, keep_active: bool = False) -> None:
        """Commit and release; remove the kernel devices this object made
        unless *keep_active*.  Safe to call twice."""
        ...
    def deactivate(self) -> None:
        """Remove every device of this pool (its thins, the pool, the loop
        devices dmthin attached), then close.  EBUSY if one is in use."""
        ...


def load_backend(name: str) -> type[PoolBackend]:
    """Return the backend class registered as *name*.  Raises
    :class:`~dmthin.errors.UsageError` for an unknown name."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")
    module, _, cls = BACKENDS[name].partition(":")
    return cast("type[PoolBackend]", getattr(importlib.import_module(module), cls))
