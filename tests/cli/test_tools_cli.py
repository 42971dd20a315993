"""CLI contract of dump, restore, check and ls (as the Rust tools' test
macros): --help, a bad option, a missing input, a tiny input, a corrupted
input.  Each failure is a non-zero exit with no traceback -- one line on
stderr, except check, which prints one line per problem and a summary -- and
the input is never modified.  A bad option exits 1, as the 0.9.0 tools do
(LVM reads 2 as "tool missing").

The commands run in this process (helpers.run_dmthin); test_cli_smoke.py
runs each one once as a real process."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from helpers import run_dmthin as dmthin

GOOD_XML = ('<superblock uuid="" time="1" transaction="2" data_block_size="128" '
            'nr_data_blocks="100">\n'
            '  <device dev_id="1" mapped_blocks="2" transaction="0" creation_time="0" '
            'snap_time="0">\n'
            '    <range_mapping origin_begin="0" data_begin="5" length="2" time="0"/>\n'
            '  </device>\n</superblock>\n')


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def stderr_lines(p) -> list[str]:
    """The error lines (argparse's usage lines left out)."""
    return [ln for ln in p.stderr.decode().splitlines()
            if ln and not ln.startswith(("usage:", " "))]


def assert_clean_failure(p, code=None, tool=None):
    assert p.returncode != 0
    if code is not None:
        assert p.returncode == code
    assert b"Traceback" not in p.stderr
    lines = stderr_lines(p)
    if tool == "check" and lines and "bad metadata" in lines[-1]:
        # check: one line per problem, then "PATH: bad metadata (N problems reported)"
        n = int(re.search(r"\((\d+) problems? reported\)", lines[-1]).group(1))
        assert n >= 1 and len(lines) == n + 1, p.stderr
    else:
        assert len(lines) == 1, p.stderr


@pytest.fixture
def good_md(tmp_path):
    x = tmp_path / "good.xml"
    x.write_text(GOOD_XML)
    md = tmp_path / "md"
    md.write_bytes(b"")
    os.truncate(md, 4 << 20)
    p = dmthin("restore", "-i", x, "-o", md)
    assert p.returncode == 0, p.stderr
    return md


TOOLS = {
    "dump": lambda inp, tmp: ("dump", inp),
    "ls": lambda inp, tmp: ("ls", inp),
    "restore": lambda inp, tmp: ("restore", "-i", inp, "-o", tmp / "out"),
    "check": lambda inp, tmp: ("check", inp),
    "repair": lambda inp, tmp: ("repair", "-i", inp, "-o", tmp / "out"),
}


@pytest.mark.parametrize("tool", TOOLS)
def test_accepts_help(tool):
    p = dmthin(tool, "--help")
    assert p.returncode == 0 and b"usage: dmthin " + tool.encode() in p.stdout


@pytest.mark.parametrize("tool", TOOLS)
def test_rejects_bad_option(tool):
    p = dmthin(tool, "--no-such-option")
    assert_clean_failure(p, 1)
    assert stderr_lines(p)[0].startswith(f"dmthin {tool}: error: ")


@pytest.mark.parametrize("tool", TOOLS)
def test_rejects_bad_option_with_its_input(tool, good_md, tmp_path):
    p = dmthin(*TOOLS[tool](good_md, tmp_path), "--hedgehogs-only")
    assert_clean_failure(p, 1)
    assert "unrecognized arguments: --hedgehogs-only" in stderr_lines(p)[0]


@pytest.mark.parametrize("tool", TOOLS)
def test_input_file_not_found(tool, tmp_path):
    out = tmp_path / "out"
    out.write_bytes(bytes(1 << 20))
    p = dmthin(*TOOLS[tool](tmp_path / "missing", tmp_path))
    assert_clean_failure(p, 1, tool)
    assert out.read_bytes() == bytes(1 << 20)


@pytest.mark.parametrize("tool", TOOLS)
def test_tiny_input_file(tool, tmp_path):
    tiny = tmp_path / "tiny"
    tiny.write_bytes(b"\0" * 7)
    out = tmp_path / "out"
    out.write_bytes(bytes(1 << 20))
    p = dmthin(*TOOLS[tool](tiny, tmp_path))
    assert_clean_failure(p, 1, tool)
    assert tiny.read_bytes() == b"\0" * 7
    assert out.read_bytes() == bytes(1 << 20)


@pytest.mark.parametrize("tool", ["dump", "ls", "check"])
def test_corrupted_input_data(tool, good_md):
    data = bytearray(good_md.read_bytes())
    for off in range(0, 4 * 4096, 997):      # trash the superblock and the first nodes
        data[off] ^= 0x5A
    good_md.write_bytes(bytes(data))
    before = digest(good_md)
    p = dmthin(tool, good_md)
    assert_clean_failure(p, 1, tool)
    assert digest(good_md) == before


def test_check_good_metadata_and_pool_directory(good_md):
    p = dmthin("check", good_md)
    assert p.returncode == 0 and p.stderr == b""
    assert re.fullmatch(rb"TRANSACTION_ID=2\nMETADATA_FREE_BLOCKS=\d+\n", p.stdout), p.stdout
    pool = good_md.parent / "pool"
    pool.mkdir()
    os.rename(good_md, pool / "metadata")
    assert dmthin("check", pool).stdout == p.stdout
    assert dmthin("check", "-q", pool).stdout == b""


def test_check_quiet_prints_nothing_on_bad_metadata(tmp_path):
    tiny = tmp_path / "tiny"
    tiny.write_bytes(b"\0" * 7)
    p = dmthin("check", "-q", tiny)
    assert (p.returncode, p.stdout, p.stderr) == (1, b"", b"")


def test_pool_directory_without_metadata(tmp_path):
    for tool in ("dump", "ls", "check"):
        p = dmthin(tool, tmp_path)
        assert_clean_failure(p, 1)
        assert b"is a directory without a 'metadata' file" in p.stderr


def test_restore_corrupted_xml_keeps_output(tmp_path, good_md):
    bad = tmp_path / "bad.xml"
    bad.write_bytes(GOOD_XML.encode()[:150] + b"\x00\xff garbage")
    before = digest(good_md)
    p = dmthin("restore", "-i", bad, "-o", good_md)
    assert_clean_failure(p, 1)
    assert b"line 2, column" in p.stderr and b"malformed XML" in p.stderr
    assert digest(good_md) == before


def test_restore_missing_output(tmp_path):
    x = tmp_path / "in.xml"
    x.write_text(GOOD_XML)
    p = dmthin("restore", "-i", x, "-o", tmp_path / "nope")
    assert_clean_failure(p, 1)
    assert b"does not exist" in p.stderr and not (tmp_path / "nope").exists()


def test_restore_from_stdin(tmp_path, good_md):
    md2 = tmp_path / "md2"
    md2.write_bytes(bytes(4 << 20))
    assert dmthin("restore", "-i", "-", "-o", md2, input=GOOD_XML.encode()).returncode == 0
    assert dmthin("dump", md2).stdout == dmthin("dump", good_md).stdout


def test_dump_restore_ls_round_trip(tmp_path, good_md):
    out = tmp_path / "d.xml"
    assert dmthin("dump", "-o", out, good_md).returncode == 0
    assert out.read_text() == GOOD_XML.replace('transaction="2" ',
                                               'transaction="2" flags="0" version="2" ')
    md2 = tmp_path / "md2"
    md2.write_bytes(bytes(4 << 20))
    assert dmthin("restore", "-i", out, "-o", md2).returncode == 0
    assert dmthin("dump", md2).stdout == out.read_bytes()
    ls = dmthin("ls", "-o", "DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS", "--no-headers", md2)
    assert ls.stdout == b"1 2 2 \n"


def test_dump_m_without_snapshot(good_md):
    p = dmthin("dump", "-m", good_md)
    assert_clean_failure(p, 1)
    assert b"no metadata snapshot" in p.stderr


def test_dump_missing_metadata_argument():
    assert_clean_failure(dmthin("dump", "-m"))


def test_restore_into_locked_pool_directory_is_refused(tmp_path):
    from dmthin.pooldir import PoolDir
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "metadata").write_bytes(bytes(4 << 20))
    x = tmp_path / "in.xml"
    x.write_text(GOOD_XML)
    holder = PoolDir(pool)
    holder.lock()
    try:
        p = dmthin("restore", "-i", x, "-o", pool)
        assert_clean_failure(p, 1)
        assert b"in use" in p.stderr
        assert (pool / "metadata").read_bytes() == bytes(4 << 20)
    finally:
        holder.unlock()
    assert dmthin("restore", "-i", x, "-o", pool).returncode == 0
    assert dmthin("ls", "--no-headers", "-o", "DEV,MAPPED_BLOCKS", pool).stdout == b"1 2 \n"
