"""The guest the real clients run in: their tree (tools/fetch-clients) and
modprobe over the guest kernel's modules (tools/vmrun sets
MODPROBE_OPTIONS), which LVM needs when it loads dm-snapshot itself."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from client_env import DOCKER, DOCKERD, LVM, require_guest, run

pytestmark = [pytest.mark.real_dm, pytest.mark.clients]


def test_modprobe_uses_the_guest_kernels_modules() -> None:
    require_guest()
    options = os.environ.get("MODPROBE_OPTIONS", "")
    assert options.startswith("-d "), options
    release = os.uname().release
    out = run(["modprobe", "--show-depends", "dm-snapshot"]).stdout
    assert f"/lib/modules/{release}/" in out and "dm-snapshot.ko" in out, out
    assert out.split()[1].startswith(options.split(None, 1)[1]), out


def test_clients_tree_has_the_versions_under_test(clients_tree: Path) -> None:
    assert run([clients_tree / DOCKERD, "--version"]).stdout.startswith("Docker version 20.10.")
    assert run([clients_tree / DOCKER, "--version"]).stdout.startswith("Docker version 20.10.")
    lvm = run([clients_tree / LVM, "version"],
              env=dict(os.environ, LVM_SYSTEM_DIR=str(clients_tree / "etc/lvm"))).stdout
    assert "LVM version:     2.03.16" in lvm, lvm
