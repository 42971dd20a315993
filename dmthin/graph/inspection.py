"""Read-only inspection of a graph root (``dmthin graph ls|status|cat|export``).

Everything here runs on a :class:`~dmthin.graph.Driver` opened with
``readonly=True``: the root, its pool and Docker's records stay byte for
byte as they were.  Devices are what the pool's metadata holds, joined with
Docker's records (sizes, flags) and, when dockerd's layer store sits beside
the root, the layer or container each device holds.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import IO

from ..errors import InvalidArgument
from .driver import Driver
from .layerdb import LayerDB, LayerRef
from .tree import resolve

COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class DeviceRow:
    """One device of a root: Docker's record and the pool's view."""
    #: Docker's device hash ("" for the base), None for a pool device without a record
    hash: str | None
    device_id: int
    size: int | None
    transaction_id: int | None
    initialized: bool
    deleted: bool
    #: the device exists in the pool's metadata
    in_pool: bool
    layer: LayerRef | None

    @property
    def label(self) -> str:
        """The hash as the CLI shows it: ``base``, or ``-`` without a record."""
        if self.hash is None:
            return "-"
        return self.hash or "base"

    def to_dict(self) -> dict[str, object]:
        return {"hash": self.label, "device_id": self.device_id, "size": self.size,
                "transaction_id": self.transaction_id, "initialized": self.initialized,
                "deleted": self.deleted, "in_pool": self.in_pool,
                "kind": self.layer.kind if self.layer else None,
                "layer": self.layer.name if self.layer else None,
                "parent": (self.layer.parent or "base") if self.layer else None}


def list_devices(driver: Driver, layers: LayerDB) -> list[DeviceRow]:
    """Every device of the root: records (in the pool or not) and pool
    devices without a record, by device id."""
    ds = driver.deviceset
    in_pool = set(ds.live_pool.thin_ids())
    rows = [DeviceRow(h, i.device_id, i.size, i.transaction_id, i.initialized, i.deleted,
                      i.device_id in in_pool, layers.refs.get(h))
            for h, i in ds.devices.items()]
    recorded = {i.device_id for i in ds.devices.values()}
    rows += [DeviceRow(None, d, None, None, False, False, True, None)
             for d in in_pool - recorded]
    return sorted(rows, key=lambda r: r.device_id)


def find_device(driver: Driver, layers: LayerDB, ident: str) -> str:
    """The device hash *ident* names (hash, ``base``, chain id or container
    id).  Raises :class:`~dmthin.errors.UsageError`."""
    return layers.resolve(ident, set(driver.deviceset.devices))


def cat(driver: Driver, device: str, path: str, out: IO[bytes]) -> int:
    """Copy the bytes of *path* (as the container sees it, symlinks followed
    inside the layer) of layer *device* to *out*; return how many.

    Raises ``FileNotFoundError``, ``NotADirectoryError``,
    :class:`~dmthin.errors.InvalidArgument` (not a regular file),
    ``DeviceNotFound``, ``NotSupported`` (xfs in the simulator).
    """
    with driver.open_fs(device) as tree:
        entry = resolve(tree, path)
        if not entry.is_reg:
            raise InvalidArgument(f"{path} is not a regular file in layer "
                                  f"{device or 'base'}: use 'dmthin graph export' for trees")
        total = 0
        with tree.open_read(entry.path) as f:
            while chunk := f.read(COPY_CHUNK):
                out.write(chunk)
                total += len(chunk)
        return total


def export(driver: Driver, device: str, parent: str, out: IO[bytes]) -> int:
    """Write layer *device*'s diff against *parent* ("" for none: the whole
    tree) as a tar to *out*, as Docker's naive differ makes it; return its
    size in bytes."""
    with driver.diff(device, parent) as tar:
        shutil.copyfileobj(tar, out, COPY_CHUNK)
        return tar.tell()
