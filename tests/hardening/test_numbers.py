"""The one numeric parser (dmthin.units) against an independent model.

Every number a user gives -- sizes, ids, offsets, counts -- goes through
:func:`dmthin.units.parse_size` or :func:`dmthin.units.parse_int`: ASCII
digits only, exact arithmetic (no float), absurd lengths refused before any
conversion, the kernel's limits, and every failure a one-line UsageError.
The model computes sizes with :class:`fractions.Fraction` from a regular
expression of its own.
"""
from __future__ import annotations

import re
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmthin.errors import UsageError
from dmthin.units import (
    MAX_BYTES,
    MAX_DATA_BLOCKS,
    MAX_DEV_ID,
    parse_data_blocks,
    parse_dev_id,
    parse_int,
    parse_size,
    scale_decimal,
)

_UNITS = {"": 1, "b": 1, "s": 512, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
          "p": 1 << 50, "e": 1 << 60}
_MODEL_RE = re.compile(r"^[ \t]*([0-9]+(?:\.[0-9]+)?)[ \t]*([a-z]?)(i?b)?[ \t]*$")


def model_size(text: str) -> int | None:
    """The size *text* denotes, or None if it must be refused."""
    if not text.isascii():
        return None
    m = _MODEL_RE.match(text.lower())
    if not m:
        return None
    unit, tail = m.group(2), m.group(3)
    if unit not in _UNITS:
        return None
    if tail == "ib" and unit in ("", "b", "s"):
        return None
    if tail == "b" and unit in ("b", "s"):
        return None
    whole, _, frac = m.group(1).partition(".")
    if len(whole.lstrip("0")) > 40 or len(frac.rstrip("0")) > 40:
        return None
    value = Fraction(m.group(1)) * _UNITS[unit]
    if value.denominator != 1 or value > MAX_BYTES:
        return None
    return int(value)


REPRODUCTIONS = [  # inputs that once gave tracebacks or wrong values
    "16E", "9" * 400 + ".5", "1" * 5000, "999999999999999999999999999999E", "١٢٣M", "²",  # noqa: RUF001 - non-ASCII digits on purpose
    "1e3", "inf", "nan", "-1", "0x10", "1_000", "1.5.5G", " ", "", "K", "10 G B",
]


@pytest.mark.parametrize("text", REPRODUCTIONS)
def test_hostile_sizes_are_one_line_usage_errors(text):
    with pytest.raises(UsageError) as e:
        parse_size(text, "data size")
    line = str(e.value)
    assert "\n" not in line and line.startswith("invalid data size") and len(line) < 300


@pytest.mark.parametrize(("text", "value"), [
    ("64K", 65536), ("1.5G", 3 << 29), ("10g", 10 << 30), ("2GiB", 2 << 30), ("2GB", 2 << 30),
    ("128s", 65536), ("512", 512), ("0.5K", 512), (" 7 M ", 7 << 20), ("8191P", 8191 << 50),
    ("7.99999999999999999999E", None), (f"{MAX_BYTES}", MAX_BYTES), (f"{MAX_BYTES + 1}", None),
    ("0.1", None), ("1.0000000000000000000000001K", None),
])
def test_sizes(text, value):
    assert model_size(text) == value
    if value is None:
        with pytest.raises(UsageError):
            parse_size(text)
    else:
        assert parse_size(text) == value


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.text(max_size=30),
    st.from_regex(r"\A[ ]?[0-9]{1,30}(\.[0-9]{1,30})?[ ]?[kKmMgGtTpPeEsSbB]?(i?[bB])?\Z"),
    st.builds(lambda d, u: f"{d}{u}", st.integers(0, 1 << 80), st.sampled_from(list(_UNITS)))))
def test_parse_size_matches_the_model(text):
    want = model_size(text)
    try:
        got = parse_size(text)
    except UsageError as e:
        assert "\n" not in str(e)
        got = None
    assert got == want


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.integers(-(1 << 70), 1 << 70), st.text(max_size=25),
                 st.floats(), st.none(), st.booleans(), st.binary(max_size=4)))
def test_parse_int_takes_only_ascii_decimals_in_range(value):
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        want = None
    elif isinstance(value, int):
        want = value if 0 <= value <= MAX_DEV_ID else None
    else:
        ok = value.isascii() and value.isdigit()
        want = int(value) if ok and int(value) <= MAX_DEV_ID else None
    try:
        got = parse_dev_id(value)
    except UsageError as e:
        assert "\n" not in str(e)
        got = None
    assert got == want


def test_huge_numbers_are_refused_before_conversion():
    # int() itself raises ValueError beyond 4300 digits; the parser says why in one line
    for text in ("9" * 4301, "9" * 100_000, "0" * 100_000 + "1"):
        if text.lstrip("0") == "1":
            assert parse_int(text, "count") == 1
            continue
        with pytest.raises(UsageError, match="digits"):
            parse_int(text, "count")
    with pytest.raises(UsageError):
        parse_int(10 ** 5000, "count")            # an int argument: no repr of it either


def test_kernel_limits():
    assert parse_dev_id(str(MAX_DEV_ID)) == MAX_DEV_ID
    with pytest.raises(UsageError, match="MAX_DEV_ID"):
        parse_dev_id(str(MAX_DEV_ID + 1))
    assert parse_data_blocks(str(MAX_DATA_BLOCKS)) == 1 << 40
    with pytest.raises(UsageError, match="40-bit"):
        parse_data_blocks(str((1 << 40) + 1))
    with pytest.raises(UsageError, match="largest file or device"):
        parse_size("8E")
    assert parse_size("8E", maximum=1 << 70) == 8 << 60


def test_docker_style_truncation():
    # Docker's RAMInBytes truncates (int64(float * mult)); exact here
    assert scale_decimal("1", "5", 1024, "size", truncate=True) == 1536
    assert scale_decimal("0", "0001", 1024, "size", truncate=True) == 0
    with pytest.raises(UsageError):
        scale_decimal("0", "0001", 1024, "size")
