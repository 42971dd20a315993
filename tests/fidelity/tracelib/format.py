"""The trace format (see the package docstring): JSON lines, a header then
one step per line; sizes in bytes or "64K"-style; the bytes a step writes."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from dmthin.units import parse_size

TRACES_DIR = Path(__file__).resolve().parents[2] / "traces"


def load_trace(path: str | os.PathLike[str]) -> tuple[dict, list[dict]]:
    """(header, steps) of a JSON-lines trace; raises ValueError naming the line."""
    header, steps = None, []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                obj = json.loads(line)
            except ValueError as err:
                raise ValueError(f"{path}:{n}: not JSON: {err}") from None
            if header is None:
                if "pool" not in obj:
                    raise ValueError(f"{path}:{n}: the first line must be the header "
                                     '({"name": ..., "pool": {...}})')
                header = obj
            else:
                if "op" not in obj:
                    raise ValueError(f"{path}:{n}: a step needs an \"op\"")
                steps.append(obj)
    if header is None:
        raise ValueError(f"{path}: empty trace")
    header.setdefault("name", Path(path).stem)
    return header, steps


def save_trace(path: str | os.PathLike[str], header: dict, steps: list[dict]) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(header) + "\n")
        for s in steps:
            f.write(json.dumps(s) + "\n")


def size(v: int | str) -> int:
    """A size in bytes (an int) or as text ("64K")."""
    return v if isinstance(v, int) else parse_size(v, "trace size")


def payload(seed: Any, k: int, length: int, byte: int | None = None) -> bytes:
    """The bytes of the k-th I/O of a step."""
    if byte is not None:
        return bytes([byte]) * length
    return random.Random(f"{seed}:{k}").randbytes(length)
