"""``dmthin metadata-size`` against thin_metadata_size 0.9.0 (stdout, stderr
and exit status for random argv, valid or not), and ``--exact``'s worst
case built for real: it passes both thin_checks and takes exactly the
blocks reported."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmthin.thin.metadata_size import (
    UNIT_CHARS,
    UNIT_NAMES,
    recommended_metadata_size,
    worst_case_blocks,
)
from dmthin.thin.worst_case import build_worst_case
from toolgen import THIN, checks_pass, dmthin, run

units = st.sampled_from(["", *UNIT_CHARS, *UNIT_NAMES, "kib", "me", "x", "Kb"])
numbers = st.one_of(st.integers(0, 4096).map(str), st.sampled_from(["64", "128", "1", "00"]),
                    st.integers(0, 1 << 70).map(str))


@st.composite
def argvs(draw):
    argv: list[str] = []
    for opt in draw(st.permutations(["b", "s", "m", "u", "n"])):
        if not draw(st.integers(0, 9)):
            continue
        style = draw(st.sampled_from(["short", "attached", "long", "long="]))
        name = {"b": "block-size", "s": "pool-size", "m": "max-thins", "u": "unit",
                "n": "numeric-only"}[opt]
        if opt == "n":
            arg = draw(st.sampled_from([None, "short", "long", "s", "l", "x", ""]))
            if arg is None:
                argv.append("-n" if style.startswith("short") else "--numeric-only")
            else:
                argv.append(f"-n{arg}" if style != "long=" else f"--numeric-only={arg}")
            continue
        value = draw(units) if opt == "u" else draw(numbers) + draw(units)
        if style == "short":
            argv += [f"-{opt}", value]
        elif style == "attached":
            argv.append(f"-{opt}{value}")
        elif style == "long":
            argv += [f"--{name}", value]
        else:
            argv.append(f"--{name}={value}")
    return argv


@settings(max_examples=300, deadline=None)
@given(argv=argvs())
def test_same_output_as_thin_metadata_size(thin_tools_090, argv):
    want = run(["thin_metadata_size", *argv], executable=THIN["thin_metadata_size"])
    got = dmthin("metadata-size", *argv)
    assert (got.returncode, got.stdout, got.stderr) == (want.returncode, want.stdout,
                                                          want.stderr), argv


@pytest.mark.parametrize("argv", [
    ["-b", "64k", "-s", "1t", "-m", "1000", "-u", "m"],
    ["-b", "64k", "-s", "1t", "-m", "1000", "-u", "m", "-n", "short"],
    ["-b64k", "-s1g", "-m2", "-nlong", "extra"],
    ["--bl", "64k", "--po", "1g", "--max", "2", "--u", "y"],
    ["-b", "64k", "-s", "1g"], ["-x"], ["-b"], ["--block-size"], ["--nosuch"],
    ["--unit=z", "-b", "1k", "-s", "1z", "-m", "1"],
])
def test_examples(thin_tools_090, argv):
    want = run(["thin_metadata_size", *argv], executable=THIN["thin_metadata_size"])
    got = dmthin("metadata-size", *argv)
    assert (got.returncode, got.stdout, got.stderr) == (want.returncode, want.stdout,
                                                          want.stderr)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(nr_data=st.integers(1, 120000), thins=st.integers(1, 300))
def test_worst_case_built(tmp_path, pdata_tools_110, nr_data, thins):
    path = tmp_path / "worst"
    used = build_worst_case(path, nr_data, thins)
    assert used == worst_case_blocks(nr_data, thins)
    assert checks_pass(path, pdata_tools_110) == (0, 0)
    got = dmthin("check", path)
    assert got.returncode == 0 and "METADATA_FREE_BLOCKS=0" in got.stdout


def test_exact_option_reports_the_worst_case():
    got = dmthin("metadata-size", "-b", "64k", "-s", "192m", "-m", "10", "--exact", "-u", "k",
                 "-n")
    blocks = worst_case_blocks(192 * 16, 10)
    assert got.stdout == f"{blocks * 4}\n"
    full = dmthin("metadata-size", "-b", "64k", "-s", "192m", "-m", "10", "--exact")
    assert "needed in the worst case" in full.stdout


@given(data=st.integers(1 << 20, 1 << 44), block=st.sampled_from([64 << 10, 1 << 20, 1 << 30]),
       thins=st.integers(1, 100000))
def test_recommended_size(data, block, thins):
    size = recommended_metadata_size(data, block, thins)
    assert size % (1 << 20) == 0 and 2 << 20 <= size <= 4161600 * 4096
    worst = worst_case_blocks(-(-data // block), thins) * 4096
    assert size >= min(worst, 4161600 * 4096 - (1 << 20))
