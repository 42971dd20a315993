"""The trace library (tracelib) itself, on the host (no device-mapper needed): traces
load and generate deterministically, the simulator replays a trace the same
way twice, and the comparison reports a difference where there is one."""
from __future__ import annotations

import copy
import json
import runpy

import pytest

import tracelib as tool


def test_generate_is_deterministic_and_round_trips(tmp_path):
    a = tool.generate(11, 80)
    assert a == tool.generate(11, 80)
    assert a != tool.generate(12, 80)
    path = tmp_path / "t.jsonl"
    tool.save_trace(path, *a)
    header, steps = tool.load_trace(path)
    assert (header, steps) == a
    writes = sum(len(s["ios"]) for s in steps if s["op"] == "writes")
    assert 80 <= writes <= 80 + 30


def test_bad_trace_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"pool": {}}\n{"id": 1}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        tool.load_trace(path)


def test_hand_written_traces_are_current():
    """tests/traces/*.jsonl are what tests/traces/make.py writes, header and steps."""
    make = runpy.run_path(str(tool.TRACES_DIR / "make.py"))
    files = sorted(p.name for p in tool.TRACES_DIR.glob("*.jsonl"))
    assert files == sorted(f"{name.replace('_', '-')}.jsonl" for name in make["TRACES"])
    for name in make["TRACES"]:
        header, steps = make["build"](name)
        path = tool.TRACES_DIR / f"{header['name']}.jsonl"
        got_header, got_steps = tool.load_trace(path)
        assert got_header == json.loads(json.dumps(header)), path
        assert got_steps == json.loads(json.dumps(steps)), path


def test_sim_replay_is_deterministic_and_compare_finds_differences(tmp_path):
    header, steps = tool.generate(5, 40)
    path = tmp_path / "g.jsonl"
    tool.save_trace(path, header, steps)
    a = tool.run_trace(path, "sim", tmp_path / "a")
    b = tool.run_trace(path, "sim", tmp_path / "b")
    tally = tool.compare(a, b)
    assert tally.ok(), tool.report(tally)
    assert tally.rows["device bytes (sha256)"][0] >= 1
    c = copy.deepcopy(b)
    c["steps"][2]["status"]["used_data_blocks"] += 1
    dev = next(iter(c["final"]["sha256"]))
    c["final"]["sha256"][dev] = "0" * 64
    tally = tool.compare(a, c)
    assert not tally.ok()
    assert tally.rows["used data blocks"][1] == tally.rows["used data blocks"][0] - 1
    assert any("device bytes" in d for d in tally.diffs)


def test_timing_dependent_quantities_are_reported_not_required(tmp_path):
    header, steps = tool.generate(7, 30, fill=True)
    assert header["name"] == "gen-7-fill" and "pool events" in header["timing_dependent"]
    path = tmp_path / "f.jsonl"
    tool.save_trace(path, header, steps)
    a = tool.run_trace(path, "sim", tmp_path / "a")
    b = copy.deepcopy(a)
    b["steps"][-1]["events"] = (b["steps"][-1]["events"] or 0) + 5
    tally = tool.compare(a, b)
    assert tally.ok() and not tally.diffs
    assert tally.rows["pool events [timing]"][1] == tally.rows["pool events [timing]"][0] - 1
    b["steps"][-1]["status"]["transaction_id"] += 1      # not timing-dependent
    assert not tool.compare(a, b).ok()
