"""The CLI's shared parts: command modules stay thin shells, backends and
defaults come from the library, usage errors exit as documented, reports
draw progress only on a terminal, and `pool status` sizes the filesystem's
free space in f_frsize units."""
from __future__ import annotations

import ast
import io
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from dmthin import backend, pool
from dmthin.cli import common
from dmthin.cli.main import build_parser, main
from dmthin.cli.progress import TerminalReport
from dmthin.report import NullReport, StreamReport
from dmthin.target import PoolStatus
from helpers import run_dmthin as dmthin

CLI = Path(common.__file__).parent
CMD_MODULES = sorted(CLI.glob("cmd_*.py"))
TOOLS = ("dump", "restore", "check", "ls")


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("path", CMD_MODULES, ids=lambda p: p.stem)
def test_command_modules_are_thin_shells(path):
    assert len(path.read_text().splitlines()) <= 150
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            assert not (node.module or "").startswith("cmd_"), f"{path.name} imports a cmd_*"


BACKEND_COMMANDS = [
    ["pool", "create", "P"], ["pool", "status", "P"], ["pool", "message", "P", "M"],
    ["thin", "create", "P", "1", "--size", "1M"], ["thin", "snapshot", "P", "2", "1"],
    ["thin", "resize", "P", "1", "--size", "1M"], ["thin", "delete", "P", "1"],
    ["thin", "write", "P", "1"], ["thin", "read", "P", "1"],
    ["thin", "discard", "P", "1", "--offset", "0", "--length", "1"],
    ["thin", "status", "P", "1"], ["thin", "list", "P"], ["thin", "ls", "P"],
    ["graph", "status", "R"], ["replay", "docker-article"]]


@pytest.mark.parametrize("argv", BACKEND_COMMANDS, ids=" ".join)
def test_backend_option_offers_the_registered_backends(argv):
    for name in backend.BACKENDS:
        assert build_parser().parse_args([*argv, "--backend", name]).backend == name
    p = dmthin(*argv, "--backend", "nosuch")
    assert p.returncode == 2 and b"invalid choice: 'nosuch'" in p.stderr


def test_pool_create_defaults_are_the_librarys():
    args = build_parser().parse_args(["pool", "create", "/nonexistent"])
    assert (args.data_size, args.metadata_size, args.block_size, args.backend) == (
        pool.DEFAULT_DATA_SIZE, pool.DEFAULT_METADATA_SIZE, pool.DEFAULT_BLOCK_SIZE,
        backend.DEFAULT_BACKEND)


@pytest.mark.parametrize(("argv", "code"), [
    *[([tool, "--bad-option"], 1) for tool in TOOLS],
    *[([tool], 1) for tool in ("check", "ls")],               # missing METADATA
    (["restore", "-i", "x"], 1),                              # missing -o
    (["pool", "status", "p", "--bad-option"], 2),
    (["thin", "list"], 2),
    (["thin"], 2),
    (["nosuchcommand"], 2),
    (["pool", "create", "p", "--backend", "nosuch"], 2),
])
def test_usage_errors_exit_codes(argv, code):
    p = dmthin(*argv)
    assert p.returncode == code
    lines = [ln for ln in p.stderr.decode().splitlines() if not ln.startswith(("usage:", " "))]
    assert len(lines) == 1 and ": error: " in lines[0], p.stderr


def test_unknown_option_is_reported_by_the_subcommand():
    p = dmthin("thin", "status", "p", "1", "--bad-option")
    assert b"dmthin thin status: error: unrecognized arguments: --bad-option" in p.stderr


def test_thin_ls_is_thin_list():
    a = build_parser().parse_args(["thin", "ls", "P"])
    b = build_parser().parse_args(["thin", "list", "P"])
    assert a.command_parser.prog == b.command_parser.prog == "dmthin thin list"
    assert a.handler.__wrapped__ is b.handler.__wrapped__


def test_handler_errors_are_named_after_the_subcommand(tmp_path):
    p = dmthin("thin", "ls", tmp_path / "nothing")
    assert p.returncode == 1
    assert p.stderr.decode().startswith("dmthin thin list: error: ")


def test_version_and_no_command():
    assert dmthin("--version").stdout.startswith(b"dmthin ")
    assert dmthin().returncode == 2


# -- reports ----------------------------------------------------------------------------
def test_terminal_report_draws_and_prints_lines_above_the_bar():
    out = io.StringIO()
    r = TerminalReport("work", "blk", stream=out, scale=False)
    r.info("before")
    r.progress(3, 10)
    r.warning("during")
    r.progress(10, 10)
    r.close()
    text = out.getvalue()
    assert text.startswith("before\n") and "during\n" in text
    assert "work:" in text and "/10 " in text and text.endswith("\r")   # bar cleared


def test_terminal_report_moves_in_steps():
    out = io.StringIO()
    r = TerminalReport("copy", "B", stream=out, min_step=100)
    r.progress(50, 1000)
    assert r._bar.n == 0
    r.progress(150, 1000)
    assert r._bar.n == 150
    r.progress(1000, 1000)
    assert r._bar.n == 1000
    r.close()


def test_stream_and_null_reports():
    out = io.StringIO()
    s = StreamReport(out)
    for f in (s.info, s.warning, s.fatal):
        f("x")
    s.progress(1, 2)
    assert out.getvalue() == "x\nx\nx\n"
    NullReport().fatal("nothing")


def test_check_draws_a_bar_only_on_a_terminal(tmp_path, monkeypatch, capsys):
    d = tmp_path / "pool"
    assert dmthin("pool", "create", d, "--data-size", "4M", "--metadata-size", "2M") \
        .returncode == 0
    err = TTY()
    monkeypatch.setattr("sys.stderr", err)
    assert main(["check", str(d)]) == 0
    assert "checking:" in err.getvalue()
    assert capsys.readouterr().out.startswith("TRANSACTION_ID=0\n")
    quiet = TTY()
    monkeypatch.setattr("sys.stderr", quiet)
    assert main(["check", "-q", str(d)]) == 0
    assert quiet.getvalue() == ""
    assert dmthin("check", d).stderr == b""          # not a terminal: no bar


# -- pool status ---------------------------------------------------------------------
def test_pool_status_caps_available_by_free_bytes_in_f_frsize_units(tmp_path, monkeypatch):
    d = tmp_path / "pool"
    assert dmthin("pool", "create", d, "--data-size", "16M", "--metadata-size", "4M") \
        .returncode == 0
    real = os.statvfs

    def statvfs(path):
        st = real(path)
        if Path(path).parent == d:
            # 1000 free fragments of 512 bytes; f_bsize (the preferred I/O
            # size) is not the unit of f_bfree
            return SimpleNamespace(f_bfree=1000, f_frsize=512, f_bsize=1 << 20,
                                   f_blocks=st.f_blocks)
        return st
    monkeypatch.setattr(os, "statvfs", statvfs)
    lines = dmthin("pool", "status", d).stdout.decode().splitlines()
    assert "Data Space Available: 512kB" in lines
    assert "Metadata Space Available: 512kB" in lines
    doc = json.loads(dmthin("pool", "status", d, "--json").stdout)
    assert doc["summary"]["Data Space Available"] == "512kB"


def test_pool_status_json_carries_the_status_fields(tmp_path):
    d = tmp_path / "pool"
    dmthin("pool", "create", d, "--data-size", "16M", "--metadata-size", "4M")
    doc = json.loads(dmthin("pool", "status", d, "--json").stdout)
    st = PoolStatus.parse(doc["status_line"])
    assert list(doc)[:4] == ["status_line", "table_line", "backend", "data_block_size"]
    assert {k: doc[k] for k in st.to_dict()} == st.to_dict()
    assert list(doc)[-2:] == ["thins", "summary"]


def test_pool_status_to_dict_is_json_of_every_field():
    line = "7 10/100 3/50 42 ro no_discard_passdown error_if_no_space needs_check 5 "
    st = PoolStatus.parse(line)
    d = st.to_dict()
    assert list(d) == list(PoolStatus.__dataclass_fields__)
    assert json.loads(json.dumps(d)) == d
    assert d == {"transaction_id": 7, "used_metadata_blocks": 10,
                 "total_metadata_blocks": 100, "used_data_blocks": 3,
                 "total_data_blocks": 50, "held_root": 42, "mode": "ro",
                 "discard": "no_discard_passdown", "no_space_policy": "error_if_no_space",
                 "needs_check": True, "metadata_low_watermark": 5}
