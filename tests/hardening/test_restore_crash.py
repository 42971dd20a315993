"""``restore`` killed at every step: the output holds the old metadata, the
new metadata, or a clear "incomplete restore" error -- never a mix that
opens (issue 10 item 3: a restore into a pool used to overwrite blocks
1..N under a valid old superblock, which then opened and read wrong data).

A child (this file run as a script) restores XML into the output with every
write-side system call it makes counted (pwrite, fsync, ftruncate, replace,
fchmod); it SIGKILLs itself at the N-th.  The parent runs it once to count
the calls, then once per N, and each time requires of the output:

* a regular file (renamed into place): dump gives exactly the old or the
  new XML;
* a pool directory (written in place): dump gives the old or the new XML,
  or fails naming the incomplete restore -- and so do ``Pool.open`` and
  ``check``; a later restore completes it.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if __name__ == "__main__":
    sys.path.insert(0, str(REPO))

CALLS = ("pwrite", "fsync", "ftruncate", "replace", "fchmod")


def child(countdown: int, xml: str, output: str) -> int:
    """Restore *xml* into *output*, SIGKILLing at the *countdown*-th call."""
    left = [countdown]
    calls = [0]

    def wrap(name: str) -> None:
        orig = getattr(os, name)

        def hooked(*args: object, **kw: object) -> object:
            calls[0] += 1
            left[0] -= 1
            if left[0] == 0:
                os.kill(os.getpid(), signal.SIGKILL)
            return orig(*args, **kw)
        setattr(os, name, hooked)

    from dmthin.cli.main import main
    for name in CALLS:
        wrap(name)
    rc = main(["restore", "-q", "-i", xml, "-o", output])
    print(f"calls={calls[0]}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(child(int(sys.argv[1]), sys.argv[2], sys.argv[3]))


# -- the parent --------------------------------------------------------------------------
import pytest  # noqa: E402

from dmthin import Pool  # noqa: E402
from dmthin.errors import BadSuperblock  # noqa: E402
from forge import make_pool  # noqa: E402
from helpers import run_dmthin as dmthin  # noqa: E402


def run_child(countdown: int, xml: Path, output: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, __file__, str(countdown), str(xml), str(output)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=REPO)


@pytest.fixture
def xmls(tmp_path: Path) -> tuple[str, str, Path]:
    """(old XML, new XML, new XML file): two different pools' dumps."""
    old = make_pool(tmp_path / "old")
    new = tmp_path / "new"
    with Pool.create(new, data_size="8M", metadata_size="4M", backend="sim") as pool:
        for dev in (7, 8, 9):
            t = pool.create_thin(dev, "4M")
            for i in range(0, 40, 3):
                t.write(i * 65536 + dev, b"n" * 70000)
        pool.create_snap(10, 7).write(0, b"s")
    old_xml = dmthin("dump", old).stdout.decode()
    new_xml = dmthin("dump", new).stdout.decode()
    assert old_xml != new_xml
    path = tmp_path / "new.xml"
    path.write_text(new_xml)
    return old_xml, new_xml, path


@pytest.mark.parametrize("mode", ["file", "pooldir"])
def test_restore_killed_at_every_step(tmp_path, xmls, mode):
    old_xml, new_xml, xml = xmls
    src = tmp_path / "old"
    # the old metadata as a restore lays it out (trees from block 1 up), so
    # the new restore overwrites the blocks the old superblock points to
    (tmp_path / "old.xml").write_text(old_xml)
    assert dmthin("restore", "-q", "-i", tmp_path / "old.xml", "-o", src).returncode == 0
    # how many calls a whole restore makes
    target = tmp_path / "t"
    shutil.copytree(src, target)
    out = target if mode == "pooldir" else target / "metadata"
    p = run_child(10 ** 9, xml, out)
    assert p.returncode == 0, p.stderr
    total = int(p.stdout.split("calls=")[1])
    assert total >= 4
    assert dmthin("dump", target).stdout.decode() == new_xml
    seen = {"old": 0, "new": 0, "incomplete": 0}
    for n in range(1, total + 1):
        shutil.rmtree(target)
        shutil.copytree(src, target)
        p = run_child(n, xml, out)
        assert p.returncode == -signal.SIGKILL, (n, p.returncode, p.stderr)
        d = dmthin("dump", target)
        if d.returncode == 0:
            got = d.stdout.decode()
            assert got in (old_xml, new_xml), f"kill at call {n}: a mix opens"
            seen["old" if got == old_xml else "new"] += 1
            continue
        assert mode == "pooldir", (n, d.stderr)
        assert b"incomplete restore" in d.stderr and d.stderr.count(b"\n") == 1, d.stderr
        with pytest.raises(BadSuperblock, match="incomplete restore"):
            Pool.open(target)
        c = dmthin("check", target)
        assert c.returncode == 1 and b"incomplete restore" in c.stderr
        seen["incomplete"] += 1
        # restoring again completes it
        assert dmthin("restore", "-q", "-i", xml, "-o", out).returncode == 0
        assert dmthin("dump", target).stdout.decode() == new_xml
    assert seen["old"] and (seen["incomplete"] if mode == "pooldir" else seen["new"])
    if mode == "file":
        assert seen["incomplete"] == 0
