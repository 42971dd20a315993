"""``dmthin graph ls|status|cat|export`` on a root as dockerd leaves it
(simulator): output, Docker's layer store ids, one-line errors, and not a
byte of the root changed by any of them."""
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from graph_helpers import make_docker_root, tree_digest

REPO = Path(__file__).resolve().parents[2]


def dmthin(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "dmthin", *map(str, args)], env=env,
                          capture_output=True, timeout=300, check=False)


def one_line_error(p, *needles):
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert b"Traceback" not in p.stderr
    lines = p.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r, layers = make_docker_root(tmp_path_factory.mktemp("cli"), "sim")
    chain1, chain2, ctr = "1a" * 32, "2b" * 32, "3c" * 32
    db = r.parent / "image" / "devicemapper" / "layerdb"
    for chain, cache, parent in ((chain1, "layer1", ""), (chain2, "layer2", chain1)):
        (db / "sha256" / chain).mkdir(parents=True)
        (db / "sha256" / chain / "cache-id").write_text(cache)
        if parent:
            (db / "sha256" / chain / "parent").write_text("sha256:" + parent)
    (db / "mounts" / ctr).mkdir(parents=True)
    for name, text in (("mount-id", "ctr"), ("init-id", "ctr-init"),
                       ("parent", "sha256:" + chain2)):
        (db / "mounts" / ctr / name).write_text(text)
    return r, layers, {"chain2": chain2, "ctr": ctr}


@pytest.fixture
def unchanged(root):
    r = root[0]
    before = tree_digest(r.parent)
    yield
    assert tree_digest(r.parent) == before


def test_ls(root, unchanged):
    r, _, ids = root
    p = dmthin("graph", "ls", r)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.decode().splitlines()
    assert lines[0].split() == ["HASH", "ID", "SIZE", "TX", "FLAGS"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    assert rows["base"][1:5] == ["1", str(16 << 20), "1", "initialized"]
    assert rows["layer2"][4] == "layer=sha256:" + ids["chain2"]
    assert rows["ctr"][4] == "container=" + ids["ctr"]
    rows = json.loads(dmthin("graph", "ls", r, "--json").stdout)
    assert [(x["hash"], x["device_id"], x["in_pool"]) for x in rows] == [
        ("base", 1, True), ("layer1", 2, True), ("layer2", 3, True), ("ctr-init", 4, True),
        ("ctr", 5, True)]
    assert rows[2]["parent"] == "layer1" and rows[4]["parent"] == "ctr-init"


@pytest.mark.parametrize("level", ["home", "data-root"])
def test_status(root, unchanged, level):
    p = dmthin("graph", "status", root[0] if level == "home" else root[0].parent)
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert out.startswith("Storage Driver: devicemapper\n Pool Name: docker-")
    assert " Base Device Size: 16.78MB\n" in out and " Backing Filesystem: ext4\n" in out


@pytest.mark.parametrize("ident", ["ctr", "3c3c3c3c3c3c"])
def test_cat_by_hash_or_container_id(root, unchanged, ident):
    r, layers, _ = root
    for path, data in (("/etc/hostname", layers["ctr"]["etc/hostname"]),
                       ("etc/motd", layers["layer2"]["etc/motd"]),
                       ("/bin/../bin/tool", layers["layer1"]["bin/tool"])):
        p = dmthin("graph", "cat", r, ident, path)
        assert p.returncode == 0, p.stderr
        assert p.stdout == data


def test_cat_by_chain_id(root, unchanged):
    r, layers, ids = root
    p = dmthin("graph", "cat", r, "sha256:" + ids["chain2"], "/etc/motd")
    assert (p.returncode, p.stdout) == (0, layers["layer2"]["etc/motd"])
    p = dmthin("graph", "cat", r, "sha256:" + ids["chain2"], "/etc/hostname")
    one_line_error(p, "/etc/hostname")                 # the container's file is not in the layer


def test_export_diff_against_the_layer_store_parent(root, unchanged, tmp_path):
    r, layers, ids = root
    out = tmp_path / "layer2.tar"
    p = dmthin("graph", "export", r, ids["chain2"][:16], "-o", out)
    assert p.returncode == 0, p.stderr
    with tarfile.open(out) as t:
        assert t.getnames() == ["etc", "etc/motd"]
        assert t.extractfile("etc/motd").read() == layers["layer2"]["etc/motd"]
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    p = dmthin("graph", "export", r, "layer2", "--parent", "base", "-o", "-")
    assert p.returncode == 0, p.stderr
    with tarfile.open(fileobj=io.BytesIO(p.stdout)) as t:
        names = set(t.getnames())
    assert {"etc/motd", "etc/os-release", "bin/tool"} <= names


def test_errors_are_one_line(root, unchanged, tmp_path):
    r = root[0]
    one_line_error(dmthin("graph", "cat", r, "ctr", "/etc/nope"), "/etc/nope")
    one_line_error(dmthin("graph", "cat", r, "ctr", "/etc"), "not a regular file")
    one_line_error(dmthin("graph", "cat", r, "zzz", "/etc/motd"), "'zzz'", "dmthin graph ls")
    one_line_error(dmthin("graph", "ls", tmp_path), "not a graph root")
    one_line_error(dmthin("graph", "export", r, "ctr", "-o", tmp_path / "no" / "x.tar"))
    assert not (tmp_path / "no").exists()
    assert list(tmp_path.iterdir()) == []
