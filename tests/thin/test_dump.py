"""``dmthin dump`` against ``thin_dump`` 0.9.0, byte for byte.

Metadata comes from ``thin_restore`` 0.9.0 of generated XML (random devices,
snapshots sharing blocks, ranges and singles crossing leaves), from 1.1.0
``thin_restore`` of def/ref XML (shared subtrees), and with a held metadata
snapshot for ``-m``.  Hypothesis generates the pools (and shrinks a failing one).
"""
from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, example, given, settings

from dmthin.errors import MetadataError
from dmthin.thin.dump import dump, open_block_manager
from dmthin.thin.human import HumanReadableWriter
from dmthin.thin.xml import XmlWriter
from thin_xmlgen import (
    THIN_DUMP,
    THIN_RESTORE,
    add_fake_metadata_snap,
    blank,
    dmthin,
    gen_metadata,
    metadata,
    run,
    to_xml,
)

SETTINGS = {"max_examples": 12, "deadline": None,
                "suppress_health_check": [HealthCheck.function_scoped_fixture]}


def dump_text(path, fmt="xml", **kw) -> str:
    bm = open_block_manager(path)
    out = io.StringIO()
    try:
        dump(bm, XmlWriter(out) if fmt == "xml" else HumanReadableWriter(out), **kw)
    finally:
        bm.close()
    return out.getvalue()


def restored_090(tmp_path, xml: str, name="md"):
    x = tmp_path / f"{name}.xml"
    x.write_text(xml)
    md = blank(tmp_path / name)
    p = run([THIN_RESTORE, "-i", x, "-o", md])
    assert p.returncode == 0, p.stderr
    return md


@settings(**SETTINGS)
@example(model=gen_metadata(1, max_runs=400, nr_data_blocks=40000))   # a big one, always
@given(model=metadata())
def test_dump_matches_thin_dump(tmp_path, model):
    md = restored_090(tmp_path, to_xml(model))
    for fmt, tool_fmt in (("xml", "xml"), ("human", "human_readable")):
        ref = run([THIN_DUMP, "-f", tool_fmt, md])
        assert ref.returncode == 0
        assert dump_text(md, fmt).encode() == ref.stdout, f"format {fmt}"


@settings(**SETTINGS)
@example(model=gen_metadata(1, max_runs=400, nr_data_blocks=40000))   # a big one, always
@given(model=metadata())
def test_dump_metadata_snap_matches(tmp_path, model):
    md = restored_090(tmp_path, to_xml(model))
    h = add_fake_metadata_snap(md)
    ref = run([THIN_DUMP, "-m", md])
    assert ref.returncode == 0, ref.stderr
    assert dump_text(md, metadata_snap=True).encode() == ref.stdout
    ref_b = run([THIN_DUMP, f"-m{h}", md])
    assert dump_text(md, metadata_snap=h).encode() == ref_b.stdout
    # the live superblock still dumps as before, without a metadata_snap attribute
    assert dump_text(md).encode() == run([THIN_DUMP, md]).stdout


def test_dump_cli_matches_and_options(tmp_path):
    md = restored_090(tmp_path, to_xml(gen_metadata(7, max_devices=4)))
    for args in ([], ["-f", "human_readable"], ["--skip-mappings"]):
        ref = run([THIN_DUMP, *args, md])
        got = dmthin("dump", *args, md)
        assert got.returncode == 0, got.stderr
        assert got.stdout == ref.stdout, args
    out = tmp_path / "out.xml"
    assert dmthin("dump", "-o", out, md).returncode == 0
    assert out.read_bytes() == run([THIN_DUMP, md]).stdout
    dev = gen_metadata(7, max_devices=4)["devices"][0][0]["dev_id"]
    ref = run([THIN_DUMP, "--dev-id", str(dev), md])
    assert dmthin("dump", "--dev-id", str(dev), md).stdout == ref.stdout


def test_dump_pool_directory(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    x = tmp_path / "a.xml"
    x.write_text(to_xml(gen_metadata(3)))
    md = blank(pool / "metadata")
    assert run([THIN_RESTORE, "-i", x, "-o", md]).returncode == 0
    assert dmthin("dump", pool).stdout == run([THIN_DUMP, md]).stdout


def test_dump_shared_subtrees_from_110(tmp_path, pdata_tools_110):
    """1.1.0 restores <def>/<ref> as shared leaves; 0.9.0 dumps them expanded."""
    xml = ['<superblock uuid="" time="2" transaction="1" data_block_size="128" '
           'nr_data_blocks="10000">', '  <def name="x">',
           '    <range_mapping origin_begin="0" data_begin="0" length="700" time="0"/>',
           '  </def>']
    for d in (1, 2, 3):
        xml += [f'  <device dev_id="{d}" mapped_blocks="701" transaction="0" '
                'creation_time="0" snap_time="1">', '    <ref name="x"/>',
                f'    <single_mapping origin_block="{800 + d}" data_block="{1000 + d}" '
                'time="1"/>', '  </device>']
    xml.append("</superblock>")
    x = tmp_path / "c.xml"
    x.write_text("\n".join(xml) + "\n")
    md = blank(tmp_path / "md")
    assert run([pdata_tools_110, "thin_restore", "-i", x, "-o", md]).returncode == 0
    assert dump_text(md).encode() == run([THIN_DUMP, md]).stdout


def test_dump_without_metadata_snap_fails_cleanly(tmp_path):
    md = restored_090(tmp_path, to_xml(gen_metadata(1)))
    with pytest.raises(MetadataError, match="no metadata snapshot"):
        dump_text(md, metadata_snap=True)
    p = dmthin("dump", "-m", md)
    assert p.returncode == 1 and b"Traceback" not in p.stderr
    assert len(p.stderr.splitlines()) == 1


@pytest.mark.parametrize("offset", [0, 8, 40, 4096 * 1 + 100, 4096 * 2 + 20])
def test_dump_corrupt_metadata_is_one_line_error(tmp_path, offset):
    md = restored_090(tmp_path, to_xml(gen_metadata(11)))
    data = bytearray(md.read_bytes())
    data[offset] ^= 0xFF
    md.write_bytes(bytes(data))
    before = md.read_bytes()
    p = dmthin("dump", md)
    ref = run([THIN_DUMP, md])
    if ref.returncode == 0 and p.returncode == 0:
        assert p.stdout == ref.stdout          # an unused block: both fine
    else:
        assert p.returncode == 1, p.stdout[-200:]
        assert b"Traceback" not in p.stderr and len(p.stderr.splitlines()) == 1
    assert md.read_bytes() == before
