"""The accelerator's scanner of thin_dump XML (``dm_xml_maps``) against
expat alone: hypothesis writes documents (thin_dump's spelling, other
spellings, values out of range, misplaced and broken elements, comments)
and reads them both ways in chunks of random size; the visitor's events,
or the one-line error with its line and column, must be the same."""
from __future__ import annotations

import io
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import helpers
from dmthin.errors import InvalidArgument, UsageError
from dmthin.thin import restore as restore_mod
from dmthin.thin import xml
from dmthin.thin.restore import restore
from dmthin.thin.xml import XmlError, read_xml

pytestmark = pytest.mark.usefixtures("accel_built")


class Events:
    """Records every event; refuses the mapping at data block *bad_data*
    (as a restore refuses one, with a ValueError)."""

    def __init__(self, bad_data: int | None):
        self.ev: list[tuple[object, ...]] = []
        self.bad_data = bad_data

    def _rec(self, *a: object) -> None:
        self.ev.append(a)

    superblock_b = superblock_e = device_b = device_e = _rec
    def_shared_b = def_shared_e = ref_shared = eof = _rec

    def map_raw(self, o: int, d: int, t: int, n: int) -> None:
        if d == self.bad_data:
            raise InvalidArgument(f"mapping to data block {d} refused")
        self.ev.append(("map", o, d, t, n))

    def map(self, m: object) -> None:
        self.ev.append(("Map", m))


NUM = st.one_of(st.integers(0, 40), st.sampled_from([(1 << 24) - 1, 1 << 24, (1 << 64) - 1,
                                                     1 << 64, 1 << 70]))


@st.composite
def mapping(draw) -> str:
    o, d, t, n = draw(NUM), draw(NUM), draw(NUM), draw(NUM)
    style = draw(st.sampled_from(["canon", "canon", "canon", "order", "space", "bad", "junk"]))
    if draw(st.booleans()):
        body = f'single_mapping origin_block="{o}" data_block="{d}" time="{t}"'
        alt = f"single_mapping time='{t}' data_block=\"{d}\"  origin_block=\"{o}\""
    else:
        body = (f'range_mapping origin_begin="{o}" data_begin="{d}" length="{n}" '
                f'time="{t}"')
        alt = (f'range_mapping length="{n}" origin_begin="{o}" time="{t}" '
               f'data_begin="{d}"')
    if style == "order":
        body = alt
    elif style == "space":
        body = body.replace(" ", "\n ", 1)
    elif style == "bad":
        body = body.replace('"', "", 1)
    elif style == "junk":
        body = body.replace("time", draw(st.sampled_from(["tim", "time2", "x"])))
    end = draw(st.sampled_from(["/>", "/>", "/>", "></" + body.split()[0] + ">", ">"]))
    return draw(st.sampled_from(["  ", "", "\n    ", "\t", "é"])) + "<" + body + end


@st.composite
def document(draw) -> str:
    parts = [f'<superblock uuid="u>\'x" time="1" transaction="2" data_block_size="128" '
             f'nr_data_blocks="{draw(st.integers(0, 50))}">\n']
    defs = 0
    for dev in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["device", "device", "def"]))
        if kind == "def":
            parts.append(f'  <def name="d{defs}">\n')
            defs += 1
        else:
            parts.append(f'  <device dev_id="{dev}" mapped_blocks="0" transaction="0" '
                         f'creation_time="0" snap_time="0">\n')
        for _ in range(draw(st.integers(0, 12))):
            parts.append(draw(st.one_of(
                mapping(), mapping(), mapping(), mapping(),
                st.sampled_from(["<!-- <single_mapping -->", "<?pi x?>", " text ", "<!-->", "-->",
                                 "<ref name=\"d0\"/>", "<device/>", "&amp;", "<![CDATA[x]]>",
                                 "<!DOCTYPE x>", "\r\n"]))) + "\n")
        parts.append(f"  </{kind}>\n")
    parts.append(draw(st.sampled_from(["</superblock>\n", "</superblock>", "", "<x/>"])))
    return "".join(parts)


def _read(doc: bytes, accelerated: bool, bad_data: int | None) -> object:
    v = Events(bad_data)
    try:
        read_xml(io.BytesIO(doc), v, name="doc.xml", accelerated=accelerated)
    except XmlError as err:
        return ("error", str(err), v.ev)
    return v.ev


@settings(max_examples=400, deadline=None)
@given(doc=document(), chunk=st.sampled_from([3, 17, 64, 1000, 1 << 20]),
       bad_data=st.one_of(st.none(), st.integers(0, 40)))
def test_scanner_reads_as_expat(doc, chunk, bad_data):
    data = doc.encode()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(xml, "READ_CHUNK", chunk)
        assert _read(data, True, bad_data) == _read(data, False, bad_data)


@st.composite
def restorable(draw) -> str:
    """Metadata XML a restore may take or refuse: devices of single and range
    mappings, in order or not, sometimes overlapping or beyond the data
    device, and a shared ``<def>`` some devices ``<ref>``."""
    # a few data blocks: shared by hundreds of mappings, their counts saturate
    nr_data = draw(st.one_of(st.integers(1, 4), st.integers(1, 3000)))
    parts = [f'<superblock uuid="" time="2" transaction="1" data_block_size="128" '
             f'nr_data_blocks="{nr_data}">\n']
    shared = draw(st.booleans())
    if shared:
        parts.append('  <def name="s">\n    <single_mapping origin_block="90000" '
                     'data_block="0" time="0"/>\n  </def>\n')
    for dev in draw(st.lists(st.integers(0, 30), max_size=4, unique=True)):
        parts.append(f'  <device dev_id="{dev}" mapped_blocks="0" transaction="0" '
                     f'creation_time="0" snap_time="0">\n')
        maps, v = [], draw(st.integers(0, 100))
        for _ in range(draw(st.integers(0, 300))):
            n = draw(st.sampled_from([1, 1, 1, 1, 2, 5, 300]))
            d = draw(st.integers(0, nr_data + 2))
            t = draw(st.integers(0, 3))
            if n == 1:
                maps.append(f'    <single_mapping origin_block="{v}" data_block="{d}" '
                            f'time="{t}"/>\n')
            else:
                maps.append(f'    <range_mapping origin_begin="{v}" data_begin="{d}" '
                            f'length="{n}" time="{t}"/>\n')
            v += n + draw(st.sampled_from([0, 0, 1, 7]))
        if draw(st.booleans()):
            maps = draw(st.permutations(maps))
        parts.extend(maps)
        if shared and draw(st.booleans()):
            parts.append('    <ref name="s"/>\n')
        parts.append("  </device>\n")
    parts.append("</superblock>\n")
    return "".join(parts)


def _restore(tmp_path, name: str, doc: bytes) -> object:
    out = tmp_path / name
    with open(out, "wb") as f:
        f.truncate(4 << 20)
    try:
        restore(io.BytesIO(doc), out)
    except (UsageError, OSError) as err:
        return ("error", str(err))
    return out.read_bytes()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(doc=restorable(), chunk=st.sampled_from([50, 1 << 20]))
def test_restore_same_bytes_both_ways(tmp_path, doc, chunk):
    # the visitors' map_batch against their map_raw, through a whole restore
    data = doc.encode()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(xml, "READ_CHUNK", chunk)
        fast = _restore(tmp_path, "fast", data)
        mp.setattr(xml, "lib", None)
        mp.setattr(restore_mod, "_seq_buf", None)
        slow = _restore(tmp_path, "slow", data)
    assert fast == slow


def _both_ways(tmp_path, make_source) -> tuple[object, object]:
    """(accelerated, pure-Python) outcome of restoring ``make_source()``."""
    def run(name: str) -> object:
        out = tmp_path / name
        with open(out, "wb") as f:
            f.truncate(4 << 20)
        try:
            restore(make_source(), out)
        except (UsageError, OSError) as err:
            return ("error", type(err).__name__, str(err))
        return out.read_bytes()
    fast = run("fast")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(xml, "lib", None)
        mp.setattr(restore_mod, "_seq_buf", None)
        slow = run("slow")
    return fast, slow


def test_restore_saturated_counts_both_ways(tmp_path):
    # 3 data blocks, each mapped by 400 devices' ranges and singles: counts
    # pass 254, where the accelerator hands the mapping back to Python
    parts = ['<superblock uuid="" time="1" transaction="2" data_block_size="128" '
             'nr_data_blocks="3">\n']
    for dev in range(400):
        parts.append(f'<device dev_id="{dev}" mapped_blocks="0" transaction="0" '
                     'creation_time="0" snap_time="0">\n'
                     '<range_mapping origin_begin="0" data_begin="0" length="2" time="0"/>\n'
                     '<single_mapping origin_block="5" data_block="2" time="1"/>\n</device>\n')
    doc = ("".join(parts) + "</superblock>\n").encode()
    fast, slow = _both_ways(tmp_path, lambda: io.BytesIO(doc))
    assert isinstance(fast, bytes)
    assert fast == slow
    check = subprocess.run([helpers.thin_tools_090()["thin_check"], str(tmp_path / "fast")],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr


class _Changing(io.BytesIO):
    """An input whose content changes after the first pass (a file being
    rewritten while it is restored)."""

    def __init__(self, first: bytes, later: bytes):
        super().__init__(first)
        self.later = later
        self.seeks = 0

    def seek(self, pos: int, whence: int = 0) -> int:
        self.seeks += 1
        if self.seeks == 4:          # _rereadable's two, then pass 1's, then pass 2's
            super().seek(0)
            self.truncate(0)
            self.write(self.later)
        return super().seek(pos, whence)


@pytest.mark.parametrize("extra", [1, 300, 600])
def test_restore_input_grows_between_passes_both_ways(tmp_path, extra):
    def doc(n: int) -> bytes:
        return ('<superblock uuid="" time="1" transaction="2" data_block_size="128" '
                'nr_data_blocks="2000">\n<device dev_id="1" mapped_blocks="0" transaction="0" '
                'creation_time="0" snap_time="0">\n'
                f'<range_mapping origin_begin="0" data_begin="0" length="{n}" time="0"/>\n'
                '</device>\n</superblock>\n').encode()
    fast, slow = _both_ways(tmp_path, lambda: _Changing(doc(500), doc(500 + extra)))
    assert fast == slow
    assert fast[0] == "error" and "changed between" in fast[2]


_SB = ('<superblock uuid="" time="1" transaction="2" data_block_size="128" '
       'nr_data_blocks="50">\n<device dev_id="1" mapped_blocks="0" transaction="0" '
       'creation_time="0" snap_time="0">\n')
_MAP = '<single_mapping origin_block="{}" data_block="2" time="0"/>'


@pytest.mark.parametrize("middle", [
    "<!--> " + _MAP.format(1) + " -->",            # "<!-->" does not end the comment
    "<?pi " + _MAP.format(1) + " ?>",              # nor a mapping a processing instruction
    '<ref name="' + _MAP.format(1) + '"/>',        # nor one inside an attribute value
    "<![CDATA[" + _MAP.format(1) + "]]>",
    _MAP.format(1) + "\t\n \n   " + _MAP.format(1),  # twice: the restore's error, its position
])
def test_scanner_tricky_markup(middle):
    doc = (_SB + middle + "\n" + _MAP.format(3) + "</device></superblock>\n").encode()
    assert _read(doc, True, None) == _read(doc, False, None)
    assert _read(doc, True, 2) == _read(doc, False, 2)
