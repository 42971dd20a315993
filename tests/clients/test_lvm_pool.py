"""dmthin's thin tools on thin pools LVM2 made, and LVM on metadata dmthin wrote.

LVM2 2.03.16 (Debian 12, unpacked by tools/fetch-clients) makes a thin pool
on a loop PV with a thin LV, a snapshot of it, a snapshot of that snapshot
and one more, writes and discards in between (module fixture).  Then:

- inactive pool, its metadata LV activated read-only as LVM's component
  activation (``lvchange -ay VG/POOL_tmeta``): ``dmthin dump`` (XML, human)
  and ``dmthin ls`` print what thin_dump and thin_ls 0.9.0 print, ``dmthin
  check`` passes as thin_check does, the devices are the thin ids LVM
  records, and the metadata's bytes do not change;
- live pool: the same through a held metadata snapshot (``-m``);
- ``dmthin pool status`` reads the inactive pool (components adopted from a
  directory of its own) and the live one (``/dev/mapper/VG-POOL-tpool``):
  LVM's transaction id, nothing written, no device added or changed;
- ``dmthin restore`` of that dump into a new LV, swapped into the pool with
  ``lvconvert --swapmetadata``: LVM checks and activates it and every LV
  reads back the same bytes.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from client_env import Scratch, content_digest, dmthin, run
from client_lvm import Lvm
from lvm_scenario import PoolScenario, build_pool

pytestmark = [pytest.mark.real_dm, pytest.mark.clients]

LS_FIELDS = ("DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS,MAPPED_SECTORS,"
             "EXCLUSIVE_SECTORS,SHARED_SECTORS,MAPPED_BYTES,EXCLUSIVE_BYTES,SHARED_BYTES,"
             "MAPPED,EXCLUSIVE,SHARED,TRANSACTION,CREATE_TIME,SNAP_TIME")



@pytest.fixture(scope="module")
def scenario(clients_tree: Path, clients_scratch: Scratch) -> Iterator[PoolScenario]:
    lvm = Lvm(clients_tree, clients_scratch.mkdir("lvm-pool-module"))
    try:
        sc = build_pool(lvm, "dmtc_pool")
        sc.deactivate()
        yield sc
    finally:
        lvm.close()


def thin_ids(sc: PoolScenario) -> dict[str, int]:
    """LV name -> thin device id, as LVM records it."""
    return {row[0]: int(row[1]) for row in sc.lvm.lvs(sc.vg, "lv_name,thin_id")
            if row[0] in sc.lvs}


def compare_tools(meta: str, thin_tools: dict[str, str], snap: list[str]) -> str:
    """dump (XML, human), ls (two field sets) and check of dmthin against
    thin-provisioning-tools 0.9.0 on *meta*; *snap* is ``[]`` or ``["-m"]``.
    Returns thin_dump's XML."""
    xml = run([thin_tools["thin_dump"], *snap, meta]).stdout
    assert dmthin("dump", *snap, meta).stdout == xml
    human = run([thin_tools["thin_dump"], *snap, "--format", "human_readable", meta]).stdout
    assert dmthin("dump", *snap, "--format", "human_readable", meta).stdout == human
    for opts in ([], ["-o", LS_FIELDS]):
        theirs = run([thin_tools["thin_ls"], *snap, *opts, meta]).stdout
        assert dmthin("ls", *snap, *opts, meta).stdout == theirs, opts
    return xml


def test_inactive_metadata_reads_as_the_thin_tools_read_it(
        scenario: PoolScenario, thin_tools_090: dict[str, str]) -> None:
    sc = scenario
    sc.lvm("lvchange", "-ay", "-y", f"{sc.vg}/{sc.tmeta}")  # read-only component
    try:
        meta = sc.path(sc.tmeta)
        before = content_digest(meta)
        xml = compare_tools(meta, thin_tools_090, [])
        assert run([thin_tools_090["thin_check"], meta], check=False).returncode == 0
        p = dmthin("check", meta, check=False)
        assert p.returncode == 0, p.stderr
        ids = {int(i) for i in re.findall(r'<device dev_id="(\d+)"', xml)}
        assert ids == set(thin_ids(sc).values())
        # snapshots of snapshots share blocks; discards left holes
        shared = run([thin_tools_090["thin_ls"], "--no-headers", "-o", "DEV,SHARED_BLOCKS",
                      meta]).stdout.split()
        assert any(int(n) > 0 for n in shared[1::2]), shared
        assert content_digest(meta) == before, "reading changed LVM's metadata"
    finally:
        sc.lvm("lvchange", "-an", f"{sc.vg}/{sc.tmeta}")


def test_live_pool_through_a_metadata_snapshot(
        scenario: PoolScenario, thin_tools_090: dict[str, str]) -> None:
    sc = scenario
    sc.activate()
    try:
        run(["dmsetup", "message", sc.tpool(), "0", "reserve_metadata_snap"])
        try:
            meta = sc.path(sc.tmeta)
            xml = compare_tools(meta, thin_tools_090, ["-m"])
            ids = {int(i) for i in re.findall(r'<device dev_id="(\d+)"', xml)}
            assert ids == set(thin_ids(sc).values())
        finally:
            run(["dmsetup", "message", sc.tpool(), "0", "release_metadata_snap"])
        assert sc.current_digests() == sc.digests
    finally:
        sc.deactivate()


STATUS = re.compile(r"(?:^|\s)(\d+) \d+/\d+ \d+/\d+ ")  # TRANSACTION META DATA ...


def lvm_transaction(sc: PoolScenario) -> int:
    """The pool's transaction id as LVM records it."""
    return int(sc.lvm("lvs", "--noheadings", "-o", "transaction_id",
                      f"{sc.vg}/{sc.pool}").stdout.strip())


def test_pool_status_of_lvms_inactive_pool_is_read_only(scenario: PoolScenario,
                                                        clients_scratch: Scratch) -> None:
    # the components activated read-only, adopted from a directory of its
    # own and read by the simulator
    sc, lvm = scenario, scenario.lvm
    transaction = lvm_transaction(sc)
    components = (f"{sc.vg}/{sc.tmeta}", f"{sc.vg}/{sc.pool}_tdata")
    for lv in components:  # one per command: LVM refuses hidden LVs in a list
        lvm("lvchange", "-ay", "-y", lv)
    try:
        meta, data = sc.path(sc.tmeta), sc.path(f"{sc.pool}_tdata")
        before = content_digest(meta)
        pooldir = clients_scratch.mkdir("lvm-adopted") / "pool"
        dmthin("pool", "adopt", "--data", data, "--metadata", meta, str(pooldir))
        out = dmthin("pool", "status", str(pooldir)).stdout
        m = STATUS.search(out)
        assert m and int(m.group(1)) == transaction, out
        assert content_digest(meta) == before, "reading changed LVM's metadata"
    finally:
        for lv in components:
            lvm("lvchange", "-an", lv)


def test_pool_status_of_lvms_live_pool_is_read_only(scenario: PoolScenario) -> None:
    # LVM's active pool, attached to by its device-mapper name
    sc = scenario
    transaction = lvm_transaction(sc)
    sc.activate()
    try:
        devices = run(["dmsetup", "ls"]).stdout
        table = run(["dmsetup", "table", sc.tpool()]).stdout
        out = dmthin("pool", "status", "/dev/mapper/" + sc.tpool()).stdout
        m = STATUS.search(out)
        assert m and int(m.group(1)) == transaction, out
        assert run(["dmsetup", "ls"]).stdout == devices
        assert run(["dmsetup", "table", sc.tpool()]).stdout == table
        assert sc.current_digests() == sc.digests
    finally:
        sc.deactivate()


def test_restored_metadata_swapped_into_the_pool(
        scenario: PoolScenario, thin_tools_090: dict[str, str], tmp_path: Path) -> None:
    # last in this module: the pool runs on restored metadata afterwards
    sc, lvm = scenario, scenario.lvm
    lvm("lvchange", "-ay", "-y", f"{sc.vg}/{sc.tmeta}")
    try:
        xml = dmthin("dump", sc.path(sc.tmeta)).stdout
        size = int(lvm("lvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "lv_size",
                       f"{sc.vg}/{sc.tmeta}").stdout.strip())
    finally:
        lvm("lvchange", "-an", f"{sc.vg}/{sc.tmeta}")
    dump = tmp_path / "pool.xml"
    dump.write_text(xml)
    lvm("lvcreate", "-q", "-L", f"{size}b", "-n", "restored", sc.vg)
    dmthin("restore", "-q", "-i", str(dump), "-o", sc.path("restored"))
    assert run([thin_tools_090["thin_check"], sc.path("restored")], check=False).returncode == 0
    assert run([thin_tools_090["thin_dump"], sc.path("restored")]).stdout == xml
    lvm("lvchange", "-an", f"{sc.vg}/restored")
    lvm("lvconvert", "-y", "--swapmetadata", "--poolmetadata", f"{sc.vg}/restored",
        f"{sc.vg}/{sc.pool}")
    sc.activate()  # LVM runs thin_check (0.9.0) on the restored metadata first
    try:
        status = sc.pool_status()
        assert status[2] == "thin-pool" and "rw" in status, status
        assert sc.current_digests() == sc.digests
    finally:
        sc.deactivate()
