"""The README's first Python example runs as shown and prints the status
line its comment quotes (the example must stay true)."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def first_python_block() -> str:
    text = README.read_text()
    m = re.search(r"```python\n(.*?)```", text, re.S)
    assert m, "README.md has no python example"
    return m.group(1)


def test_readme_example_prints_what_it_says(tmp_path):
    code = first_python_block()
    assert '"/var/lib/mypool"' in code
    code = code.replace('"/var/lib/mypool"', repr(str(tmp_path / "mypool")))
    quoted = re.search(r'status_line\(\)\)\s*# the kernel\'s text: "([^"]*?) \.\.\."', code)
    assert quoted, "the example's status-line comment is missing"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(quoted.group(1) + " "), (lines[0], quoted.group(1))
    assert lines[1].endswith("b'HELLO'")
