"""How long-running library code tells its caller what it finds and how far
it got, without printing (thin-provisioning-tools' ``Report``).

Library functions such as :func:`dmthin.thin.check.check_metadata` take a
:class:`Report` and call it; the caller chooses what it does: the CLI draws
a progress bar on a terminal, prints lines elsewhere, or says nothing.

This module is at the bottom of the layers (standard library only), so any
layer may accept a report.
"""
from __future__ import annotations

from typing import Protocol, TextIO


class Report(Protocol):
    """Where a library function sends its findings and progress."""

    def info(self, line: str) -> None:
        """Information that does not change the outcome."""
        ...

    def warning(self, line: str) -> None:
        """A non-fatal problem."""
        ...

    def fatal(self, line: str) -> None:
        """A problem that makes the operation fail."""
        ...

    def progress(self, done: int, total: int | None) -> None:
        """*done* units of *total* (None: unknown) are done; called often,
        with *done* never decreasing."""
        ...


class NullReport:
    """A quiet :class:`Report`: discards everything."""

    def info(self, line: str) -> None:
        """Discard *line*."""

    def warning(self, line: str) -> None:
        """Discard *line*."""

    def fatal(self, line: str) -> None:
        """Discard *line*."""

    def progress(self, done: int, total: int | None) -> None:
        """Ignore progress."""


class StreamReport(NullReport):
    """A plain :class:`Report`: each line to *stream* (flushed, so it
    interleaves with other output in order); no progress."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def _line(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def info(self, line: str) -> None:
        """Write *line*."""
        self._line(line)

    def warning(self, line: str) -> None:
        """Write *line*."""
        self._line(line)

    def fatal(self, line: str) -> None:
        """Write *line*."""
        self._line(line)
