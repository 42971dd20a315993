"""The space-map interface (dm-space-map.h): what the transaction manager
and the thin metadata may ask of a space map.  Implemented by
:class:`~.disk.DiskSpaceMap` (data) and :class:`~.metadata.MetadataSpaceMap`."""
from __future__ import annotations

from typing import Protocol

from .format import SpaceMapRoot


class SpaceMap(Protocol):
    """``struct dm_space_map``: reference counts of a device's blocks.

    Mutating calls may raise :class:`~dmthin.errors.NoSpace` and
    :class:`~dmthin.errors.MetadataError`."""

    @property
    def nr_blocks(self) -> int: ...

    def nr_free(self) -> int: ...

    def get_count(self, b: int) -> int: ...

    def count_is_more_than_one(self, b: int) -> bool: ...

    def inc(self, b: int, e: int | None = None) -> None:
        """Add one to the counts of blocks [b, e) (e default b + 1)."""

    def dec(self, b: int, e: int | None = None) -> None:
        """Take one from the counts of blocks [b, e) (e default b + 1)."""

    def new_block(self) -> int:
        """Allocate a block free in both the committed and the current state."""

    def commit(self) -> None: ...

    def extend(self, extra_blocks: int) -> None: ...

    def root(self) -> SpaceMapRoot: ...
