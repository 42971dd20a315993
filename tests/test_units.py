"""units.py on its own: typed quantities against plain-int arithmetic (the
model), ThinId against the kernel's MAX_DEV_ID, the data block size rule
against dm-thin.c's pool_ctr limits, and the size helpers."""
from __future__ import annotations

import errno
import json
import operator
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dmthin.errors import InvalidArgument, UsageError
from dmthin.units import (
    MAX_DATA_BLOCK,
    MAX_DATA_BLOCKS,
    MAX_DEV_ID,
    MAX_METADATA_BITMAPS,
    MAX_METADATA_BLOCKS,
    Bytes,
    DataBlocks,
    MetaBlocks,
    Sectors,
    ThinId,
    check_data_block_sectors,
    check_data_block_size,
    check_dev_id,
    check_name,
    format_size,
    human_size_decimal,
    is_valid_data_block_sectors,
    parse_size,
)

UNITS = (Bytes, Sectors, DataBlocks, MetaBlocks)
_int = st.integers(-(1 << 62), 1 << 62)


# -- typed quantities ----------------------------------------------------------------
@pytest.mark.parametrize("unit", UNITS)
@given(a=_int, b=_int)
def test_arithmetic_keeps_the_unit_and_the_value(unit, a, b):
    x, y = unit(a), unit(b)
    for op, other in ((operator.add, y), (operator.add, b), (operator.sub, y),
                      (operator.sub, b), (operator.mul, b)):
        r = op(x, other)
        assert type(r) is unit and r == op(a, b)
    for r, want in ((b + x, b + a), (b - x, b - a), (b * x, b * a), (-x, -a), (abs(x), abs(a))):
        assert type(r) is unit and r == want
    if b:
        assert type(x // b) is unit and x // b == a // b
        assert type(x % b) is unit and x % b == a % b
        r = x // y                                  # a ratio is a plain number
        assert type(r) is int and r == a // b


def test_sum_keeps_the_unit():
    total = sum([DataBlocks(1), DataBlocks(2), 3])
    assert type(total) is DataBlocks and total == 6


@pytest.mark.parametrize(("a", "b"), [(Sectors(1), Bytes(1)), (DataBlocks(1), MetaBlocks(1)),
                                 (Bytes(1), Sectors(1))])
@pytest.mark.parametrize("op", [operator.add, operator.sub, operator.mul, operator.floordiv,
                                operator.mod])
def test_different_units_do_not_mix(a, b, op):
    with pytest.raises(TypeError):
        op(a, b)


def test_units_multiply_only_by_plain_numbers():
    with pytest.raises(TypeError):
        Sectors(2) * Sectors(3)


def test_text_is_the_bare_number_and_repr_names_the_unit():
    s = Sectors(8) + 1
    assert str(s) == "9" and f"{s}" == "9" and f"{s:>3}" == "  9" and repr(s) == "Sectors(9)"
    assert json.dumps({"n": DataBlocks(4) * 2}) == '{"n": 8}'
    assert pickle.loads(pickle.dumps(MetaBlocks(7))) == MetaBlocks(7)


def test_conversions():
    assert Sectors(8).bytes() == 4096 and type(Sectors(8).bytes()) is Bytes
    assert Bytes(4097).sectors() == Sectors(8)                  # whole sectors, rounded down
    assert Bytes(8191).metablocks() == MetaBlocks(1)
    assert MetaBlocks(2).bytes() == Bytes(8192) and MetaBlocks(2).sectors() == Sectors(16)
    assert DataBlocks(3).sectors(128) == Sectors(384)
    assert DataBlocks(3).bytes(128) == Bytes(3 * 64 * 1024)
    assert Sectors(1000).data_blocks(128) == DataBlocks(7)


# -- thin device ids ------------------------------------------------------------------------
@given(st.integers(0, MAX_DEV_ID))
def test_thin_ids_in_range_are_accepted(n):
    i = ThinId(n)
    assert i == n and type(i) is ThinId and str(i) == str(n) and check_dev_id(n) == n
    assert ThinId(i) is i                              # validated once


@pytest.mark.parametrize("bad", [-1, MAX_DEV_ID + 1, 1 << 64, True, False, 1.0, "3", None])
def test_bad_thin_ids_are_einval(bad):
    with pytest.raises(InvalidArgument) as e:
        ThinId(bad)
    assert e.value.errno == errno.EINVAL and "0 to 16777215" in str(e.value)
    with pytest.raises(InvalidArgument):
        check_dev_id(bad)


def test_max_dev_id_is_the_kernels():
    assert MAX_DEV_ID == (1 << 24) - 1                 # dm-thin.c MAX_DEV_ID


# -- limits and the data block size rule ---------------------------------------------------
def test_limits():
    assert MAX_DATA_BLOCKS == 1 << 40 and MAX_DATA_BLOCK == MAX_DATA_BLOCKS - 1
    assert MAX_METADATA_BITMAPS == 255
    assert MAX_METADATA_BLOCKS == 255 * 16320          # DM_SM_METADATA_MAX_BLOCKS


@given(st.integers(-256, 2097152 + 256))
def test_data_block_size_rule(sectors):
    # pool_ctr: 64 KiB .. 1 GiB in multiples of 64 KiB
    ok = 128 <= sectors <= 2097152 and sectors % 128 == 0
    assert is_valid_data_block_sectors(sectors) == ok
    if ok:
        assert check_data_block_sectors(sectors) == sectors
        assert check_data_block_size(sectors * 512) == sectors
    else:
        with pytest.raises(InvalidArgument):
            check_data_block_sectors(sectors)
        if sectors >= 0:
            with pytest.raises(UsageError):
                check_data_block_size(sectors * 512)


def test_data_block_size_in_bytes_must_be_whole_sectors():
    with pytest.raises(UsageError):
        check_data_block_size(64 * 1024 + 1)


# -- sizes and names ------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "want"), [
    (4096, 4096), ("512", 512), ("64K", 65536), ("64KiB", 65536), ("64KB", 65536),
    ("10G", 10 << 30), ("128s", 65536), ("1.5M", 3 << 19), (" 2 T ", 2 << 40)])
def test_parse_size(text, want):
    assert parse_size(text) == want


@pytest.mark.parametrize("bad", [-1, True, "", "K", "1.3B", "12Q", "1e3", None, 1.5])
def test_parse_size_refuses(bad):
    with pytest.raises(UsageError):
        parse_size(bad)


@pytest.mark.parametrize(("n", "text"), [(0, "0B"), (1023, "1023B"), (65536, "64K"),
                                    (3 << 29, "1.5G"), (100 << 30, "100G")])
def test_format_size(n, text):
    assert format_size(n) == text


@pytest.mark.parametrize(("n", "text"), [(65536, "65.54kB"), (10 << 30, "10.74GB"), (999, "999B")])
def test_human_size_decimal_is_dockers(n, text):
    assert human_size_decimal(n) == text


@pytest.mark.parametrize("name", ["pool", "a-b_c.d", "x" * 127])
def test_good_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a b", "x" * 128, "caf\xe9"])
def test_bad_names(name):
    with pytest.raises(UsageError):
        check_name(name)
