"""tools/trace.py loaded as a module (its name would shadow the stdlib's
``trace`` on sys.path), and the session-wide tally of comparisons."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PATH = Path(__file__).resolve().parents[2] / "tools" / "trace.py"

_spec = importlib.util.spec_from_file_location("dmthin_trace_tool", PATH)
tool = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = tool
_spec.loader.exec_module(tool)

#: every kernel/sim comparison made in this pytest session
TALLY = tool.Tally()
