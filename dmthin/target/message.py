"""The thin-pool target's messages (``pool_message`` in dm-thin.c).

Commands are case-insensitive and take an exact number of arguments;
device ids are decimal and at most ``MAX_DEV_ID``; anything else is EINVAL
("Unrecognised thin pool target message received").
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidArgument
from ..units import MAX_DEV_ID

#: command -> names of its arguments
COMMANDS = {
    "create_thin": ("dev_id",),
    "create_snap": ("dev_id", "origin_id"),
    "delete": ("dev_id",),
    "set_transaction_id": ("old_id", "new_id"),
    "reserve_metadata_snap": (),
    "release_metadata_snap": (),
}


@dataclass(frozen=True)
class Message:
    command: str
    args: tuple[int, ...]

    def __str__(self) -> str:
        return " ".join([self.command, *map(str, self.args)])


def _parse_uint(text: str, what: str, limit: int | None) -> int:
    # The kernel uses kstrtoull(text, 10, ...): decimal digits only.
    if not text.isdigit() or not text.isascii():
        raise InvalidArgument(f"invalid {what} {text!r}: expected a decimal number")
    value = int(text)
    if limit is not None and value > limit:
        raise InvalidArgument(f"invalid {what} {value}: above the maximum {limit}")
    if value >= 1 << 64:
        raise InvalidArgument(f"invalid {what} {value}: does not fit 64 bits")
    return value


def parse_message(text: str) -> Message:
    """Parse a pool message string into a :class:`Message`.

    Raises :class:`~dmthin.errors.InvalidArgument` as the kernel does.
    """
    words = text.split()
    if not words:
        raise InvalidArgument("empty thin pool target message")
    cmd = words[0].lower()
    if cmd not in COMMANDS:
        raise InvalidArgument(f"Unrecognised thin pool target message received: {words[0]!r}")
    names = COMMANDS[cmd]
    if len(words) - 1 != len(names):
        raise InvalidArgument(f"{cmd}: takes {len(names)} argument(s), got {len(words) - 1}")
    args = tuple(_parse_uint(w, n, MAX_DEV_ID if n.endswith("dev_id") or n == "origin_id" else None)
                 for w, n in zip(words[1:], names))
    return Message(cmd, args)
