"""Fidelity tests: the agreement table of every trace compared in this run
is printed at the end of the pytest session (terminal summary)."""
from __future__ import annotations

import tracetool


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if tracetool.TALLY.rows:
        terminalreporter.write_sep("=", "fidelity: kernel vs simulator")
        terminalreporter.write_line(tracetool.tool.report(tracetool.TALLY))
