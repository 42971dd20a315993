"""Files the metadata tools write: never through a predictable name, never
half-written.

* ``dump -o FILE`` (and ``thin read --output``) write a ``mkstemp`` file in
  FILE's directory and rename it into place: a planted symlink at the old
  predictable name ``.FILE.tmp<PID>`` is not followed, a failing dump leaves
  FILE as it was and no temporary behind, the new file takes the old one's
  mode (else 0666 less the umask), a symlink FILE keeps pointing where it did.
* ``restore`` into a regular file builds a new file and renames it over the
  output (mode kept); bad input leaves the output byte for byte as it was.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from forge import read_block, set_header, write_block
from helpers import run_dmthin as dmthin


def files(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


def test_dump_output_never_follows_the_old_temporary_name(pool_dir, tmp_path):
    out = tmp_path / "out.xml"
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    planted = tmp_path / f".out.xml.tmp{os.getpid()}"
    planted.symlink_to(victim)
    p = dmthin("dump", "-o", out, pool_dir)
    assert p.returncode == 0, p.stderr
    assert victim.read_bytes() == b"precious"
    assert out.read_text().startswith("<superblock")
    assert files(tmp_path) == {"pool", "out.xml", "victim", planted.name}


def test_failed_dump_leaves_the_output_and_no_temporary(pool_dir, tmp_path):
    out = tmp_path / "out.xml"
    out.write_text("old contents\n")
    out.chmod(0o640)
    # a details leaf whose max_entries is wrong: dump refuses (after writing a header)
    from forge import superblock
    det = superblock(pool_dir).device_details_root
    buf = read_block(pool_dir, det)
    set_header(buf, mx=125)
    write_block(pool_dir, det, buf)
    p = dmthin("dump", "-o", out, pool_dir)
    assert p.returncode == 1 and p.stderr.count(b"\n") == 1, p.stderr
    assert out.read_text() == "old contents\n"
    assert files(tmp_path) == {"pool", "out.xml"}


def test_dump_output_modes_and_symlinks(pool_dir, tmp_path):
    new = tmp_path / "new.xml"
    old = os.umask(0o027)
    try:
        assert dmthin("dump", "-o", new, pool_dir).returncode == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(new.stat().st_mode) == 0o640
    new.chmod(0o604)
    assert dmthin("dump", "-o", new, pool_dir).returncode == 0
    assert stat.S_IMODE(new.stat().st_mode) == 0o604
    link = tmp_path / "link.xml"
    link.symlink_to(new)
    new.write_text("")
    assert dmthin("dump", "-o", link, pool_dir).returncode == 0
    assert link.is_symlink() and new.read_text().startswith("<superblock")


def test_thin_read_output_is_renamed_into_place(pool_dir, tmp_path):
    out = tmp_path / "data"
    p = dmthin("thin", "read", pool_dir, "1", "--length", "64K", "--output", out)
    assert p.returncode == 0, p.stderr
    assert out.read_bytes() == b"a" * 65536
    p = dmthin("thin", "read", pool_dir, "9", "--output", out)
    assert p.returncode == 1
    assert out.read_bytes() == b"a" * 65536 and files(tmp_path) == {"pool", "data"}


def test_restore_into_a_file_replaces_it_whole(pool_dir, tmp_path):
    xml = tmp_path / "in.xml"
    assert dmthin("dump", "-o", xml, pool_dir).returncode == 0
    meta = tmp_path / "meta"
    meta.write_bytes(b"x" * (4 << 20))
    meta.chmod(0o604)
    ino = meta.stat().st_ino
    bad = tmp_path / "bad.xml"
    bad.write_text(xml.read_text().replace('nr_data_blocks="128"', 'nr_data_blocks="1"'))
    p = dmthin("restore", "-i", bad, "-o", meta)
    assert p.returncode == 1 and meta.read_bytes() == b"x" * (4 << 20)
    p = dmthin("restore", "-i", xml, "-o", meta)
    assert p.returncode == 0, p.stderr
    st = meta.stat()
    assert st.st_ino != ino and st.st_size == 4 << 20 and stat.S_IMODE(st.st_mode) == 0o604
    assert files(tmp_path) == {"pool", "in.xml", "bad.xml", "meta"}
    assert dmthin("dump", meta).stdout == xml.read_bytes()
