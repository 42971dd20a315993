"""The README's two client flows run as written, on the real clients' work.

The ``dmthin`` and ``lvchange`` lines of README.md's shell blocks (Docker's
root; LVM's pools) run with their placeholders replaced: ``$ROOT`` by a copy
of the root dockerd made, ``CONTAINER_OR_LAYER``/``LAYER`` by its devices,
``VG``/``POOL`` by an LVM pool with snapshots, ``/var/lib/dmthin/...`` by
scratch directories.  Each must exit 0.  Not run here: the ``dockerd`` line
and the ``dm.thinpooldev`` inspection, which test_docker_interop.py's
thinpooldev test runs with a real dockerd.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from client_env import Scratch, dmthin, run
from client_fixtures import DockerRoot, copy_root
from client_lvm import Lvm
from lvm_scenario import build_pool

pytestmark = [pytest.mark.real_dm, pytest.mark.clients]

README = Path(__file__).resolve().parents[2] / "README.md"


def shell_lines(section: str) -> list[str]:
    """The command lines (comments cut) of the ``sh`` blocks under the
    README heading *section*, up to the next heading."""
    text = README.read_text()
    start = text.index(section)
    nxt = re.compile(r"\n#{2,} ").search(text, start + len(section))
    body = text[start:nxt.start() if nxt else None]
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", body, re.S):
        for line in block.splitlines():
            cmd = re.sub(r"\s+#.*$", "", line).strip()
            if cmd and not cmd.startswith("#"):
                lines.append(cmd)
    return lines


def substitute(line: str, subst: dict[str, str]) -> list[str]:
    for key in sorted(subst, key=len, reverse=True):
        line = line.replace(key, subst[key])
    return shlex.split(line)


def test_docker_root_flow(docker_made_root: DockerRoot, clients_scratch: Scratch) -> None:
    work = clients_scratch.mkdir("readme-docker")
    root = copy_root(docker_made_root, work / "root")
    cid = root.containers["made-c2"]
    layer = root.devices["dmthin-test:committed"]["DeviceName"].split("-", 3)[3]
    subst = {"$ROOT": str(root.home), "CONTAINER_OR_LAYER": cid[:12], "LAYER": layer,
             "/var/lib/dmthin": str(work), "layer.tar": str(work / "layer.tar"),
             "--data-size 20G": "--data-size 1G"}
    ran = []
    try:
        for line in shell_lines("### Docker's devicemapper roots"):
            if not line.startswith("dmthin ") or "dm.thinpooldev=" in line:
                continue
            argv = substitute(line, subst)
            p = dmthin(*argv[1:], check=False)
            assert p.returncode == 0, (line, p.stdout, p.stderr)
            ran.append(argv[1:3])
    finally:
        dmthin("pool", "deactivate", str(work / "pool"), check=False)
    assert ["pool", "activate"] in ran and ["graph", "export"] in ran, ran
    assert (work / "layer.tar").stat().st_size > 0


def test_lvm_flow(lvm: Lvm, clients_scratch: Scratch) -> None:
    vg = build_pool(lvm, "dmtc_rd", snapshots=1).vg
    lvm("vgchange", "-an", vg)
    work = clients_scratch.mkdir("readme-lvm")
    subst = {"VG": vg, "POOL": "pool", "/var/lib/dmthin": str(work)}
    ran = []
    try:
        for line in shell_lines("The metadata tools are also installed"):
            argv = substitute(line, subst)
            if argv[0] == "lvchange":
                lvm(*argv)
            elif argv[0] == "dmthin":
                if "-tpool" in line:                # the live pool: activate it first
                    for lv in (f"{vg}/pool_tmeta", f"{vg}/pool_tdata"):
                        lvm("lvchange", "-an", lv)
                    lvm("vgchange", "-ay", vg)
                p = dmthin(*argv[1:], check=False)
                assert p.returncode == 0, (line, p.stdout, p.stderr)
            ran.append(argv[:2])
    finally:
        lvm("vgchange", "-an", vg)
    assert ["dmthin", "dump"] in ran and ["lvchange", "-ay"] in ran, ran
    assert run(["dmsetup", "ls"]).stdout.count(vg) == 0
