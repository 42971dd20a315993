"""The optional C++ accelerator of the metadata tools' hot loops
(``dmthin._tools_ffi``, built from ``csrc/tools_accel.cpp``): block
checksums, whole-leaf decoding and checking, and the tools' inner loops.

``lib`` and ``ffi`` are None when it is not built, on a big-endian host, or
when ``DMTHIN_NO_ACCEL=1`` (the tests compare both paths); every user has a
pure-Python path giving the same bytes.
"""
from __future__ import annotations

import os
import sys
from typing import Any

lib: Any = None
ffi: Any = None
try:
    from .._tools_ffi import ffi as _ffi
    from .._tools_ffi import lib as _lib
except ImportError:           # not built: the pure-Python loops
    pass
else:
    if sys.byteorder == "little" and not os.environ.get("DMTHIN_NO_ACCEL"):
        lib, ffi = _lib, _ffi
