"""``dmthin dump -f xml1`` is thin_dump 1.1.0's output byte for byte (shared
leaf runs as ``<def>``/``<ref>``), on random engine-written pools, with the
metadata snapshot, selected devices and without mappings; and it restores
(by dmthin and by thin_restore 1.1.0) to metadata holding the same mappings."""
from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from dmthin.thin.dump_shared import Gatherer
from toolgen import blank, build_pool, dmthin, mappings, pool_ops, run


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(ops=pool_ops())
def test_same_as_thin_dump_110(tmp_path, pdata_tools_110, thin_tools_090, ops):
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))
    meta = build_pool(tmp_path / "meta", ops)
    for extra in ([], ["--skip-mappings"], ["-m"], ["--dev-id", "0"]):
        want = run([pdata_tools_110, "thin_dump", *extra, meta])
        got = dmthin("dump", "-f", "xml1", *extra, meta)
        assert got.returncode == (0 if want.returncode == 0 else 1), (extra, got.stderr)
        if want.returncode == 0:
            assert got.stdout == want.stdout, extra
    xml = tmp_path / "x.xml"
    xml.write_text(dmthin("dump", "-f", "xml1", meta).stdout)
    for restore in (["dmthin"], [pdata_tools_110, "thin_restore"]):
        out = blank(tmp_path / "out", 16 << 20)
        if restore == ["dmthin"]:
            assert dmthin("restore", "-i", xml, "-o", out).returncode == 0
        else:
            assert run([*restore, "-i", xml, "-o", out]).returncode == 0
        assert mappings(out) == mappings(meta)


def test_gatherer_matches_1x_cases():
    """The cases of thin-provisioning-tools' own runs.rs test."""
    cases = [
        ([], []),
        ([[1]], [([1], False)]),
        ([[1, 2, 3]], [([1, 2, 3], False)]),
        ([[1, 2], [1, 2, 3]], [([1, 2], True), ([3], False)]),
        ([[2, 3], [1, 2, 3]], [([1], False), ([2, 3], True)]),
        ([[1, 2, 3, 4], [2, 3, 4, 5]], [([1], False), ([2, 3, 4], True), ([5], False)]),
        ([[2, 3, 4, 5], [1, 2, 3, 4]], [([1], False), ([2, 3, 4], True), ([5], False)]),
        ([[1, 2, 3, 4], [2, 3, 4, 5, 6], [3, 4], [5, 6]],
         [([1], False), ([2], True), ([3, 4], True), ([5, 6], True)]),
        ([[2, 3, 4, 5], [2, 3, 4, 6], [1, 3, 4, 5]],
         [([1], False), ([2], True), ([3, 4], True), ([5], True), ([6], False)]),
        ([[1, 2], [2, 1]], [([1], True), ([2], True)]),
    ]
    for seqs, want in cases:
        g = Gatherer()
        for seq in seqs:
            g.new_seq()
            for b in seq:
                g.next(b)
        assert g.gather() == want, seqs
