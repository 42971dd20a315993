"""dump / ls / restore on metadata written by the engine (ThinMetadata), which
shares snapshot subtrees as the kernel does and holds real metadata
snapshots: compared with thin_dump / thin_ls 0.9.0, including -m."""
from __future__ import annotations

import io
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmthin.thin.dump import dump, open_block_manager
from dmthin.thin.ls import FIELDS, thin_ls
from dmthin.thin.metadata import ThinMetadata
from dmthin.thin.restore import restore
from dmthin.thin.xml import XmlWriter
from thin_xmlgen import THIN_CHECK, THIN_DUMP, THIN_LS, blank, run

ALL = ",".join(FIELDS)


#: one step of :func:`build_with_engine`: (a snapshot?, id gap, origin pick,
#: runs of inserts as (device pick, first vblock, count))
Step = tuple[bool, int, int, list[tuple[int, int, int]]]

#: 3 to 8 steps, each a commit
STEPS = st.lists(st.tuples(st.booleans(), st.integers(0, 2), st.integers(0, 7),
                           st.lists(st.tuples(st.integers(0, 7), st.integers(0, 1999),
                                              st.integers(1, 60)), max_size=10)),
                 min_size=3, max_size=8)


def seeded_steps(seed: int) -> list[Step]:
    """Fixed steps for the tests that need no search."""
    rnd = random.Random(seed)
    return [(rnd.random() < 0.4, rnd.randrange(3), rnd.randrange(8),
             [(rnd.randrange(8), rnd.randrange(2000), rnd.randint(1, 60))
              for _ in range(rnd.randrange(10))])
            for _ in range(rnd.randrange(3, 9))]


def build_with_engine(path, steps: list[Step], hold_snapshot: bool) -> None:
    """Thins, snapshots (shared subtrees) and writes after snapshots, one
    commit per step; a held metadata snapshot after the second."""
    md = ThinMetadata.format(path, data_block_sectors=128, nr_data_blocks=20000)
    try:
        ids: list[int] = []
        for step, (snap, gap, origin, inserts) in enumerate(steps):
            if ids and snap:
                new = max(ids) + 1 + gap
                md.create_snap(new, ids[origin % len(ids)])
            else:
                new = (max(ids) + 1 if ids else 0) + gap
                md.create_thin(new)
            ids.append(new)
            for dev, first, count in inserts:
                for v in range(first, first + count):
                    md.insert(ids[dev % len(ids)], v % 2000, md.alloc_data_block())
            md.commit()
            if hold_snapshot and step == 1:
                md.reserve_metadata_snap()
                md.commit()
    finally:
        md.close()


def dump_text(path, **kw) -> bytes:
    bm = open_block_manager(path)
    out = io.StringIO()
    try:
        dump(bm, XmlWriter(out), **kw)
        return out.getvalue().encode()
    finally:
        bm.close()


def ls_text(path, **kw) -> bytes:
    bm = open_block_manager(path)
    try:
        return thin_ls(bm, FIELDS, **kw).encode()
    finally:
        bm.close()


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
def test_engine_metadata_dump_ls_match_tools(tmp_path, steps):
    md = blank(tmp_path / "md")
    build_with_engine(md, steps, hold_snapshot=True)
    assert run([THIN_CHECK, md]).returncode == 0
    assert dump_text(md) == run([THIN_DUMP, md]).stdout
    assert dump_text(md, metadata_snap=True) == run([THIN_DUMP, "-m", md]).stdout
    assert ls_text(md) == run([THIN_LS, "-o", ALL, md]).stdout
    assert ls_text(md, metadata_snap=True) == run([THIN_LS, "-m", "-o", ALL, md]).stdout


def test_restore_then_engine_continues(tmp_path):
    """dmthin restore output opens in the engine, takes new work, and stays valid."""
    src = blank(tmp_path / "src")
    build_with_engine(src, seeded_steps(5), hold_snapshot=False)
    x = tmp_path / "d.xml"
    x.write_bytes(run([THIN_DUMP, src]).stdout)
    out = blank(tmp_path / "out")
    restore(x, out)
    md = ThinMetadata.open(out)
    try:
        ids = md.device_ids()
        md.create_snap(max(ids) + 1, ids[0])
        md.insert(max(ids) + 1, 5000, md.alloc_data_block())
        md.commit()
    finally:
        md.close()
    assert run([THIN_CHECK, out]).returncode == 0
    assert dump_text(out) == run([THIN_DUMP, out]).stdout


def test_ir_round_trip_without_xml(tmp_path):
    """dump's events drive the restorer directly (no XML): a compacted copy of
    engine metadata (shared subtrees expanded) that checks and dumps the same."""
    from dmthin.thin.restore import restore_events
    src = blank(tmp_path / "src")
    build_with_engine(src, seeded_steps(11), hold_snapshot=False)
    dst = blank(tmp_path / "dst")
    bm = open_block_manager(src)
    try:
        restore_events(lambda v: dump(bm, v), dst)
    finally:
        bm.close()
    assert run([THIN_CHECK, dst]).returncode == 0
    assert run([THIN_DUMP, dst]).stdout == run([THIN_DUMP, src]).stdout


@settings(max_examples=5, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
def test_restore_of_110_dump_with_shared_subtrees(tmp_path, pdata_tools_110, steps):
    """1.1.0 thin_dump of snapshot-sharing metadata writes <def>/<ref>; dmthin
    restore expands them: both thin_checks pass and 0.9.0 dumps agree."""
    src = blank(tmp_path / "src")
    build_with_engine(src, steps, hold_snapshot=False)
    x = tmp_path / "d110.xml"
    p = run([pdata_tools_110, "thin_dump", "-o", x, src])
    assert p.returncode == 0, p.stderr
    dst = blank(tmp_path / "dst")
    restore(x, dst)
    assert run([THIN_CHECK, dst]).returncode == 0
    r = run([pdata_tools_110, "thin_check", dst])
    assert r.returncode == 0, r.stderr
    assert run([THIN_DUMP, dst]).stdout == run([THIN_DUMP, src]).stdout


def test_restore_of_110_dump_with_defs(tmp_path, pdata_tools_110):
    """Deterministic: an origin of several leaves and two snapshots, so the
    1.1.0 dump certainly contains <def>/<ref>."""
    src = blank(tmp_path / "src")
    md = ThinMetadata.format(src, data_block_sectors=128, nr_data_blocks=20000)
    try:
        md.create_thin(1)
        for v in range(3000):
            md.insert(1, v * 2, md.alloc_data_block())
        md.commit()
        md.create_snap(2, 1)
        md.create_snap(3, 1)
        for v in range(0, 6000, 700):
            md.insert(2, v, md.alloc_data_block())
        md.commit()
    finally:
        md.close()
    x = tmp_path / "d110.xml"
    assert run([pdata_tools_110, "thin_dump", "-o", x, src]).returncode == 0
    assert b"<def" in x.read_bytes() and b"<ref" in x.read_bytes()
    dst = blank(tmp_path / "dst")
    restore(x, dst)
    assert run([THIN_CHECK, dst]).returncode == 0
    r = run([pdata_tools_110, "thin_check", dst])
    assert r.returncode == 0, r.stderr
    assert run([THIN_DUMP, dst]).stdout == run([THIN_DUMP, src]).stdout
    assert ls_text(dst) == run([THIN_LS, "-o", ALL, src]).stdout
