"""Hostile metadata: forged, re-sealed blocks.

* dump validates what thin_dump validates (key order, max_entries, value
  size, flags): where thin_dump 0.9.0 refuses, ``dmthin dump`` exits 1 with
  one line, so a damaged dump is never restored (no laundering);
  ``dump --repair`` writes what survives.
* ls lists the devices of a damaged mapping tree as thin_ls 0.9.0 does (the
  same bytes), and refuses the exclusive/shared columns as it does.
* read and write through a mapping tree leading to a node of another tree
  fail with EIO, one line, and change nothing.
* a mapping past the data device: EIO on read and write (no zeros, no
  growth of the data file), as the block layer fails a bio past the end.
* memory follows the metadata, not the numbers in it: ls, dump, check and
  read of a mapping to data block 2^30, 2^36, 2^40-1 stay small (RSS of a
  child process); a 300-byte XML claiming a 2^40-block range fails at once.
"""
from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dmthin import Pool
from dmthin.errors import IOFailure
from dmthin.thin.format import DATA_SM_ROOT
from forge import (
    header,
    mapping_leaves,
    read_block,
    set_header,
    set_key,
    set_mapping,
    subtree_root,
    superblock,
    write_block,
)
from helpers import run_dmthin as dmthin

REPO = Path(__file__).resolve().parents[2]
RSS_LIMIT_KB = 120 << 10          # python + dmthin is ~25 MB


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def one_line_error(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 1, (p.returncode, p.stderr)
    err = p.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# -- forgeries ------------------------------------------------------------------------
def keys_out_of_order(d: Path) -> None:
    leaf = mapping_leaves(d, 1)[0]
    buf = read_block(d, leaf)
    set_key(buf, 1, 5)
    write_block(d, leaf, buf)


def max_entries_251(d: Path) -> None:
    leaf = mapping_leaves(d, 1)[0]
    buf = read_block(d, leaf)
    set_header(buf, mx=251)
    write_block(d, leaf, buf)


def details_max_entries_125(d: Path) -> None:
    det = superblock(d).device_details_root
    buf = read_block(d, det)
    set_header(buf, mx=125)
    write_block(d, det, buf)


def both_flags(d: Path) -> None:
    leaf = mapping_leaves(d, 1)[0]
    buf = read_block(d, leaf)
    set_header(buf, flags=3)
    write_block(d, leaf, buf)


def subtree_is_details_leaf(d: Path) -> None:
    """The top-level entry of device 1 points at the details tree's leaf."""
    sb = superblock(d)
    buf = read_block(d, sb.data_mapping_root)
    _f, _nr, mx, _vs = header(buf)
    struct.pack_into("<Q", buf, 32 + 8 * mx, sb.device_details_root)
    write_block(d, sb.data_mapping_root, buf)


MAPPING_DAMAGE = [keys_out_of_order, max_entries_251, both_flags, subtree_is_details_leaf]


@pytest.fixture
def damaged(pool_dir, request):
    request.param(pool_dir)
    return pool_dir


@pytest.mark.parametrize("damaged", [*MAPPING_DAMAGE, details_max_entries_125],
                         indirect=True, ids=lambda f: f.__name__)
def test_dump_refuses_what_thin_dump_refuses(damaged, thin_tools_090, tmp_path):
    meta = damaged / "metadata"
    ref = subprocess.run([thin_tools_090["thin_dump"], meta], capture_output=True)
    assert ref.returncode != 0                      # the reference refuses too
    before = md5(meta)
    err = one_line_error(dmthin("dump", damaged))
    assert "--repair" in err
    # no laundering: a damaged pool never turns into a valid dump to restore
    out = tmp_path / "out"
    out.write_bytes(bytes(4 << 20))
    p = dmthin("dump", "-o", tmp_path / "x.xml", damaged)
    assert p.returncode == 1 and not (tmp_path / "x.xml").exists()
    assert md5(meta) == before


@pytest.mark.parametrize("damaged", MAPPING_DAMAGE, indirect=True, ids=lambda f: f.__name__)
def test_dump_repair_keeps_going(damaged, pdata_tools_110, tmp_path):
    p = dmthin("dump", "--repair", damaged)
    assert p.returncode == 0, p.stderr
    xml = p.stdout.decode()
    assert '<device dev_id="2"' in xml and '<device dev_id="3"' in xml
    assert p.stderr                                 # what was lost is said
    # what survives restores into metadata both checkers accept
    src = tmp_path / "in.xml"
    src.write_bytes(p.stdout)
    out = tmp_path / "out"
    out.write_bytes(bytes(4 << 20))
    assert dmthin("restore", "-i", src, "-o", out).returncode == 0
    assert subprocess.run([pdata_tools_110, "thin_check", out], capture_output=True).returncode == 0


@pytest.mark.parametrize("damaged", MAPPING_DAMAGE, indirect=True, ids=lambda f: f.__name__)
def test_ls_lists_a_damaged_pool_as_thin_ls(damaged, thin_tools_090):
    meta = damaged / "metadata"
    for fields in (None, "DEV,MAPPED_BLOCKS,TRANSACTION,CREATE_TIME"):
        opt = [] if fields is None else ["-o", fields]
        ref = subprocess.run([thin_tools_090["thin_ls"], *opt, meta], capture_output=True)
        assert ref.returncode == 0
        p = dmthin("ls", *opt, damaged)
        assert p.returncode == 0 and p.stdout == ref.stdout, p.stderr
    fields = "DEV,EXCLUSIVE_BLOCKS,SHARED_BLOCKS"
    ref = subprocess.run([thin_tools_090["thin_ls"], "-o", fields, meta], capture_output=True)
    assert ref.returncode != 0
    assert "errors" in one_line_error(dmthin("ls", "-o", fields, damaged))


def test_read_and_write_through_a_foreign_node_fail_with_eio(tmp_path):
    """A mapping subtree whose internal node points at the details leaf
    (it once gave a traceback in 'thin read')."""
    d = tmp_path / "pool"
    with Pool.create(d, data_size="64M", metadata_size="4M", backend="sim") as pool:
        t = pool.create_thin(1, "64M")
        for i in range(600):
            t.write(i * 65536, b"x")
        t.flush()
    root = subtree_root(d, 1)
    buf = read_block(d, root)
    flags, nr, mx, _vs = header(buf)
    assert flags == 1 and nr >= 2
    last_key = struct.unpack_from("<Q", buf, 32 + 8 * (nr - 1))[0]
    struct.pack_into("<Q", buf, 32 + 8 * mx + 8 * (nr - 1), superblock(d).device_details_root)
    write_block(d, root, buf)
    before = md5(d / "metadata")
    offset = str((last_key + 1) * 65536)
    for argv in (("thin", "read", d, "1", "--offset", offset, "--length", "64K"),
                 ("thin", "read", d, "1"),
                 ("thin", "write", d, "1", "--offset", offset)):
        err = one_line_error(dmthin(*argv, input=b"y"))
        assert "another tree" in err or "range its parent" in err, err
    assert md5(d / "metadata") == before
    with Pool.open(d) as pool, pytest.raises(IOFailure):
        pool.thin(1).read((last_key + 1) * 65536, 1)
    # a discard is a metadata operation: it fails as the kernel's does
    # (metadata_operation_failed: needs_check set, the pool read-only)
    one_line_error(dmthin("thin", "discard", d, "1", "--offset", "0", "--length", "64M"))
    assert superblock(d).flags & 1
    assert dmthin("check", d).returncode == 1


@pytest.mark.parametrize("block", [128, 1 << 30, (1 << 40) - 1])
def test_mapping_past_the_data_device_is_eio(pool_dir, block):
    set_mapping(pool_dir, 1, 1, block)        # thin 1, vblock 1 (not shared: 2 rewrote it)
    data = pool_dir / "data"
    size = data.stat().st_size
    meta = md5(pool_dir / "metadata")
    err = one_line_error(dmthin("thin", "read", pool_dir, "1", "--length", "192K"))
    assert "beyond the end of the data device" in err
    # a partial write needs the old contents: EIO, and no block allocated
    one_line_error(dmthin("thin", "write", pool_dir, "1", "--offset", "64K", input=b"z"))
    assert data.stat().st_size == size and md5(pool_dir / "metadata") == meta
    with Pool.open(pool_dir) as pool:
        t = pool.thin(1)
        assert t.read(0, 65536) == b"a" * 65536            # other blocks still read
        with pytest.raises(IOFailure):
            t.read(65536, 1)
        # a whole-block write to an unshared mapped block goes in place: EIO too
        with pytest.raises(IOFailure):
            t.write(65536, b"w" * 65536)
            t.flush()
        assert pool.status().total_data_blocks == 128
    assert data.stat().st_size == size


def rss_of(*argv: object) -> tuple[int, int, float]:
    """(exit status, peak RSS in KiB, seconds) of ``dmthin ARGV`` in a child process."""
    # VmHWM, the peak of this process's own memory: ru_maxrss would carry the
    # peak of the (forked) pytest process across the exec
    code = ("import sys\nfrom dmthin.cli.main import main\nrc = main(sys.argv[1:])\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')]\n"
            "print(hwm[0].split()[1], file=sys.stderr)\nsys.exit(rc)\n")
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, int(p.stderr.split()[-1]), time.monotonic() - t


@pytest.mark.parametrize("block", [1 << 30, 1 << 36, (1 << 40) - 1])
def test_memory_does_not_follow_a_data_block_number(pool_dir, block):
    set_mapping(pool_dir, 1, 1, block)
    for argv in (("ls", "-o", "DEV,EXCLUSIVE_BLOCKS,SHARED_BLOCKS"), ("dump",), ("check",)):
        rc, rss, _t = rss_of(*argv, pool_dir)
        assert rc == (1 if argv == ("check",) else 0), (argv, rc)
        assert rss < RSS_LIMIT_KB, (argv, rss)


def test_memory_does_not_follow_nr_data_blocks(pool_dir):
    buf = read_block(pool_dir, 0)
    struct.pack_into("<Q", buf, DATA_SM_ROOT.start, 1 << 40)
    write_block(pool_dir, 0, buf)
    set_mapping(pool_dir, 1, 1, 1 << 39)
    for argv in (("ls", "-o", "DEV,EXCLUSIVE_BLOCKS"), ("dump",), ("check",)):
        rc, rss, _t = rss_of(*argv, pool_dir)
        assert rc in (0, 1) and rss < RSS_LIMIT_KB, (argv, rss)


@pytest.mark.parametrize(("nr_data_blocks", "output_size"), [
    (1 << 40, 8 << 20),            # the output cannot hold the bitmaps: at once
    (1 << 35, 16 << 30),           # the bitmaps fit a 16 GiB sparse output; the range cannot
])
def test_restore_of_a_huge_range_fails_at_once(tmp_path, nr_data_blocks, output_size):
    xml = tmp_path / "in.xml"
    xml.write_text(f'<superblock uuid="" time="0" transaction="1" data_block_size="128" '
                   f'nr_data_blocks="{nr_data_blocks}">\n'
                   f'  <device dev_id="1" mapped_blocks="0" transaction="0" creation_time="0" '
                   f'snap_time="0">\n'
                   f'    <range_mapping origin_begin="0" data_begin="0" '
                   f'length="{nr_data_blocks}" time="0"/>\n  </device>\n</superblock>\n')
    assert len(xml.read_bytes()) < 400
    out = tmp_path / "out"
    with open(out, "wb") as f:
        f.truncate(output_size)
    rc, rss, secs = rss_of("restore", "-i", xml, "-o", out)
    assert rc == 1 and rss < RSS_LIMIT_KB and secs < 20, (rc, rss, secs)
    assert out.stat().st_blocks == 0                    # nothing written
    p = dmthin("restore", "-i", xml, "-o", out)
    assert "too small" in one_line_error(p)


def test_copies_of_the_pool_are_independent(pool_dir, tmp_path):
    """The forgeries above work on copies: the fixture's pool is fresh each time."""
    copy = tmp_path / "copy"
    shutil.copytree(pool_dir, copy)
    assert dmthin("check", copy).returncode == 0
