"""``dmthin pool`` on the pool of a root Docker's daemon made.

On a copy of the root dockerd made (session fixture): ``dmthin pool
status`` refuses Docker's ``devicemapper/devicemapper/`` (no pool.json:
adopt it) without writing; ``dmthin pool adopt`` from a directory of its own
(``--data``/``--metadata`` naming Docker's files) and ``dmthin pool status``
through the simulator and the kernel read Docker's transaction id and change
no byte, inode or timestamp of Docker's root, and leave no device behind.
"""
from __future__ import annotations

import re

import pytest

from client_env import Scratch, assert_same_state, dmthin, run, tree_state
from client_fixtures import DockerRoot, copy_root

pytestmark = [pytest.mark.real_dm, pytest.mark.clients]


def docker_transaction(root: DockerRoot) -> int:
    """The pool's transaction id, from thin metadata's superblock
    (little-endian u64 at byte 48)."""
    with open(root.metadata, "rb") as f:
        return int.from_bytes(f.read(56)[48:56], "little")


@pytest.mark.parametrize("backend", ["sim", "kernel"])
def test_pool_status_of_dockers_pool_is_read_only(
        docker_made_root: DockerRoot, clients_scratch: Scratch, backend: str) -> None:
    work = clients_scratch.mkdir(f"pool-status-{backend}")
    root = copy_root(docker_made_root, work / "root")
    before = tree_state(root.path)
    # Docker's directory is no dmthin pool directory: refused, nothing written
    p = dmthin("pool", "status", str(root.pool_dir), check=False)
    assert p.returncode == 1 and "adopt" in p.stderr, p
    assert_same_state(before, tree_state(root.path), "Docker's root")

    # adopted from a directory of its own, read through both backends
    pooldir = work / "adopted"
    dmthin("pool", "adopt", "--backend", backend, "--data", str(root.pool_dir / "data"),
           "--metadata", str(root.metadata), str(pooldir))
    dm_before = run(["dmsetup", "ls"]).stdout
    try:
        out = dmthin("pool", "status", str(pooldir)).stdout
    finally:
        if backend == "kernel":
            dmthin("pool", "deactivate", str(pooldir), check=False)
    assert run(["dmsetup", "ls"]).stdout == dm_before
    assert_same_state(before, tree_state(root.path), "Docker's root")
    # the kernel's status text: TRANSACTION USED/TOTAL(meta) USED/TOTAL(data) ...
    m = re.search(r"(?:^|\s)(\d+) \d+/\d+ \d+/\d+ ", out)
    assert m and int(m.group(1)) == docker_transaction(root), out
