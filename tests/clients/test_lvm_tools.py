"""dmthin as LVM's thin tools (``thin_check_executable``,
``thin_repair_executable``, ``thin_dump_executable``), next to Debian's
thin-provisioning-tools 0.9.0 doing the same job as the reference.

- A pool whose metadata has the needs_check flag set (written into the
  superblock of the inactive pool's metadata LV) comes up
  read-only with ``needs_check`` when the checker leaves the flag; with
  ``thin_check_options = ["-q", "--clear-needs-check-flag"]`` the checker
  clears it and the pool comes up read-write, every LV's bytes intact.
- ``lvconvert --repair`` runs ``THIN_REPAIR '' -i META -o SPARE`` and then
  ``THIN_DUMP SPARE``: on metadata whose space-map root is destroyed (LVM
  then refuses to activate the pool), the repaired pool activates (checked
  by thin_check 0.9.0), holds the same devices and mappings, and every LV
  reads back the same bytes.

The dmthin variants use the console scripts installed with dmthin next to
this interpreter (``dmthin-thin_check`` ...).
"""
from __future__ import annotations

import os
import struct
import sys

import pytest

from client_env import ClientError, run
from client_lvm import THIN_TOOLS, Lvm
from lvm_scenario import (
    PoolScenario,
    build_pool,
    read_superblock,
    set_needs_check,
    superblock_checksum,
    superblock_flags,
    write_at,
)

pytestmark = [pytest.mark.real_dm, pytest.mark.clients]

#: the console scripts LVM can name (installed with dmthin)
DMTHIN_TOOLS = {"thin_check": "dmthin-thin_check", "thin_dump": "dmthin-thin_dump",
                "thin_repair": "dmthin-thin_repair"}


@pytest.fixture(params=["thin-provisioning-tools", "dmthin"])
def tools(request: pytest.FixtureRequest) -> dict[str, str]:
    """{tool: absolute path} of the implementation under test."""
    if request.param == "thin-provisioning-tools":
        return dict(THIN_TOOLS)
    bindir = os.path.dirname(sys.executable)
    paths = {k: os.path.join(bindir, v) for k, v in DMTHIN_TOOLS.items()}
    missing = [p for p in paths.values() if not os.access(p, os.X_OK)]
    assert not missing, f"dmthin's console scripts are not installed: {missing}"
    return paths


def edit_metadata(sc: PoolScenario, edit) -> None:  # type: ignore[no-untyped-def]
    """Let *edit* change the (inactive) pool's metadata: called with the path
    of a writable device-mapper device with the table LVM's read-only
    component activation of ``POOL_tmeta`` has (the same extents of the PV)."""
    sc.lvm("lvchange", "-ay", "-y", f"{sc.vg}/{sc.tmeta}")
    try:
        table = run(["dmsetup", "table", sc.lvm.dm_name(sc.vg, sc.tmeta)]).stdout.strip()
    finally:
        sc.lvm("lvchange", "-an", f"{sc.vg}/{sc.tmeta}")
    name = f"{sc.vg}-edit-tmeta"
    run(["dmsetup", "create", name, "--table", table])
    try:
        edit(f"/dev/mapper/{name}")
    finally:
        run(["dmsetup", "remove", name])


def destroy_metadata_space_map_root(dev: str) -> None:
    """Zero the superblock's metadata space-map root (bytes 192..320) and
    re-checksum: the trees are intact, the metadata space map is lost."""
    block = bytearray(read_superblock(dev))
    block[192:320] = bytes(128)
    struct.pack_into("<I", block, 0, superblock_checksum(bytes(block)))
    write_at(dev, 0, bytes(block))


def test_thin_check_clears_needs_check(lvm: Lvm, tools: dict[str, str]) -> None:
    sc = build_pool(lvm, "dmtc_nc", snapshots=1)
    sc.deactivate()
    edit_metadata(sc, set_needs_check)

    # the reference checker without --clear-needs-check-flag: the kernel
    # loads the pool read-only, flag still set
    lvm.configure(thin_check_options=["-q"])
    sc.activate()
    try:
        status = sc.pool_status()
        assert "needs_check" in status and "ro" in status, status
    finally:
        sc.deactivate()

    lvm.configure(thin_tools={"thin_check": tools["thin_check"]},
                  thin_check_options=["-q", "--clear-needs-check-flag"])
    sc.activate()
    try:
        status = sc.pool_status()
        assert "needs_check" not in status and "rw" in status, status
        assert superblock_flags(sc.path(sc.tmeta)) == 0
        assert sc.current_digests() == sc.digests
    finally:
        sc.deactivate()


def test_lvconvert_repair(lvm: Lvm, tools: dict[str, str]) -> None:
    sc = build_pool(lvm, "dmtc_rp", snapshots=2)
    sc.deactivate()
    edit_metadata(sc, destroy_metadata_space_map_root)
    with pytest.raises(ClientError, match=r"thin_check|Check of pool"):
        sc.activate()  # thin_check 0.9.0 refuses the metadata
    sc.deactivate()
    lvm.configure(thin_tools={"thin_repair": tools["thin_repair"],
                              "thin_dump": tools["thin_dump"]})
    lvm("lvconvert", "-y", "--repair", f"{sc.vg}/{sc.pool}")
    names = [row[0] for row in lvm.lvs(sc.vg, "lv_name")]
    assert f"{sc.pool}_meta0" in names, names  # LVM keeps the old metadata
    lvm.configure(thin_tools={})  # activation checks with thin_check 0.9.0
    sc.activate()
    try:
        status = sc.pool_status()
        assert "rw" in status and "needs_check" not in status, status
        assert sc.current_digests() == sc.digests
        # the repaired metadata holds what the old did, mapping for mapping
        lvm("lvchange", "-ay", f"{sc.vg}/{sc.pool}_meta0")
        old = run([THIN_TOOLS["thin_dump"], sc.path(f"{sc.pool}_meta0")]).stdout
        run(["dmsetup", "message", sc.tpool(), "0", "reserve_metadata_snap"])
        try:
            repaired = run([THIN_TOOLS["thin_dump"], "-m", sc.path(sc.tmeta)]).stdout
        finally:
            run(["dmsetup", "message", sc.tpool(), "0", "release_metadata_snap"])
        assert repaired.count("<device ") == 3
        # devices and mappings; the superblock lines differ (thin-provisioning-
        # tools 0.9.0 shows nr_data_blocks="0" for the repaired pool's held
        # snapshot, 2048 for the old metadata)
        assert repaired.splitlines()[1:] == old.splitlines()[1:]
    finally:
        sc.deactivate()
