"""The XML reader and writers: round trips, the 1.x form, and one-line
errors naming line and column for malformed or out-of-range input."""
from __future__ import annotations

import io

import pytest

from dmthin.thin.human import HumanReadableWriter
from dmthin.thin.ir import Map, RunBuilder, to_map
from dmthin.thin.xml import XmlError, XmlWriter, read_xml
from thin_xmlgen import THIN_DUMP, THIN_RESTORE, blank, gen_metadata, run, to_xml


class Recorder:
    """Visitor recording events as tuples."""

    def __init__(self):
        self.events = []

    def __getattr__(self, name):
        if name in ("superblock_b", "superblock_e", "def_shared_b", "def_shared_e",
                    "device_b", "device_e", "map", "ref_shared", "eof"):
            return lambda *a: self.events.append((name, *a))
        raise AttributeError(name)


def parse(text: str):
    r = Recorder()
    read_xml(io.BytesIO(text.encode()), r, name="t.xml")
    return r.events


def rewrite(text: str, writer=XmlWriter) -> str:
    out = io.StringIO()
    read_xml(io.BytesIO(text.encode()), writer(out))
    return out.getvalue()


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_thin_dump_output_rewrites_identically(tmp_path, seed):
    x = tmp_path / "in.xml"
    x.write_text(to_xml(gen_metadata(seed)))
    md = blank(tmp_path / "md")
    assert run([THIN_RESTORE, "-i", x, "-o", md]).returncode == 0
    ref = run([THIN_DUMP, md]).stdout.decode()
    assert rewrite(ref) == ref
    human = run([THIN_DUMP, "-f", "human_readable", md]).stdout.decode()
    assert rewrite(ref, HumanReadableWriter) == human


def test_reads_110_form_with_def_ref(tmp_path, pdata_tools_110):
    xml = ('<superblock uuid="" time="2" transaction="1" data_block_size="128" '
           'nr_data_blocks="10000">\n  <def name="x">\n'
           '    <range_mapping origin_begin="0" data_begin="0" length="300" time="0"/>\n'
           '  </def>\n')
    for d in (1, 2):
        xml += (f'  <device dev_id="{d}" mapped_blocks="301" transaction="0" '
                f'creation_time="0" snap_time="1">\n    <ref name="x"/>\n'
                f'    <single_mapping origin_block="{500 + d}" data_block="{1000 + d}" '
                'time="1"/>\n  </device>\n')
    xml += "</superblock>\n"
    x = tmp_path / "c.xml"
    x.write_text(xml)
    md = blank(tmp_path / "md")
    assert run([pdata_tools_110, "thin_restore", "-i", x, "-o", md]).returncode == 0
    text110 = run([pdata_tools_110, "thin_dump", md]).stdout.decode()
    assert "<def" in text110 and "<ref" in text110 and 'flags="' not in text110
    ev = parse(text110)
    names = [e[0] for e in ev]
    assert names[0] == "superblock_b" and names[1] == "def_shared_b" and names[-1] == "eof"
    assert ev[0][1].flags is None and ev[0][1].version == 2
    assert ("ref_shared", ev[1][1]) in ev


def test_run_builder_groups_like_thin_dump():
    rb = RunBuilder()
    pack = lambda d, t: (d << 24) | t  # noqa: E731
    assert rb.add_leaf([0], [0]) == [] and rb.finish() == [(0, 0, 1)]
    got = rb.add_leaf([0, 1, 2], [pack(5, 0), pack(6, 0), pack(7, 0)])
    assert got == []                       # the run may continue in the next leaf
    got += rb.add_leaf([3, 4, 9, 10], [pack(8, 0), pack(9, 1), pack(10, 1), pack(12, 1)])
    got += rb.finish()
    assert [to_map(r) for r in got] == [Map(0, 5, 0, 4), Map(4, 9, 1, 1), Map(9, 10, 1, 1),
                                        Map(10, 12, 1, 1)]
    assert rb.finish() == []


SB = ('<superblock uuid="" time="1" transaction="1" data_block_size="128" '
      'nr_data_blocks="100">')
DEV = '<device dev_id="1" mapped_blocks="0" transaction="0" creation_time="0" snap_time="0">'


@pytest.mark.parametrize(("body", "msg"), [
    (f"{SB}<device/></superblock>", "missing attribute 'dev_id' on <device>"),
    (f'{SB}{DEV}<single_mapping origin_block="1" data_block="2" time="0" x="1"/>'
     "</device></superblock>", "unknown attribute 'x' on <single_mapping>"),
    (f'{SB}{DEV}<single_mapping origin_block="1" data_block="2"/></device></superblock>',
     "missing attribute 'time'"),
    (f'{SB}{DEV}<single_mapping origin_block="-1" data_block="2" time="0"/></device>'
     "</superblock>", "not a non-negative decimal integer"),
    (f'{SB}{DEV}<single_mapping origin_block="1" data_block="100" time="0"/></device>'
     "</superblock>", "beyond the end of the data device"),
    (f'{SB}{DEV}<range_mapping origin_begin="1" data_begin="90" length="11" time="0"/>'
     "</device></superblock>", "data block 100, beyond"),
    (f'{SB}{DEV}<range_mapping origin_begin="1" data_begin="9" length="0" time="0"/>'
     "</device></superblock>", "length=0"),
    (f'{SB}{DEV}<single_mapping origin_block="1" data_block="2" time="16777216"/>'
     "</device></superblock>", "time=16777216"),
    (f'{SB}<device dev_id="16777216" mapped_blocks="0" transaction="0" creation_time="0" '
     'snap_time="0"></device></superblock>', "above the kernel's maximum"),
    (f'{SB}<device dev_id="4294967296" mapped_blocks="0" transaction="0" creation_time="0" '
     'snap_time="0"></device></superblock>', "out of range"),
    (f"{SB}<bogus/></superblock>", "unknown element <bogus>"),
    (f'{SB}<single_mapping origin_block="1" data_block="2" time="0"/></superblock>',
     "not allowed inside <superblock>"),
    (f'{SB}{DEV}<ref name="nope"/></device></superblock>', "undefined <def>"),
    (f"{SB}{DEV}</superblock>", "malformed XML"),
    ('<superblock uuid="" time="1" transaction="1" data_block_size="128" '
     'nr_data_blocks="100" colour="red"></superblock>', "unknown attribute 'colour'"),
    (f'{SB}{DEV}<single_mapping origin_block="1" data_block="2" time="0"><device/>'
     "</single_mapping></device></superblock>", "inside a mapping element"),
    (f'{SB}{DEV}<single_mapping origin_block="1" data_block="2" time="0">'
     '<range_mapping origin_begin="1" data_begin="2" time="0" length="2"/>'
     "</single_mapping></device></superblock>", "inside a mapping element"),
    ("", "malformed XML"),
    ('<!DOCTYPE s [<!ENTITY a "aaaa">]><superblock/>', "DOCTYPE"),
    ("<device/>", "must be inside <superblock>"),
])
def test_malformed_input_errors_name_position(body, msg):
    with pytest.raises(XmlError) as ei:
        parse(body)
    text = str(ei.value)
    assert msg in text
    assert "\n" not in text and text.startswith("t.xml")
    if body:
        assert "line 1, column" in text


def test_error_position_on_later_line():
    body = f"{SB}\n  {DEV}\n    <single_mapping origin_block=\"x\" data_block=\"2\" time=\"0\"/>\n"
    with pytest.raises(XmlError, match=r"line 3, column 5"):
        parse(body + "  </device>\n</superblock>\n")
