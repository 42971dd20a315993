"""The reports the commands hand to the library: a progress bar and lines
on a terminal, plain lines elsewhere, nothing with ``-q``.

A command opens one with :func:`command_report` and passes it (or its
:meth:`~TerminalReport.progress` method) to the library call.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from ..report import NullReport, Report, StreamReport


class TerminalReport(StreamReport):
    """A :class:`~dmthin.report.Report` for a terminal: lines on *stream*
    and a tqdm progress bar, drawn from the first :meth:`progress` call and
    moved *min_step* units at a time at least; *scale*: show k/M/G
    prefixes, powers of 1024 if *binary*.  :meth:`close` removes the bar."""

    def __init__(self, desc: str, unit: str, *, stream: TextIO | None = None,
                 min_step: int = 1, scale: bool = True, binary: bool = False) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self.desc, self.unit = desc, unit
        self.min_step, self.scale, self.binary = min_step, scale, binary
        self._bar: Any = None
        self._shown = 0

    def _line(self, line: str) -> None:
        """Lines go above the bar once it is drawn."""
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            super()._line(line)

    def progress(self, done: int, total: int | None) -> None:
        """Move the bar to *done* of *total*."""
        if self._bar is None:
            # tqdm is imported only when a bar is drawn (it takes ~25 ms).
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=self.desc, unit=self.unit, unit_scale=self.scale,
                             unit_divisor=1024 if self.binary else 1000, file=self.stream,
                             leave=False)
        if done - self._shown >= self.min_step or (total is not None and done >= total):
            self._bar.update(done - self._shown)
            self._shown = done

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@contextmanager
def command_report(desc: str, unit: str, *, quiet: bool = False,
                   **bar: Any) -> Iterator[Report]:
    """The report for a command: :class:`~dmthin.report.NullReport` when
    *quiet*, a :class:`TerminalReport` (options *bar*) when stderr is a
    terminal, else a :class:`~dmthin.report.StreamReport` on stderr."""
    if quiet:
        yield NullReport()
    elif sys.stderr.isatty():
        report = TerminalReport(desc, unit, **bar)
        try:
            yield report
        finally:
            report.close()
    else:
        yield StreamReport(sys.stderr)


def is_terminal() -> bool:
    """Whether a progress bar would be drawn (stderr is a terminal)."""
    return sys.stderr.isatty()
