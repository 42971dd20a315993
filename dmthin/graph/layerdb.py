"""Docker's layer store beside a graph root, read-only: which device holds
which layer or container, and what each one's parent device is.

dockerd keeps, for a driver home ``DATA_ROOT/devicemapper``,
``DATA_ROOT/image/devicemapper/layerdb/``:

- ``sha256/<chain id>/cache-id``: the device hash of an image layer;
  ``parent`` (``sha256:<chain id>``) names the layer below it.
- ``mounts/<container id>/mount-id``: the device of a container's read-write
  layer; ``init-id`` its ``-init`` layer (the parent of the read-write
  layer's diff); ``parent`` the image's top layer.

Nothing here writes; files are opened without following symlinks.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

_HEX = re.compile(r"^[0-9a-f]{1,64}$")
DIGEST = "sha256:"


@dataclass(frozen=True)
class LayerRef:
    """What the layer store says about one device."""
    #: the device hash (cache-id, mount-id or init-id)
    device: str
    #: "layer" (image layer), "init" (a container's init layer) or "container"
    kind: str
    #: the chain id (``sha256:...``) of a layer, the container id otherwise
    name: str
    #: the device whose content this one's diff is taken against ("" for none)
    parent: str


def layerdb_path(root: str | os.PathLike[str]) -> Path:
    """Where dockerd keeps the layer store of driver home *root*."""
    return Path(root).resolve().parent / "image" / "devicemapper" / "layerdb"


def _read(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read(4096).decode("utf-8", "replace").strip()


def _dirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())
    except FileNotFoundError:
        return []


class LayerDB:
    """The layer store of one graph root (empty when there is none)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.refs: dict[str, LayerRef] = {}
        self._load()

    @classmethod
    def for_root(cls, root: str | os.PathLike[str]) -> LayerDB:
        return cls(layerdb_path(root))

    def _load(self) -> None:
        cache: dict[str, str] = {}          # chain id -> device
        parents: dict[str, str] = {}        # chain id -> parent chain id
        for d in _dirs(self.path / "sha256"):
            chain = DIGEST + d.name
            device = _read(d / "cache-id")
            if device:
                cache[chain] = device
                parents[chain] = _read(d / "parent") or ""
        for chain, device in cache.items():
            self.refs[device] = LayerRef(device, "layer", chain,
                                         cache.get(parents[chain], ""))
        for d in _dirs(self.path / "mounts"):
            mount = _read(d / "mount-id")
            init = _read(d / "init-id") or ""
            image_top = cache.get(_read(d / "parent") or "", "")
            if init:
                self.refs[init] = LayerRef(init, "init", d.name, image_top)
            if mount:
                self.refs[mount] = LayerRef(mount, "container", d.name, init or image_top)

    def parent_of(self, device: str) -> str | None:
        """The device *device*'s diff is taken against ("" for a bottom
        layer), or None if the layer store does not know the device."""
        ref = self.refs.get(device)
        return None if ref is None else ref.parent

    def resolve(self, ident: str, devices: set[str]) -> str:
        """The device hash *ident* names: a device hash in *devices* (``base``
        for the base device, whose hash is empty), or a
        chain id or container id of the layer store (full, or a unique
        prefix of at least 12 hex digits; ``sha256:`` optional).

        Raises :class:`~dmthin.errors.UsageError` naming the problem.
        """
        if ident in devices:
            return ident
        if ident == "base" and "" in devices:
            return ""
        key = ident.removeprefix(DIGEST)
        if _HEX.match(key) and len(key) >= 12:
            hits = {ref.device for ref in self.refs.values()
                    if ref.kind != "init" and ref.name.removeprefix(DIGEST).startswith(key)}
            if len(hits) == 1:
                return hits.pop()
            if len(hits) > 1:
                raise UsageError(f"{ident} is ambiguous: it names {len(hits)} layers; give more "
                                 "digits")
        raise UsageError(f"no device, layer or container {ident!r} in this root: see "
                         "'dmthin graph ls'")
