"""Crash states, not just kills: every state a power failure could leave.

A random workload runs on a simulated pool whose metadata and data files
share a write log (:mod:`dmthin.pdata.writelog`, as dm-log-writes records
a device); the replayer then materialises the states the flush order allows
-- durable writes, any subset of the unflushed ones (reordered), torn
512-byte sectors inside 4 KiB blocks -- and each is checked as
:mod:`crashlib` says: it reopens at a committed transaction, no unflushed
write hit a block that transaction uses, both thin_checks pass, and every
sector reads back what was committed or written since.

The suite samples every third cut of two seeds' logs (1500 states, two or
three minutes); tools/bench/crash_states.py runs every cut of more seeds.
"""
from __future__ import annotations

import os
import random

import pytest

from crashlib import Model, check_states, describe, run_workload
from dmthin.pdata import block as blockmod
from dmthin.pdata import writelog
from dmthin.pdata.writelog import Replayer, WriteLog

SEEDS = [1, 2]
STATES_PER_SEED = 750


@pytest.fixture(scope="module")
def tools(thin_tools_090, pdata_tools_110) -> list[list[str]]:
    return [[thin_tools_090["thin_check"]], [pdata_tools_110, "thin_check"]]


@pytest.mark.parametrize("seed", SEEDS)
def test_every_crash_state_reopens_checks_and_reads_back(tmp_path, tools, seed):
    rec = run_workload(tmp_path / "pool", seed, 100)
    offset = seed % 3
    v = check_states(rec, tmp_path / "scratch", tools, seed, random_per_cut=3,
                     cut_filter=lambda c: c % 3 == offset, limit=STATES_PER_SEED)
    print(describe(v, rec.log))
    assert not v.failures, "\n".join(v.failures[:20])
    assert v.states >= STATES_PER_SEED * 4 // 5
    assert v.torn > 50 and v.reordered > 50 and len(v.commits_seen) >= 5 and v.tool_runs >= 10


def test_the_checks_catch_a_superblock_written_before_its_trees(tmp_path, tools, monkeypatch):
    """The harness itself: without the sync between a commit's blocks and
    its superblock (the kernel's dm_tm_pre_commit), states appear whose
    superblock points at trees that never reached the disk."""
    def flush_without_sync(self: blockmod.BlockManager) -> None:
        for b in sorted(b for b, e in self._cache.items() if e.dirty):
            self._write_out(b, self._cache[b])
    monkeypatch.setattr(blockmod.BlockManager, "flush", flush_without_sync)
    rec = run_workload(tmp_path / "pool", 3, 80)
    monkeypatch.undo()
    v = check_states(rec, tmp_path / "scratch", tools, 3, limit=400)
    assert v.failures


def test_replayer_follows_the_flush_order():
    log = WriteLog()
    log.write("a", 0, b"1" * 4096)
    log.write("b", 0, b"x" * 512)
    log.flush("a")
    log.write("a", 4096, b"2" * 4096)
    log.write("a", 0, b"3" * 1024)
    base = {"a": bytes(8192), "b": bytes(512)}
    states = list(Replayer(log, base).states(random.Random(1), random_per_cut=20))
    end = [s for s in states if s.cut == len(log.entries)]
    for s in end:
        a, b = s.images["a"], s.images["b"]
        # the write flushed before is there (or the later write over it)
        for sec in range(8):
            assert a[sec * 512:(sec + 1) * 512] in (b"1" * 512, b"3" * 512)
        # the unflushed ones: whole sectors of them or nothing
        for sec in range(8, 16):
            assert a[sec * 512:(sec + 1) * 512] in (bytes(512), b"2" * 512)
        assert b in (bytes(512), b"x" * 512)       # b was never flushed
    assert {"durable", "all", "torn last", "random"} <= {s.label for s in states}
    assert any(len(set(s.images["a"][4096:])) == 2 for s in end)   # torn: 0s and 2s
    assert any(s.images["a"][:512] == b"3" * 512 and s.images["a"][4096:4608] == bytes(512)
               for s in end)                                       # reordered


def test_the_log_is_off_unless_attached(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(bytes(8192))
    bm = blockmod.BlockManager(path, writable=True)
    assert bm._log is None
    bm.close()
    log = WriteLog()
    writelog.attach(path, log, "m")
    try:
        bm = blockmod.BlockManager(path, writable=True)
        buf = bm.write_lock_zero(1, blockmod.BTREE_NODE) if hasattr(blockmod, "BTREE_NODE") \
            else None
        del buf
        bm.flush()
        bm.close()
    finally:
        writelog.detach(path)
    assert [e.kind for e in log.entries][-1] == "flush"
    assert writelog.log_for(path) is None and os.path.exists(path)


def test_model_durable_values():
    m = Model()
    m.create(1)
    m.write(10, 1, 0, b"a" * 512)
    m.write(20, 1, 0, b"b" * 512)
    assert m.acceptable(1, 0, 15, 30) == {hash(b"a" * 512), hash(b"b" * 512)}
    assert m.acceptable(1, 0, 25, 30) == {hash(b"b" * 512)}
    assert m.acceptable(1, 0, 5, 15) == {hash(bytes(512)), hash(b"a" * 512)}
