"""The thin-pool target's messages (``pool_message`` in dm-thin.c).

Commands are case-insensitive and take an exact number of arguments;
device ids are decimal and at most ``MAX_DEV_ID``; anything else is EINVAL
("Unrecognised thin pool target message received").
"""
from __future__ import annotations

import operator
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
    """One thin-pool message.  Build it with the classmethods
    (``Message.create_thin(7)``) or :meth:`parse`; ``str(msg)`` is the text
    the kernel receives.  The classmethods validate ids as the kernel does
    (:class:`~dmthin.errors.InvalidArgument`)."""
    command: str
    args: tuple[int, ...]

    def __str__(self) -> str:
        return " ".join([self.command, *map(str, self.args)])

    @classmethod
    def parse(cls, text: str) -> Message:
        """Parse message text (see :func:`parse_message`)."""
        return parse_message(text)

    @classmethod
    def create_thin(cls, dev_id: int) -> Message:
        return cls("create_thin", (_dev_id(dev_id, "dev_id"),))

    @classmethod
    def create_snap(cls, dev_id: int, origin_id: int) -> Message:
        return cls("create_snap", (_dev_id(dev_id, "dev_id"), _dev_id(origin_id, "origin_id")))

    @classmethod
    def delete(cls, dev_id: int) -> Message:
        return cls("delete", (_dev_id(dev_id, "dev_id"),))

    @classmethod
    def set_transaction_id(cls, old_id: int, new_id: int) -> Message:
        return cls("set_transaction_id", (_uint64(old_id, "old_id"), _uint64(new_id, "new_id")))

    @classmethod
    def reserve_metadata_snap(cls) -> Message:
        return cls("reserve_metadata_snap", ())

    @classmethod
    def release_metadata_snap(cls) -> Message:
        return cls("release_metadata_snap", ())


def _uint64(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise InvalidArgument(f"invalid {what} {value!r}: expected an integer")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgument(f"invalid {what} {value!r}: expected an integer") from None
    if not 0 <= number < 1 << 64:
        raise InvalidArgument(f"invalid {what} {number}: use 0 to 2^64-1")
    return number


def _dev_id(value: object, what: str) -> int:
    number = _uint64(value, what)
    if number > MAX_DEV_ID:
        raise InvalidArgument(f"invalid {what} {number}: above the maximum {MAX_DEV_ID}")
    return number


def _parse_uint(text: str, what: str, limit: int | None) -> int:
    # The kernel uses kstrtoull(text, 10, ...): one optional '+', then
    # decimal digits only; past 64 bits it fails (checked here on the digits
    # before any conversion, however many leading zeros).
    digits = text[1:] if text.startswith("+") else text
    if not digits.isdigit() or not digits.isascii():
        raise InvalidArgument(f"invalid {what} {text[:40]!r}: expected a decimal number")
    significant = digits.lstrip("0") or "0"
    if len(significant) > 20:
        raise InvalidArgument(f"invalid {what} {significant[:20]}...: does not fit 64 bits")
    value = int(significant)
    if limit is not None and value > limit:
        raise InvalidArgument(f"invalid {what} {value}: above the maximum {limit}")
    if value >= 1 << 64:
        raise InvalidArgument(f"invalid {what} {value}: does not fit 64 bits")
    return value


def parse_message(text: str) -> Message:
    """Parse a pool message string into a :class:`Message`.

    Raises :class:`~dmthin.errors.InvalidArgument` as the kernel does, also
    for a *text* that is not a string.
    """
    if not isinstance(text, str):
        raise InvalidArgument(f"invalid thin pool message {text!r}: give the message as a "
                              "string, e.g. 'create_thin 1'")
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
                 for w, n in zip(words[1:], names, strict=True))
    return Message(cmd, args)
