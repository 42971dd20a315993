"""The metadata tools' accelerator (:mod:`dmthin.pdata.accel`), under the
name the thin layer's modules use."""
from __future__ import annotations

from ..pdata.accel import ffi as ffi
from ..pdata.accel import lib as lib
