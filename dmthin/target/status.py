"""Typed pool and thin status, and the kernel's status text.

Pool status (``pool_status``, STATUSTYPE_INFO, dm-thin.c), one line with a
trailing space::

    <tid> <used_meta>/<total_meta> <used_data>/<total_data> <held_root|->
    <rw|ro|out_of_data_space> <ignore_discard|discard_passdown|no_discard_passdown>
    <queue_if_no_space|error_if_no_space> <needs_check|-> <metadata_low_watermark>

Thin status: ``<mapped_sectors> <highest_mapped_sector|->``.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from ..errors import InvalidArgument
from ..units import DataBlocks, MetaBlocks, Sectors


class PoolMode(str, enum.Enum):
    """The pool mode as the status line shows it."""
    RW = "rw"
    RO = "ro"
    OUT_OF_DATA_SPACE = "out_of_data_space"


class DiscardMode(str, enum.Enum):
    IGNORE = "ignore_discard"
    PASSDOWN = "discard_passdown"
    NO_PASSDOWN = "no_discard_passdown"


class NoSpacePolicy(str, enum.Enum):
    QUEUE = "queue_if_no_space"
    ERROR = "error_if_no_space"


@dataclass(frozen=True)
class PoolStatus:
    """A thin pool's status, as the kernel reports it."""
    transaction_id: int
    used_metadata_blocks: MetaBlocks
    total_metadata_blocks: MetaBlocks
    used_data_blocks: DataBlocks
    total_data_blocks: DataBlocks
    held_root: int | None
    mode: PoolMode
    discard: DiscardMode
    no_space_policy: NoSpacePolicy
    needs_check: bool
    metadata_low_watermark: int

    @property
    def free_data_blocks(self) -> int:
        return self.total_data_blocks - self.used_data_blocks

    @property
    def free_metadata_blocks(self) -> int:
        return self.total_metadata_blocks - self.used_metadata_blocks

    def to_dict(self) -> dict[str, int | str | bool | None]:
        """The fields as JSON-ready values (numbers, enum values), in field
        order."""
        return {"transaction_id": self.transaction_id,
                "used_metadata_blocks": int(self.used_metadata_blocks),
                "total_metadata_blocks": int(self.total_metadata_blocks),
                "used_data_blocks": int(self.used_data_blocks),
                "total_data_blocks": int(self.total_data_blocks),
                "held_root": self.held_root, "mode": self.mode.value,
                "discard": self.discard.value, "no_space_policy": self.no_space_policy.value,
                "needs_check": self.needs_check,
                "metadata_low_watermark": self.metadata_low_watermark}

    def to_line(self) -> str:
        """The kernel's status text, exactly (with its trailing space)."""
        held = "-" if self.held_root is None else str(self.held_root)
        return (f"{self.transaction_id} {self.used_metadata_blocks}/{self.total_metadata_blocks} "
                f"{self.used_data_blocks}/{self.total_data_blocks} {held} {self.mode.value} "
                f"{self.discard.value} {self.no_space_policy.value} "
                f"{'needs_check' if self.needs_check else '-'} {self.metadata_low_watermark} ")

    @classmethod
    def parse(cls, line: str) -> PoolStatus:
        """Parse the kernel's status params (without ``0 <len> thin-pool``).

        Raises :class:`~dmthin.errors.InvalidArgument` naming the 1-based
        field that does not parse; ``Fail``/``Error`` lines raise too.
        """
        f = line.split()
        if len(f) == 1 and f[0] in ("Fail", "Error"):
            raise InvalidArgument(f"thin-pool status is {f[0]!r}")
        if len(f) < 8:
            raise InvalidArgument(f"thin-pool status has {len(f)} fields, expected at least 8: "
                                  f"{line!r}")

        def num(i: int, text: str) -> int:
            try:
                return int(text)
            except ValueError:
                raise InvalidArgument(f"thin-pool status field {i}: not a number: "
                                      f"{text!r}") from None

        def pair(i: int) -> tuple[int, int]:
            a, sep, b = f[i - 1].partition("/")
            if not sep:
                raise InvalidArgument(f"thin-pool status field {i}: expected used/total: "
                                      f"{f[i - 1]!r}")
            return num(i, a), num(i, b)

        um, tm = pair(2)
        ud, td = pair(3)
        try:
            mode = PoolMode(f[4])
            discard = DiscardMode(f[5])
            policy = NoSpacePolicy(f[6])
        except ValueError as err:
            raise InvalidArgument(f"thin-pool status: {err}") from None
        return cls(transaction_id=num(1, f[0]),
                   used_metadata_blocks=MetaBlocks(um), total_metadata_blocks=MetaBlocks(tm),
                   used_data_blocks=DataBlocks(ud), total_data_blocks=DataBlocks(td),
                   held_root=None if f[3] == "-" else num(4, f[3]),
                   mode=mode, discard=discard, no_space_policy=policy,
                   needs_check=f[7] == "needs_check",
                   metadata_low_watermark=num(9, f[8]) if len(f) > 8 else 0)


@dataclass(frozen=True)
class ThinStatus:
    """A thin device's status: mapped sectors and the highest mapped sector."""
    mapped_sectors: Sectors
    highest_mapped_sector: Sectors | None

    def to_line(self) -> str:
        high = "-" if self.highest_mapped_sector is None else str(self.highest_mapped_sector)
        return f"{self.mapped_sectors} {high}"

    @classmethod
    def from_blocks(cls, mapped_blocks: int, highest_block: int | None,
                    block_sectors: int) -> ThinStatus:
        """As ``thin_status``: ``mapped*bs`` and ``(highest+1)*bs - 1``."""
        high = None if highest_block is None else Sectors((highest_block + 1) * block_sectors - 1)
        return cls(Sectors(mapped_blocks * block_sectors), high)

    @classmethod
    def parse(cls, line: str) -> ThinStatus:
        f = line.split()
        if len(f) == 1 and f[0] in ("Fail", "Error"):
            raise InvalidArgument(f"thin status is {f[0]!r}")
        if len(f) < 2:
            raise InvalidArgument(f"thin status: expected 2 fields: {line!r}")
        try:
            return cls(Sectors(int(f[0])), None if f[1] == "-" else Sectors(int(f[1])))
        except ValueError:
            raise InvalidArgument(f"thin status: not numbers: {line!r}") from None
