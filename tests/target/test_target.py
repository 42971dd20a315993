"""The target text formats on their own (dmthin.target): the status lines,
tables and messages the kernel prints and reads, parsed and printed back
exactly, and refused with EINVAL where the kernel refuses them."""
from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dmthin.errors import InvalidArgument
from dmthin.target.message import Message, parse_message
from dmthin.target.status import DiscardMode, NoSpacePolicy, PoolMode, PoolStatus, ThinStatus
from dmthin.target.table import PoolTable, ThinTable, normalise_features

# A 6.1 kernel's thin-pool status params (after "0 <len> thin-pool"), with its trailing space.
KERNEL_POOL = [
    "0 1660/16384 2/163840 - rw discard_passdown queue_if_no_space - 1024 ",
    "7 280/1024 64/64 1023 out_of_data_space no_discard_passdown error_if_no_space "
    "needs_check 256 ",
    "3 14/1024 0/128 - ro ignore_discard queue_if_no_space - 256 ",
]


@pytest.mark.parametrize("line", KERNEL_POOL)
def test_pool_status_lines_parse_and_print_back_exactly(line):
    st = PoolStatus.parse(line)
    assert st.to_line() == line
    assert PoolStatus.parse(st.to_line()) == st


def test_pool_status_fields():
    st = PoolStatus.parse(KERNEL_POOL[1])
    assert (st.transaction_id, st.used_metadata_blocks, st.total_metadata_blocks) == (7, 280, 1024)
    assert (st.used_data_blocks, st.total_data_blocks, st.free_data_blocks) == (64, 64, 0)
    assert st.held_root == 1023 and st.needs_check and st.metadata_low_watermark == 256
    assert st.mode is PoolMode.OUT_OF_DATA_SPACE
    assert st.discard is DiscardMode.NO_PASSDOWN and st.no_space_policy is NoSpacePolicy.ERROR
    assert st.to_dict()["mode"] == "out_of_data_space"


def test_pool_status_of_kernels_without_the_low_watermark_field():
    st = PoolStatus.parse("0 10/1024 0/100 - rw discard_passdown queue_if_no_space -")
    assert st.metadata_low_watermark == 0


@pytest.mark.parametrize(("line", "field"), [
    ("Fail", "Fail"), ("Error", "Error"), ("0 1/2 3/4 -", "4 fields"),
    ("x 1/2 3/4 - rw discard_passdown queue_if_no_space -", "field 1"),
    ("0 12 3/4 - rw discard_passdown queue_if_no_space -", "field 2"),
    ("0 1/2 3/y - rw discard_passdown queue_if_no_space -", "field 3"),
    ("0 1/2 3/4 z rw discard_passdown queue_if_no_space -", "field 4"),
    ("0 1/2 3/4 - rx discard_passdown queue_if_no_space -", "'rx'"),
])
def test_bad_pool_status_names_the_field(line, field):
    with pytest.raises(InvalidArgument, match=field) as e:
        PoolStatus.parse(line)
    assert e.value.errno == errno.EINVAL


@given(st.builds(PoolStatus, transaction_id=st.integers(0, 2**64 - 1),
                 used_metadata_blocks=st.integers(0, 1 << 24),
                 total_metadata_blocks=st.integers(0, 1 << 24),
                 used_data_blocks=st.integers(0, 1 << 40),
                 total_data_blocks=st.integers(0, 1 << 40),
                 held_root=st.none() | st.integers(1, 1 << 24),
                 mode=st.sampled_from(PoolMode), discard=st.sampled_from(DiscardMode),
                 no_space_policy=st.sampled_from(NoSpacePolicy), needs_check=st.booleans(),
                 metadata_low_watermark=st.integers(0, 1 << 24)))
def test_pool_status_round_trips(status):
    assert PoolStatus.parse(status.to_line()) == status


@pytest.mark.parametrize(("line", "mapped", "high"), [("2048 4095", 2048, 4095), ("0 -", 0, None)])
def test_thin_status(line, mapped, high):
    st = ThinStatus.parse(line)
    assert (st.mapped_sectors, st.highest_mapped_sector) == (mapped, high)
    assert st.to_line() == line


def test_thin_status_from_blocks_is_the_kernels_arithmetic():
    # thin_status: mapped * block_sectors, (highest + 1) * block_sectors - 1
    assert ThinStatus.from_blocks(3, 9, 128).to_line() == "384 1279"
    assert ThinStatus.from_blocks(0, None, 128).to_line() == "0 -"


@pytest.mark.parametrize("line", ["Fail", "7", "a b"])
def test_bad_thin_status(line):
    with pytest.raises(InvalidArgument):
        ThinStatus.parse(line)


def test_pool_table_round_trip_and_feature_order():
    line = ("0 327680 thin-pool 7:1 7:0 128 1024 3 skip_block_zeroing ignore_discard "
            "error_if_no_space ")
    t = PoolTable.parse(line)
    assert (t.length_sectors, t.metadata_dev, t.data_dev) == (327680, "7:1", "7:0")
    assert (t.data_block_sectors, t.low_water_mark) == (128, 1024)
    assert t.to_line() == line
    # the kernel echoes features in its own order, whatever the order given
    shuffled = PoolTable(327680, "7:1", "7:0", 128, 1024,
                         ("Error_If_No_Space", "skip_block_zeroing", "ignore_discard"))
    assert shuffled.to_line() == line
    assert PoolTable.parse("0 8 thin-pool 7:1 7:0 128 0").to_line() == \
        "0 8 thin-pool 7:1 7:0 128 0 0 "


def test_unknown_pool_feature_is_einval():
    with pytest.raises(InvalidArgument, match="Unrecognised pool feature requested"):
        normalise_features(["no_such_feature"])


@pytest.mark.parametrize("line", ["0 8 linear 7:0 0", "0 8 thin-pool 7:1 7:0 x 0",
                                  "0 8 thin-pool 7:1"])
def test_bad_pool_table(line):
    with pytest.raises(InvalidArgument, match="thin-pool table line"):
        PoolTable.parse(line)


def test_thin_table_round_trip():
    for line in ("0 2097152 thin 253:0 7", "0 2097152 thin 253:0 7 253:5"):
        assert ThinTable.parse(line).to_line() == line
    assert ThinTable.parse("0 8 thin 253:0 16777215").dev_id == 16777215


@pytest.mark.parametrize("line", ["0 8 thin 253:0", "0 8 thin-pool 253:0 1", "0 8 thin 253:0 x"])
def test_bad_thin_table(line):
    with pytest.raises(InvalidArgument, match="thin table line"):
        ThinTable.parse(line)


@pytest.mark.parametrize(("text", "command", "args"), [
    ("create_thin 0", "create_thin", (0,)), ("CREATE_SNAP 2 1", "create_snap", (2, 1)),
    ("delete 16777215", "delete", (16777215,)),
    ("set_transaction_id 18446744073709551614 18446744073709551615", "set_transaction_id",
     (2**64 - 2, 2**64 - 1)),
    ("reserve_metadata_snap", "reserve_metadata_snap", ()),
    ("  release_metadata_snap  ", "release_metadata_snap", ()),
])
def test_messages_parse(text, command, args):
    msg = parse_message(text)
    assert (msg.command, msg.args) == (command, args)
    assert parse_message(str(msg)) == msg == Message.parse(text)


@pytest.mark.parametrize(("text", "why"), [
    ("", "empty"), ("frobnicate 1", "Unrecognised thin pool target message"),
    ("create_thin", "takes 1 argument"), ("create_snap 1", "takes 2 argument"),
    ("delete 16777216", "above the maximum"), ("create_thin 0x10", "decimal"),
    ("create_thin -1", "decimal"), ("delete \u0661", "decimal"),   # an Arabic-Indic 1
    ("set_transaction_id 0 18446744073709551616", "64 bits"),
])
def test_bad_messages_are_einval(text, why):
    with pytest.raises(InvalidArgument, match=why) as e:
        parse_message(text)
    assert e.value.errno == errno.EINVAL


def test_message_builders_validate_as_the_kernel():
    assert str(Message.create_snap(5, 4)) == "create_snap 5 4"
    assert str(Message.set_transaction_id(0, 1)) == "set_transaction_id 0 1"
    for bad in (True, -1, 1 << 24, "3", 1.0):
        with pytest.raises(InvalidArgument):
            Message.create_thin(bad)
    with pytest.raises(InvalidArgument):
        parse_message(7)
