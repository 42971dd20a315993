"""``thin_dump -f human_readable`` (0.9.0), byte for byte, as a visitor."""
from __future__ import annotations

from collections.abc import Iterable
from typing import TextIO

from .format import TIME_BITS, TIME_MASK
from .ir import Device, Map, Superblock


class HumanReadableWriter:
    """Visitor writing the 0.9.0 human-readable dump to a text stream."""

    def __init__(self, out: TextIO):
        self.out = out
        self.write = out.write

    def superblock_b(self, sb: Superblock) -> None:
        flags = 0 if sb.flags is None else sb.flags
        version = 1 if sb.version is None else sb.version
        snap = "" if sb.metadata_snap is None else f", {sb.metadata_snap}"
        self.write(f'begin superblock: "{sb.uuid}", {sb.time}, {sb.transaction}, {flags}, '
                   f'{version}, {sb.data_block_sectors}, {sb.nr_data_blocks}{snap}\n')

    def superblock_e(self) -> None:
        self.write("end superblock\n")

    def def_shared_b(self, name: str) -> None:
        self.write(f"begin shared: {name}\n")

    def def_shared_e(self) -> None:
        self.write("end shared\n")

    def device_b(self, d: Device) -> None:
        self.write(f"device: {d.dev_id}\nmapped_blocks: {d.mapped_blocks}\n"
                   f"transaction: {d.transaction}\ncreation time: {d.creation_time}\n"
                   f"snap time: {d.snap_time}\n")

    def device_e(self) -> None:
        self.write("\n")

    def map(self, m: Map) -> None:
        if m.len == 1:
            self.write(f"    {m.thin_begin} -> {m.data_begin}, {m.time}\n")
        else:
            n = m.len - 1
            self.write(f"    ({m.thin_begin}..{m.thin_begin + n}) -> "
                       f"({m.data_begin}..{m.data_begin + n}), {m.time}\n")

    def map_runs(self, runs: Iterable[tuple[int, int, int]]) -> None:
        """Fast path: raw ``(thin_begin, packed_value, length)`` runs."""
        self.write("".join([
            f"    {t} -> {v >> TIME_BITS}, {v & TIME_MASK}\n" if n == 1 else
            f"    ({t}..{t + n - 1}) -> ({v >> TIME_BITS}..{(v >> TIME_BITS) + n - 1}), "
            f"{v & TIME_MASK}\n"
            for t, v, n in runs]))

    def ref_shared(self, name: str) -> None:
        self.write(f"    ref: {name}\n")

    def eof(self) -> None:
        self.out.flush()
