"""dmthin's thin tools on a root Docker's own daemon made.

dockerd 20.10 (Debian 12's docker.io, devicemapper driver, loop-lvm) makes a
root in the guest: ``docker import`` of a busybox image with files of known
content, ``create``, ``cp`` into a container, ``commit``, ``rm``
(session fixture :func:`docker_made_root`).  Then:

- ``dmthin dump`` (XML and human) and ``dmthin ls`` print exactly what
  thin_dump and thin_ls 0.9.0 print for Docker's metadata file, and list the
  devices Docker's own records name (``docker inspect``'s DeviceId);
- ``dmthin check`` agrees with thin_check;
- none of these changes a byte, an inode or a timestamp of Docker's root
  (dockerd opening a copy of it again, after dmthin wrote into it, is
  test_docker_interop.py's).
"""
from __future__ import annotations

import re

import pytest

from client_env import (
    assert_same_state,
    dmthin,
    run,
    tree_state,
)
from client_fixtures import DockerRoot

pytestmark = [pytest.mark.real_dm, pytest.mark.clients]

LS_FIELDS = ("DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS,MAPPED_SECTORS,"
             "EXCLUSIVE_SECTORS,SHARED_SECTORS,MAPPED_BYTES,EXCLUSIVE_BYTES,SHARED_BYTES,"
             "MAPPED,EXCLUSIVE,SHARED,TRANSACTION,CREATE_TIME,SNAP_TIME")



def dump_dev_ids(xml: str) -> set[int]:
    """The dev_id of every <device> in thin_dump XML."""
    return {int(m) for m in re.findall(r'<device dev_id="(\d+)"', xml)}


def test_dump_and_ls_are_thin_tools_byte_for_byte(docker_made_root: DockerRoot,
                                                  thin_tools_090: dict[str, str]) -> None:
    root = docker_made_root
    meta = str(root.metadata)
    before = tree_state(root.path)

    theirs = run([thin_tools_090["thin_dump"], meta]).stdout
    assert dmthin("dump", meta).stdout == theirs
    human = run([thin_tools_090["thin_dump"], "--format", "human_readable", meta]).stdout
    assert dmthin("dump", "--format", "human_readable", meta).stdout == human
    for fields in (None, LS_FIELDS):
        opts = [] if fields is None else ["-o", fields]
        theirs_ls = run([thin_tools_090["thin_ls"], *opts, meta]).stdout
        assert dmthin("ls", *opts, meta).stdout == theirs_ls, fields

    # the devices in the metadata are the ones Docker's records name
    ids = dump_dev_ids(theirs)
    for ref, dev in root.devices.items():
        assert int(dev["DeviceId"]) in ids, (ref, dev, ids)
    for gone in root.removed:
        assert int(gone) not in ids, f"removed device {gone} still in the metadata"
    assert re.search(r'<superblock uuid="" time="\d+" transaction="[1-9]\d*" '
                     r'flags="0" version="2" data_block_size="128"', theirs), theirs[:300]

    assert_same_state(before, tree_state(root.path), "Docker's root")


def test_check_agrees_with_thin_check(docker_made_root: DockerRoot,
                                      thin_tools_090: dict[str, str]) -> None:
    root = docker_made_root
    before = tree_state(root.path)
    assert run([thin_tools_090["thin_check"], str(root.metadata)], check=False).returncode == 0
    p = dmthin("check", str(root.metadata), check=False)
    assert p.returncode == 0, p.stderr
    p = dmthin("check", "-q", str(root.metadata), check=False)
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")
    assert_same_state(before, tree_state(root.path), "Docker's root")
