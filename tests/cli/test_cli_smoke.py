"""One real ``python -m dmthin`` process per command: the entry point, the
imports each command needs and the exit status work outside the test
process.  Everything else runs in-process (helpers.run_dmthin)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dmthin import cli
from dmthin.cli.commands import SUMMARIES, command_name, module_name
from helpers import REPO, run_dmthin
from helpers import run_dmthin_subprocess as dmthin

XML = ('<superblock uuid="" time="1" transaction="2" data_block_size="128" '
       'nr_data_blocks="100">\n'
       '  <device dev_id="1" mapped_blocks="2" transaction="0" creation_time="0" '
       'snap_time="0">\n'
       '    <range_mapping origin_begin="0" data_begin="5" length="2" time="0"/>\n'
       '  </device>\n</superblock>\n')


@pytest.fixture(scope="module")
def md(tmp_path_factory):
    """Metadata restored from XML (in-process)."""
    d = tmp_path_factory.mktemp("smoke")
    path = d / "md"
    path.write_bytes(bytes(4 << 20))
    assert run_dmthin("restore", "-i", "-", "-o", path, input=XML.encode()).returncode == 0
    return path


def ok(p) -> str:
    assert p.returncode == 0 and b"Traceback" not in p.stderr, p.stderr
    return p.stdout.decode()


def test_restore(tmp_path):
    out = tmp_path / "md"
    out.write_bytes(bytes(4 << 20))
    ok(dmthin("restore", "-i", "-", "-o", out, input=XML.encode()))


def test_dump(md):
    assert 'origin_begin="0" data_begin="5" length="2"' in ok(dmthin("dump", md))


def test_ls(md):
    assert ok(dmthin("ls", "--no-headers", "-o", "DEV,MAPPED_BLOCKS", md)) == "1 2 \n"


def test_check(md):
    assert ok(dmthin("check", md)).startswith("TRANSACTION_ID=2\n")


def test_check_bad_option_exits_1(md):
    p = dmthin("check", md, "--hedgehogs-only")
    assert p.returncode == 1 and b"unrecognized arguments" in p.stderr


def test_pool_and_thin(tmp_path):
    d = tmp_path / "pool"
    assert ok(dmthin("pool", "create", d, "--data-size", "4M", "--metadata-size", "2M")) \
        .startswith("0 8192 thin-pool ")
    assert run_dmthin("thin", "create", d, 1, "--size", "1M").returncode == 0
    assert ok(dmthin("thin", "ls", d)).splitlines()[1].split()[:2] == ["1", "1M"]


def test_graph(tmp_path):
    p = dmthin("graph", "ls", tmp_path)
    assert p.returncode == 1 and p.stderr.decode().count("\n") == 1
    assert b"is not a graph root" in p.stderr


def test_dm():
    """The binding's command: versions in the guest, a one-line reason
    elsewhere (no device-mapper, or no binding)."""
    p = dmthin("dm", "version")
    assert b"Traceback" not in p.stderr
    if p.returncode:
        assert p.stderr.decode().count("\n") == 1 and b"dmthin dm version: error:" in p.stderr
    else:
        assert p.stdout.startswith(b"Library version:")


def test_replay_help():
    assert "docker-article" in ok(dmthin("replay", "--help"))


def test_top_level_help_lists_every_command():
    out = ok(dmthin("--help"))
    for name in sorted(command_name(p.stem) for p in Path(cli.__file__).parent.glob("cmd_*.py")):
        assert f"\n    {name} " in out or f"\n    {name}\n" in out, name


def test_a_command_imports_only_what_it_needs():
    """`dmthin --help` and `dmthin dump ...` load neither the graph layer, the
    checker, the device-mapper binding nor tqdm (start-up time)."""
    code = ("import sys; from dmthin.cli.main import build_parser; "
            "[build_parser(a) for a in (['--help'], ['dump', 'md'])]; "
            "print(sorted(m for m in sys.modules if m.startswith(('dmthin.graph', "
            "'dmthin.thin.check', 'dmthin.dm', 'cffi', 'tqdm', 'matplotlib'))))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "[]\n"


def test_every_command_module_has_a_summary():
    modules = {p.stem for p in Path(cli.__file__).parent.glob("cmd_*.py")}
    assert {module_name(c) for c in SUMMARIES} == modules
