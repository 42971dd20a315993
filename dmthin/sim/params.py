"""The kernel's constants and module parameters that the simulated pool follows."""
from __future__ import annotations

import os
import re

from ..errors import UsageError
from ..units import SECTOR_SIZE

DEFAULT_NO_SPACE_TIMEOUT = 60.0     # no_space_timeout_secs, dm-thin.c
COMMIT_PERIOD = 1.0                 # COMMIT_PERIOD = HZ, dm-thin.c
METADATA_RESERVE_MAX = 4096         # __set_metadata_reserve
METADATA_THRESHOLD_MAX = 1024       # calc_metadata_threshold
METADATA_WARN_SECTORS = 16 << 21    # THIN_METADATA_MAX_SECTORS_WARNING (16 GiB)

#: environment variables overriding the two timing parameters (seconds)
NO_SPACE_TIMEOUT_ENV = "DMTHIN_SIM_NO_SPACE_TIMEOUT"
COMMIT_PERIOD_ENV = "DMTHIN_SIM_COMMIT_PERIOD"


def metadata_reserve(nr_metadata_blocks: int) -> int:
    """``__set_metadata_reserve``: metadata blocks kept back from the free count."""
    return min(METADATA_RESERVE_MAX, nr_metadata_blocks // 10)


def metadata_threshold(metadata_bytes: int) -> int:
    """``calc_metadata_threshold`` for a metadata device of *metadata_bytes*:
    the free metadata blocks at which the threshold event fires."""
    sectors = min(metadata_bytes // SECTOR_SIZE, METADATA_WARN_SECTORS)
    return min(METADATA_THRESHOLD_MAX, sectors // 8 // 4)


_SECONDS_RE = re.compile(r"([0-9]+)(?:\.[0-9]{1,9})?")


def env_seconds(name: str, default: float | None) -> float | None:
    """A number of seconds from the environment variable *name*, or *default*.

    Raises :class:`~dmthin.errors.UsageError` for a value that is not a
    non-negative number.
    """
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    # ASCII decimals only (no "inf", "nan", "1e999", Unicode digits), a
    # sensible length: a day has 5 digits of seconds
    m = _SECONDS_RE.fullmatch(text)
    if m is None or len(m.group(1).lstrip("0")) > 12:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise UsageError(f"invalid {name}={shown!r}: give a non-negative number of seconds "
                         "(e.g. 60 or 0.5)")
    return float(text)
