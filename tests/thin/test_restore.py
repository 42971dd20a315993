"""``dmthin restore``: the result passes thin_check 0.9.0 and 1.1.0 and
``thin_dump`` gives back the input's devices and mappings (and the same text
as ``thin_restore``'s result); bad input is rejected before any write."""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, example, given, settings

from dmthin.errors import UsageError
from dmthin.thin.restore import restore
from dmthin.thin.xml import XmlError
from thin_xmlgen import (
    THIN_CHECK,
    THIN_DUMP,
    THIN_RESTORE,
    MiB,
    blank,
    dmthin,
    gen_metadata,
    mappings_of,
    metadata,
    run,
    to_xml,
)

SETTINGS = {"max_examples": 10, "deadline": None,
                "suppress_health_check": [HealthCheck.function_scoped_fixture]}


def parse_dump(text: bytes) -> dict[int, list[tuple[int, int, int]]]:
    """{dev_id: expanded mappings} from thin_dump XML (the model comparison)."""
    import xml.etree.ElementTree as ET
    root = ET.fromstring(text)
    res = {}
    for dev in root.iter("device"):
        maps = []
        for m in dev:
            a = {k: int(v) for k, v in m.attrib.items()}
            if m.tag == "single_mapping":
                maps.append((a["origin_block"], a["data_block"], a["time"]))
            else:
                maps += [(a["origin_begin"] + i, a["data_begin"] + i, a["time"])
                         for i in range(a["length"])]
        res[int(dev.get("dev_id"))] = maps
    return res


def checks_pass(md, tools):
    r1 = run([THIN_CHECK, md])
    assert r1.returncode == 0, r1.stderr
    r2 = run([tools, "thin_check", md])
    assert r2.returncode == 0, r2.stderr + r2.stdout


@settings(**SETTINGS)
@example(model=gen_metadata(1, max_runs=400, nr_data_blocks=40000))   # a big one, always
@given(model=metadata())
def test_restore_checks_and_round_trips(tmp_path, pdata_tools_110, model):
    x = tmp_path / "in.xml"
    x.write_text(to_xml(model, version=1))
    ours = blank(tmp_path / "ours")
    restore(x, ours)
    checks_pass(ours, pdata_tools_110)
    dumped = run([THIN_DUMP, ours]).stdout
    assert parse_dump(dumped) == {k: sorted(v) for k, v in mappings_of(model).items()}
    theirs = blank(tmp_path / "theirs")
    assert run([THIN_RESTORE, "-i", x, "-o", theirs]).returncode == 0
    assert dumped == run([THIN_DUMP, theirs]).stdout


def test_restore_of_thin_dump_output_is_identical(tmp_path, pdata_tools_110):
    """dump -> restore -> dump is a fixed point, with big devices (multi-level trees)."""
    model = gen_metadata(99, max_devices=3, max_runs=400, nr_data_blocks=40000)
    x = tmp_path / "in.xml"
    x.write_text(to_xml(model))
    a = blank(tmp_path / "a")
    assert run([THIN_RESTORE, "-i", x, "-o", a]).returncode == 0
    d1 = tmp_path / "d1.xml"
    d1.write_bytes(run([THIN_DUMP, a]).stdout)
    b = blank(tmp_path / "b")
    p = dmthin("restore", "-i", d1, "-o", b)
    assert p.returncode == 0, p.stderr
    checks_pass(b, pdata_tools_110)
    assert run([THIN_DUMP, b]).stdout == d1.read_bytes()


def test_restore_110_def_ref_and_overflow_counts(tmp_path, pdata_tools_110):
    """<def>/<ref> expanded; a data block in 4 leaves gets count 4 (overflow tree)."""
    xml = ['<superblock uuid="" time="2" transaction="1" version="2" data_block_size="128" '
           'nr_data_blocks="40000">', '  <def name="7">',
           '    <range_mapping origin_begin="0" data_begin="100" length="500" time="0"/>',
           '  </def>']
    for d in (1, 2, 3, 4):
        xml += [f'  <device dev_id="{d}" mapped_blocks="501" transaction="0" '
                'creation_time="0" snap_time="1">', '    <ref name="7"/>',
                '    <single_mapping origin_block="900" data_block="39999" time="1"/>',
                '  </device>']
    xml.append("</superblock>")
    x = tmp_path / "in.xml"
    x.write_text("\n".join(xml) + "\n")
    ours = blank(tmp_path / "ours")
    r = restore(x, ours)
    assert r.count_of(100) == 4 and r.count_of(39999) == 4 and r.count_of(99) == 0
    checks_pass(ours, pdata_tools_110)
    theirs = blank(tmp_path / "theirs")
    assert run([pdata_tools_110, "thin_restore", "-i", x, "-o", theirs]).returncode == 0
    assert run([THIN_DUMP, ours]).stdout == run([THIN_DUMP, theirs]).stdout


def test_restore_unsorted_input_and_overrides(tmp_path, pdata_tools_110):
    x = tmp_path / "in.xml"
    x.write_text('<superblock uuid="" time="1" transaction="5" data_block_size="128" '
                 'nr_data_blocks="100">\n'
                 '  <device dev_id="3" mapped_blocks="9" transaction="0" creation_time="0" '
                 'snap_time="0">\n'
                 '    <single_mapping origin_block="50" data_block="7" time="1"/>\n'
                 '    <range_mapping origin_begin="2" data_begin="3" length="2" time="1"/>\n'
                 '  </device>\n</superblock>\n')
    md = blank(tmp_path / "md")
    p = dmthin("restore", "-i", x, "-o", md, "--transaction-id", "77",
               "--nr-data-blocks", "20000", "--data-block-size", "256")
    assert p.returncode == 0, p.stderr
    checks_pass(md, pdata_tools_110)
    out = run([THIN_DUMP, md]).stdout.decode()
    assert 'transaction="77"' in out and 'nr_data_blocks="20000"' in out
    assert 'data_block_size="256"' in out and 'mapped_blocks="3"' in out
    assert out.index('origin_begin="2"') < out.index('origin_block="50"')


BAD = [
    ('<superblock uuid="" time="1" transaction="1" data_block_size="128" nr_data_blocks="10">'
     '<device dev_id="1" mapped_blocks="0" transaction="0" creation_time="0" snap_time="0">'
     '<single_mapping origin_block="0" data_block="10" time="0"/></device></superblock>',
     "beyond the end of the data device"),
    ('<superblock uuid="" time="1" transaction="1" data_block_size="128" nr_data_blocks="10">'
     '<device dev_id="16777216" mapped_blocks="0" transaction="0" creation_time="0" '
     'snap_time="0"></device></superblock>', "dev_id=16777216"),
    ('<superblock uuid="" time="1" transaction="1" data_block_size="128" nr_data_blocks="10">'
     '<device dev_id="1" mapped_blocks="0" transaction="0" creation_time="0" snap_time="0">'
     '<single_mapping origin_block="0" data_block="1" time="16777216"/></device></superblock>',
     "24 bits"),
    ('<superblock uuid="" time="1" transaction="1" data_block_size="100" nr_data_blocks="10">'
     '</superblock>', "multiple of 128"),
    ('<superblock uuid="" time="1" transaction="1" data_block_size="128" nr_data_blocks="10">'
     '<device dev_id="1" mapped_blocks="0" transaction="0" creation_time="0" snap_time="0">'
     '<single_mapping origin_block="4" data_block="1" time="0"/>'
     '<single_mapping origin_block="4" data_block="2" time="0"/></device></superblock>',
     "mapped twice"),
    ('<superblock uuid="" time="1" transaction="1" data_block_size="128" nr_data_blocks="10">'
     '<device dev_id="1" mapped_blocks="0" transaction="0" creation_time="0" snap_time="0">'
     '</device><device dev_id="1" mapped_blocks="0" transaction="0" creation_time="0" '
     'snap_time="0"></device></superblock>', "appears twice"),
    ('<superblock uuid="" time="1" transaction="1" data_block_size="128" nr_data_blocks="10">'
     '<device dev_id="1" mapped_blocks="0" transaction="0" creation_time="0" snap_time="0">',
     "line 1"),
]


@pytest.mark.parametrize(("xml", "msg"), BAD)
def test_bad_input_leaves_output_untouched(tmp_path, xml, msg):
    good = tmp_path / "good.xml"
    good.write_text(to_xml(gen_metadata(5)))
    md = blank(tmp_path / "md")
    restore(good, md)
    before = hashlib.sha256(md.read_bytes()).hexdigest()
    bad = tmp_path / "bad.xml"
    bad.write_text(xml)
    with pytest.raises(XmlError, match=msg):
        restore(bad, md)
    p = dmthin("restore", "-i", bad, "-o", md)
    assert p.returncode == 1 and b"Traceback" not in p.stderr
    assert len(p.stderr.splitlines()) == 1 and msg.encode() in p.stderr
    assert hashlib.sha256(md.read_bytes()).hexdigest() == before


def test_output_too_small_or_missing(tmp_path):
    x = tmp_path / "in.xml"
    x.write_text(to_xml(gen_metadata(99, max_devices=3, max_runs=400, nr_data_blocks=40000)))
    small = blank(tmp_path / "small", 16 * 4096)
    before = small.read_bytes()
    with pytest.raises(UsageError, match="too small"):
        restore(x, small)
    assert small.read_bytes() == before
    with pytest.raises(UsageError, match="does not exist"):
        restore(x, tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


def test_restore_counts_above_255_and_many_bitmaps(tmp_path, pdata_tools_110):
    """300 devices share data block 5 (count 300: the byte counter saturates and the
    exact count comes from the overflow dict); nr_data_blocks spans 5 bitmaps with
    blocks used at bitmap edges."""
    e = 16320
    lines = ['<superblock uuid="" time="1" transaction="1" version="1" '
             f'data_block_size="128" nr_data_blocks="{5 * e - 7}">']
    for dev in range(300):
        lines.append(f'  <device dev_id="{dev}" mapped_blocks="1" transaction="0" '
                     'creation_time="0" snap_time="0">')
        lines.append('    <single_mapping origin_block="0" data_block="5" time="0"/>')
        if dev == 0:
            lines.append(f'    <range_mapping origin_begin="1" data_begin="{e - 2}" '
                         f'length="4" time="0"/>')
            lines.append(f'    <range_mapping origin_begin="10" data_begin="{4 * e - 1}" '
                         f'length="{e - 6}" time="0"/>')
        lines.append("  </device>")
    lines.append("</superblock>")
    x = tmp_path / "in.xml"
    x.write_text("\n".join(lines) + "\n")
    md = blank(tmp_path / "md", 16 << 20)
    r = restore(x, md)
    assert r.count_of(5) == 300 and r.count_of(e - 1) == 1 and r.count_of(e) == 1
    checks_pass(md, pdata_tools_110)
    theirs = blank(tmp_path / "theirs", 16 << 20)
    assert run([THIN_RESTORE, "-i", x, "-o", theirs]).returncode == 0
    assert run([THIN_DUMP, md]).stdout == run([THIN_DUMP, theirs]).stdout


def test_nr_data_blocks_override_changes_the_limit(tmp_path):
    x = tmp_path / "in.xml"
    x.write_text('<superblock uuid="" time="1" transaction="5" data_block_size="128" '
                 'nr_data_blocks="100">\n'
                 '  <device dev_id="3" mapped_blocks="1" transaction="0" creation_time="0" '
                 'snap_time="0">\n'
                 '    <single_mapping origin_block="50" data_block="150" time="1"/>\n'
                 '  </device>\n</superblock>\n')
    md = blank(tmp_path / "md")
    with pytest.raises(XmlError, match="nr_data_blocks=100"):
        restore(x, md)
    restore(x, md, nr_data_blocks=200)
    assert b'data_block="150"' in run([THIN_DUMP, md]).stdout
    with pytest.raises(XmlError, match="nr_data_blocks=120"):
        restore(x, md, nr_data_blocks=120)


def test_huge_nr_data_blocks_fails_fast(tmp_path):
    x = tmp_path / "in.xml"
    x.write_text('<superblock uuid="" time="1" transaction="5" data_block_size="128" '
                 'nr_data_blocks="1099511627776">\n</superblock>\n')
    md = blank(tmp_path / "md")
    before = md.read_bytes()
    with pytest.raises(UsageError, match="space-map bitmap blocks"):
        restore(x, md)
    assert md.read_bytes() == before


def test_restore_from_stdin_and_a_three_level_device(tmp_path, pdata_tools_110):
    """`-i -` (input that cannot seek is spooled for the two passes) and a
    single device deep enough for a three-level mapping tree (> 252*84
    mappings), written leaf by leaf."""
    n = 70000
    singles = "".join(f'    <single_mapping origin_block="{2 * i}" data_block="{i}" time="0"/>\n'
                      for i in range(n))
    xml = ('<superblock uuid="" time="0" transaction="3" flags="0" version="2" '
           f'data_block_size="128" nr_data_blocks="{n}">\n'
           f'  <device dev_id="7" mapped_blocks="{n}" transaction="0" creation_time="0" '
           'snap_time="0">\n' + singles + "  </device>\n</superblock>\n")
    out = blank(tmp_path / "md", 16 * MiB)
    r = dmthin("restore", "-i", "-", "-o", out, input=xml.encode())
    assert r.returncode == 0, r.stderr
    checks_pass(out, pdata_tools_110)
    dumped = parse_dump(run([THIN_DUMP, out]).stdout)
    assert dumped == {7: [(2 * i, i, 0) for i in range(n)]}
    # the tree under device 7 really has three levels
    from dmthin.pdata.block import BlockManager
    from dmthin.pdata.btree.node import INTERNAL_NODE, Node
    from dmthin.pdata.btree.walk import lookup
    from dmthin.thin.superblock import read_superblock
    bm = BlockManager(out)
    root = lookup(bm, read_superblock(bm).data_mapping_root, 7)
    depth, b = 1, root
    while True:
        node = Node.decode(bm.read(b, None), b)
        if not node.flags & INTERNAL_NODE:
            break
        depth, b = depth + 1, node.values[0]
    bm.close()
    assert depth == 3
