"""``dmthin check`` takes every thin_check 0.9.0 option with its exit codes.

Side by side with thin_check 0.9.0 (and 1.1.0 for the result's validity) on
pools written by the engine: the option combinations thin_check refuses,
``--clear-needs-check-flag`` (the same bytes as 0.9.0 writes), leaks and
``--auto-repair``, ``--override-mapping-root``, and exit 1 -- never 2 --
on bad options for every command mirroring a tool and for the console
scripts LVM runs.
"""
from __future__ import annotations

import hashlib
import shutil

import pytest

from dmthin import __version__
from dmthin.thin.metadata import ThinMetadata
from toolgen import THIN, Layout, build_pool, checks_pass, corrupt, dmthin, first_line, run, script

OPS = [("thin", 1)] + [("map", 1, v) for v in range(0, 900, 3)] + [
    ("snap", 2, 1)] + [("map", 2, v) for v in range(0, 300, 7)] + [("thin", 3)]


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def pool(tmp_path):
    """A clean pool with needs_check set."""
    return build_pool(tmp_path / "meta", [*OPS, ("needs_check",)])


@pytest.fixture
def leaky(tmp_path):
    """A pool with one leaked metadata block and two leaked data blocks."""
    path = build_pool(tmp_path / "leaky", [*OPS, ("needs_check",)])
    md = ThinMetadata.open(path)
    md.metadata_sm.inc(3000)
    md.data_sm.inc(40000)
    md.data_sm.inc(40001)
    md.commit()
    md.close()
    return path


REFUSED = [
    ["--clear-needs-check-flag", "--skip-mappings"],
    ["--clear-needs-check-flag", "--super-block-only"],
    ["--clear-needs-check-flag", "-m"],
    ["--clear-needs-check-flag", "--ignore-non-fatal-errors"],
    ["--auto-repair", "--skip-mappings"],
    ["--auto-repair", "--ignore-non-fatal-errors"],
    ["--clear-needs-check-flag", "--override-mapping-root", "1"],
    ["--override-mapping-root"],
    ["--override-mapping-root", "x"],
    ["--bogus"],
    ["-x"],
    [],
]


@pytest.mark.parametrize("opts", REFUSED, ids=lambda o: " ".join(o) or "no-input")
def test_refused_combinations_exit_1_and_write_nothing(pool, thin_tools_090, opts):
    before = digest(pool)
    theirs = run([THIN["thin_check"], *opts] + ([pool] if opts else []))
    ours = dmthin("check", *opts, *([pool] if opts else []))
    assert (theirs.returncode, ours.returncode) == (1, 1), ours.stderr
    assert digest(pool) == before
    assert ours.stderr.strip(), "a refused command says why"


def test_clear_needs_check_flag_writes_what_thin_check_writes(pool, tmp_path, thin_tools_090,
                                                              pdata_tools_110):
    theirs = shutil.copy(pool, tmp_path / "theirs")
    assert 'flags="1"' in first_line(pool)
    assert run([THIN["thin_check"], "-q", "--clear-needs-check-flag", theirs]).returncode == 0
    p = dmthin("check", "-q", "--clear-needs-check-flag", pool)
    assert p.returncode == 0 and p.stdout == p.stderr == ""
    assert digest(pool) == digest(theirs)          # only the superblock changed, identically
    assert 'flags="0"' in first_line(pool)
    assert checks_pass(pool, pdata_tools_110) == (0, 0)
    # The flag is clear now: nothing more is written.
    before = digest(pool)
    assert dmthin("check", "--clear-needs-check-flag", pool).returncode == 0
    assert digest(pool) == before


def test_lvm_runs_the_console_script(pool, pdata_tools_110):
    """LVM: thin_check_executable=dmthin-thin_check, thin_check_options=
    ["-q", "--clear-needs-check-flag"], the metadata path last."""
    p = run([script("dmthin-thin_check"), "-q", "--clear-needs-check-flag", pool])
    assert p.returncode == 0, p.stderr
    assert 'flags="0"' in first_line(pool)
    v = run([script("dmthin-thin_check"), "-V"])
    assert v.returncode == 0 and v.stdout.strip() == __version__


def test_leaks_not_cleared_without_auto_repair(leaky, thin_tools_090, pdata_tools_110):
    before = digest(leaky)
    for argv in ([THIN["thin_check"], "-q", "--clear-needs-check-flag"],
                 [THIN["thin_check"], "-q"]):
        assert run([*argv, leaky]).returncode == 1
    assert digest(leaky) == before
    for opts in (["--clear-needs-check-flag"], []):
        p = dmthin("check", *opts, leaky)
        assert p.returncode == 1
        assert "leaked" in p.stderr
    assert digest(leaky) == before
    assert dmthin("check", "--ignore-non-fatal-errors", leaky).returncode == 0
    assert run([THIN["thin_check"], "-q", "--ignore-non-fatal-errors", leaky]).returncode == 0


@pytest.mark.parametrize("opts", [["--auto-repair"],
                                  ["--auto-repair", "--clear-needs-check-flag"]])
def test_auto_repair_frees_leaks_and_clears_the_flag(leaky, opts, pdata_tools_110):
    p = dmthin("check", *opts, leaky)
    assert p.returncode == 0, p.stderr
    assert "fixed leaks: 1 metadata and 2 data blocks freed" in p.stderr
    # As thin_check 0.9.0: --auto-repair clears needs_check after the fix.
    assert 'flags="0"' in first_line(leaky)
    assert checks_pass(leaky, pdata_tools_110) == (0, 0)
    assert dmthin("check", "-q", leaky).returncode == 0


def test_damage_is_never_fixed(pool, thin_tools_090):
    corrupt(pool, Layout(pool).leaves[1][0])
    before = digest(pool)
    for opts in (["--auto-repair"], ["--clear-needs-check-flag"]):
        assert run([THIN["thin_check"], "-q", *opts, pool]).returncode == 1
        assert dmthin("check", "-q", *opts, pool).returncode == 1
    assert digest(pool) == before


def test_override_mapping_root(pool, thin_tools_090):
    layout = Layout(pool)
    root = layout.sb.data_mapping_root
    for block, want in ((root, 0), (layout.details[0], 1), (layout.roots[1], 1)):
        theirs = run([THIN["thin_check"], "-q", "--override-mapping-root", block, pool])
        ours = dmthin("check", "-q", "--override-mapping-root", str(block), pool)
        assert (theirs.returncode, ours.returncode) == (want, want), block


TOOL_COMMANDS = ["check", "dump", "restore", "ls", "repair", "delta", "rmap", "trim",
                 "metadata-size"]


@pytest.mark.parametrize("command", TOOL_COMMANDS)
def test_version_everywhere(command):
    p = dmthin(command, "-V")
    assert (p.returncode, p.stdout) == (0, __version__ + "\n")


def test_dump_repair_dumps_what_survives(pool, thin_tools_090):
    corrupt(pool, Layout(pool).leaves[1][1])
    theirs = run([THIN["thin_dump"], "-r", pool])
    ours = dmthin("dump", "-r", pool)
    assert theirs.returncode == ours.returncode == 0
    assert "lost" in ours.stderr
    assert ours.stdout.splitlines()[1:] == theirs.stdout.splitlines()[1:]
    assert dmthin("dump", pool).returncode == 1


@pytest.mark.parametrize("command", TOOL_COMMANDS)
def test_bad_options_exit_1(command, pool):
    for argv in (["--no-such-option", pool], ["-Z"]):
        p = dmthin(command, *argv)
        assert p.returncode == 1, (argv, p.returncode, p.stderr)
        assert p.stderr.strip()


@pytest.mark.parametrize("name", ["thin_check", "thin_repair", "thin_dump", "thin_restore",
                                  "thin_ls", "thin_delta", "thin_rmap", "thin_metadata_size",
                                  "thin_trim"])
def test_console_scripts_mirror_the_tools(name, pool):
    exe = script(f"dmthin-{name}")
    p = run([exe, "--no-such-option"])
    assert p.returncode == 1, p.stderr
    assert run([exe, "--help"]).returncode == 0
