"""Fidelity tests: the agreement table of every trace compared in this run
is printed at the end of the pytest session (terminal summary)."""
from __future__ import annotations

import pytest

import tracelib

#: every kernel/sim comparison made in this pytest session
SESSION_TALLY = tracelib.Tally()


@pytest.fixture(scope="session")
def session_tally() -> tracelib.Tally:
    """The tally the terminal summary prints."""
    return SESSION_TALLY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SESSION_TALLY.rows:
        terminalreporter.write_sep("=", "fidelity: kernel vs simulator")
        terminalreporter.write_line(tracelib.report(SESSION_TALLY))
