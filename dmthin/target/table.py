"""Thin-pool and thin target tables (``dmsetup table`` lines)."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import InvalidArgument
from ..units import check_dev_id

#: Pool features in the order the kernel echoes them (``emit_flags``).
POOL_FEATURES = ("skip_block_zeroing", "ignore_discard", "no_discard_passdown",
                 "read_only", "error_if_no_space")


def normalise_features(features: Iterable[object]) -> tuple[str, ...]:
    """Validate pool features (case-insensitive, as ``parse_pool_features``)
    and return them in the kernel's echo order.  Raises EINVAL with the
    kernel's message for an unknown one."""
    seen = set()
    for feat in features:
        name = str(feat).lower()
        if name not in POOL_FEATURES:
            raise InvalidArgument(f"Unrecognised pool feature requested: {feat!r} "
                                  f"(known: {', '.join(POOL_FEATURES)})")
        seen.add(name)
    return tuple(f for f in POOL_FEATURES if f in seen)


@dataclass(frozen=True)
class PoolTable:
    """``<start> <len> thin-pool <meta> <data> <bs> <lwm> [<n> <feat>...]``"""
    length_sectors: int
    metadata_dev: str
    data_dev: str
    data_block_sectors: int
    low_water_mark: int
    features: tuple[str, ...] = field(default=())

    def params(self) -> str:
        """The table's parameters as the kernel echoes them (trailing space)."""
        feats = normalise_features(self.features)
        text = (f"{self.metadata_dev} {self.data_dev} {self.data_block_sectors} "
                f"{self.low_water_mark} {len(feats)} ")
        return text + "".join(f + " " for f in feats)

    def to_line(self) -> str:
        return f"0 {self.length_sectors} thin-pool {self.params()}"

    @classmethod
    def parse(cls, line: str) -> PoolTable:
        f = line.split()
        if len(f) >= 3 and f[2] == "thin-pool":
            length, f = f[1], f[3:]
        else:
            raise InvalidArgument(f"not a thin-pool table line: {line!r}")
        try:
            nfeat = int(f[4]) if len(f) > 4 else 0
            return cls(int(length), f[0], f[1], int(f[2]), int(f[3]),
                       normalise_features(f[5:5 + nfeat]))
        except (ValueError, IndexError):
            raise InvalidArgument(f"malformed thin-pool table line: {line!r}") from None


@dataclass(frozen=True)
class ThinTable:
    """``<start> <len> thin <pool dev> <dev_id> [<external origin>]``"""
    length_sectors: int
    pool_dev: str
    dev_id: int
    external_origin: str | None = None

    def params(self) -> str:
        check_dev_id(self.dev_id)
        extra = f" {self.external_origin}" if self.external_origin else ""
        return f"{self.pool_dev} {self.dev_id}{extra}"

    def to_line(self) -> str:
        return f"0 {self.length_sectors} thin {self.params()}"

    @classmethod
    def parse(cls, line: str) -> ThinTable:
        f = line.split()
        if len(f) < 5 or f[2] != "thin":
            raise InvalidArgument(f"not a thin table line: {line!r}")
        try:
            return cls(int(f[1]), f[3], int(f[4]), f[5] if len(f) > 5 else None)
        except ValueError:
            raise InvalidArgument(f"malformed thin table line: {line!r}") from None
