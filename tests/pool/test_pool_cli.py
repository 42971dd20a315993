"""``dmthin pool adopt|resize|create --force`` and the activation commands'
refusals, on the simulator (the kernel side: tests/dm/test_dm_state_cli_real.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dmthin import Pool, UsageError
from dmthin.cli.common import metadata_path

ROOT = Path(__file__).resolve().parents[2]


def dmthin(*argv: object, user: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dmthin", *map(str, argv)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          user=user, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def one_line_error(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode == 1, r
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def test_adopt_records_a_foreign_pool_and_create_refuses_it(tmp_path):
    p = tmp_path / "p"
    assert dmthin("pool", "create", p, "--data-size", "4M", "--metadata-size", "2M",
                  "--block-size", "128K").returncode == 0
    assert dmthin("thin", "create", p, 3, "--size", "1M").returncode == 0
    assert dmthin("thin", "write", p, 3, "--input", __file__).returncode == 0
    (p / "pool.json").unlink()
    meta = (p / "metadata").read_bytes()
    one_line_error(dmthin("pool", "create", p, "--data-size", "4M", "--metadata-size", "2M"),
                   "already holds a thin pool", "dmthin pool adopt", "--force")
    one_line_error(dmthin("pool", "status", p), "adopt")
    assert (p / "metadata").read_bytes() == meta
    r = dmthin("pool", "adopt", p, "--low-water-mark", "7", "--feature", "skip_block_zeroing")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[5:9] == ["256", "7", "1", "skip_block_zeroing"]
    config = json.loads((p / "pool.json").read_text())
    assert config["data_block_sectors"] == 256 and config["thins"] == {}
    r = dmthin("thin", "list", p, "--json")
    assert [d["dev_id"] for d in json.loads(r.stdout)] == [3]
    assert dmthin("pool", "create", p, "--data-size", "4M", "--metadata-size", "2M",
                  "--force").returncode == 0
    assert json.loads(dmthin("thin", "list", p, "--json").stdout) == []


def test_resize_grows_the_pool(tmp_path):
    p = tmp_path / "p"
    dmthin("pool", "create", p, "--data-size", "4M", "--metadata-size", "2M")
    r = dmthin("pool", "resize", p, "--data-size", "8M", "--metadata-size", "4M")
    assert r.returncode == 0, r.stderr
    st = json.loads(dmthin("pool", "status", p, "--json").stdout)
    assert (st["total_data_blocks"], st["total_metadata_blocks"]) == (128, 1024)
    one_line_error(dmthin("pool", "resize", p, "--data-size", "4M"), "shrink")
    one_line_error(dmthin("pool", "resize", p), "--data-size")


@pytest.mark.parametrize("argv", [["pool", "activate"], ["pool", "deactivate"],
                                  ["thin", "activate", "PLACE", "1"],
                                  ["thin", "deactivate", "PLACE", "1"]])
def test_activation_needs_the_kernel(tmp_path, argv):
    p = tmp_path / "p"
    dmthin("pool", "create", p, "--data-size", "4M", "--metadata-size", "2M")
    argv = [a if a != "PLACE" else str(p) for a in argv]
    if "PLACE" not in argv and str(p) not in argv:
        argv.append(str(p))
    one_line_error(dmthin(*argv, "--backend", "sim"), "only while a process holds it open")


def test_status_and_read_write_nothing(tmp_path):
    p = tmp_path / "p"
    dmthin("pool", "create", p, "--data-size", "4M", "--metadata-size", "2M")
    dmthin("thin", "create", p, 1, "--size", "1M")
    before = {f: ((p / f).read_bytes(), os.stat(p / f).st_mtime_ns) for f in os.listdir(p)}
    for argv in (["pool", "status", p], ["thin", "list", p], ["thin", "status", p, 1],
                 ["thin", "read", p, 1, "--length", "10"]):
        assert dmthin(*argv).returncode == 0
    assert {f: ((p / f).read_bytes(), os.stat(p / f).st_mtime_ns) for f in os.listdir(p)} \
        == before


def as_nobody(fn: Callable[[], object]) -> str:
    """Run *fn* in a forked child with uid/gid 65534; return the one-line
    message of the UsageError it raises ('' if none)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                  # the child
        os.close(r)
        msg = ""
        try:
            os.setgid(65534)
            os.setuid(65534)
            fn()
        except UsageError as err:
            msg = str(err)
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            msg = f"unexpected {type(err).__name__}: {err}"
        os.write(w, msg.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_unreadable_directory_names_the_permission_problem(tmp_path):
    """As another user, a pool directory that cannot be read is named as a
    permission problem (not 'no metadata file', not 'no such directory')."""
    p = tmp_path / "p"
    dmthin("pool", "create", p, "--data-size", "4M", "--metadata-size", "2M")
    os.chmod(tmp_path, 0o755)
    os.chmod(p, 0o700)                            # root's: nobody cannot read it
    for fn in (lambda: metadata_path(str(p)), lambda: Pool.open(p, readonly=True)):
        msg = as_nobody(fn)
        assert "ermission denied" in msg and "\n" not in msg, msg
