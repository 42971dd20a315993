"""``dmthin ls`` against ``thin_ls`` 0.9.0: same numbers, same grid."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings

from dmthin.errors import UsageError
from dmthin.thin import ls as ls_module
from dmthin.thin.ls import FIELDS, format_disk_unit, parse_fields, thin_ls
from dmthin.thin.reader import open_block_manager
from thin_xmlgen import (
    THIN_LS,
    THIN_RESTORE,
    add_fake_metadata_snap,
    blank,
    dmthin,
    gen_metadata,
    metadata,
    run,
    to_xml,
)

ALL = ",".join(FIELDS)


def restored(tmp_path, xml, restore=(THIN_RESTORE,)):
    x = tmp_path / "in.xml"
    x.write_text(xml)
    md = blank(tmp_path / "md")
    p = run([*restore, "-i", x, "-o", md])
    assert p.returncode == 0, p.stderr
    return md


def ls_text(md, fields, **kw):
    bm = open_block_manager(md)
    try:
        return thin_ls(bm, fields, **kw)
    finally:
        bm.close()


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(model=gen_metadata(1, max_runs=400, nr_data_blocks=40000))   # a big one, always
@given(model=metadata())
def test_ls_matches_thin_ls(tmp_path, model):
    md = restored(tmp_path, to_xml(model))
    for args in ([], ["-o", ALL], ["--no-headers", "-o", ALL], ["--no-headers"]):
        ref = run([THIN_LS, *args, md])
        assert ref.returncode == 0, ref.stderr
        fields = parse_fields(args[-1]) if "-o" in args else None
        kw = {"headers": "--no-headers" not in args}
        text = ls_text(md, fields, **kw) if fields else ls_text(md, ("DEV", "MAPPED",
                                                                     "CREATE_TIME",
                                                                     "SNAP_TIME"), **kw)
        assert text.encode() == ref.stdout, f"args {args}"


@pytest.mark.parametrize("cache", [0, 100, 1000])
def test_ls_walks_again_what_it_cannot_keep(tmp_path, monkeypatch, cache):
    # Devices beyond the cache between ls's two passes are walked again:
    # the same counts as thin_ls whatever fits.
    md = restored(tmp_path, to_xml(gen_metadata(7, max_runs=300, nr_data_blocks=20000)))
    monkeypatch.setattr(ls_module, "CACHE_ENTRIES", cache)
    ref = run([THIN_LS, "-o", ALL, md])
    assert ref.returncode == 0, ref.stderr
    assert ls_text(md, parse_fields(ALL)).encode() == ref.stdout


def test_ls_metadata_snap_and_cli(tmp_path):
    md = restored(tmp_path, to_xml(gen_metadata(21)))
    add_fake_metadata_snap(md)
    for args in (["-m"], ["-m", "-o", ALL], ["-o", "DEV,SHARED_BLOCKS,DEV"]):
        ref = run([THIN_LS, *args, md])
        got = dmthin("ls", *args, md)
        assert got.returncode == 0, got.stderr
        assert got.stdout == ref.stdout, args


def test_ls_shared_subtrees_from_110(tmp_path, pdata_tools_110):
    """Shared leaves (1.1.0 def/ref) and a data block mapped by three devices."""
    xml = ['<superblock uuid="" time="2" transaction="1" data_block_size="128" '
           'nr_data_blocks="10000">', '  <def name="x">',
           '    <range_mapping origin_begin="0" data_begin="0" length="300" time="0"/>',
           '  </def>']
    for d in (1, 2, 3):
        xml += [f'  <device dev_id="{d}" mapped_blocks="302" transaction="0" '
                'creation_time="0" snap_time="1">', '    <ref name="x"/>',
                f'    <single_mapping origin_block="{500 + d}" data_block="{1000 + d}" '
                'time="1"/>',
                '    <single_mapping origin_block="600" data_block="5000" time="1"/>',
                '  </device>']
    xml.append("</superblock>")
    md = restored(tmp_path, "\n".join(xml) + "\n", restore=(pdata_tools_110, "thin_restore"))
    assert ls_text(md, FIELDS).encode() == run([THIN_LS, "-o", ALL, md]).stdout


@pytest.mark.parametrize(("sectors", "text"), [
    (0, "0"), (128, "64KiB"), (896, "448KiB"), (76800, "38MiB"), (38528, "19MiB"),
    (16, "8192"), (2 * 1024 * 2048 * 1024, "2048GiB"), (3 * 2097152, "3072MiB")])
def test_format_disk_unit(sectors, text):
    assert format_disk_unit(sectors) == text


def test_unknown_field():
    with pytest.raises(UsageError, match="HIGHEST_BLOCK"):
        parse_fields("DEV,HIGHEST_BLOCK")
    assert parse_fields("DEV,") == ["DEV"]
