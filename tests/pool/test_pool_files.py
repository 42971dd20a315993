"""A pool directory is hostile input: symlinks are
never followed, files never truncated or formatted that dmthin did not make,
a failed create removes exactly what it made, another user's directory is
refused unless asked."""
from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dmthin import Pool, PoolLocked, UsageError
from dmthin.sim.pool import SimPoolBackend

ROOT = Path(__file__).resolve().parents[2]


def new_pool(d: Path, **kw: object) -> Pool:
    return Pool.create(d, data_size="4M", metadata_size="2M", **kw)


def victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim"
    v.write_bytes(b"precious bytes\n")
    os.chmod(v, 0o644)
    return v


def state(p: Path) -> tuple[bytes, int, int]:
    st = os.stat(p)
    return p.read_bytes(), st.st_size, stat.S_IMODE(st.st_mode)


def test_a_lock_symlink_is_never_followed(tmp_path):
    d = tmp_path / "pool"
    new_pool(d).close()
    v = victim(tmp_path)
    os.unlink(d / ".lock")
    os.symlink(v, d / ".lock")
    before = state(v)
    with Pool.open(d) as pool:                         # a writer notes its pid
        pool.create_thin(1, "1M")
    with Pool.open(d, readonly=True) as pool:
        assert pool.thin_ids() == [1]
    assert state(v) == before


def test_the_pid_note_is_overwritten_in_place_never_truncated(tmp_path):
    d = tmp_path / "pool"
    new_pool(d).close()
    (d / ".lock").write_bytes(b"1" * 100)
    with Pool.open(d):
        assert (d / ".lock").read_bytes()[:21] == f"{os.getpid()}".ljust(20).encode() + b"\n"
        assert len((d / ".lock").read_bytes()) == 100
    assert len((d / ".lock").read_bytes()) == 100


@pytest.mark.parametrize("name", ["data", "metadata", "pool.json"])
def test_symlinked_pool_files_are_refused(tmp_path, name):
    d = tmp_path / "pool"
    new_pool(d).close()
    v = victim(tmp_path)
    os.unlink(d / name)
    os.symlink(v, d / name)
    before = state(v)
    with pytest.raises(UsageError, match="symbolic link") as exc:
        Pool.open(d)
    assert "\n" not in str(exc.value)
    assert state(v) == before


@pytest.mark.parametrize("name", ["data", "metadata"])
def test_create_does_not_write_through_symlinks(tmp_path, name):
    d = tmp_path / "pool"
    d.mkdir(mode=0o700)
    v = victim(tmp_path)
    os.symlink(v, d / name)
    before = state(v)
    with pytest.raises(UsageError, match="symbolic link"):
        new_pool(d)
    assert state(v) == before
    assert sorted(os.listdir(d)) == [name]          # nothing left of the attempt


def test_empty_and_symlinked_pool_directories_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mode = stat.S_IMODE(os.stat(tmp_path).st_mode)
    with pytest.raises(UsageError, match="empty path"):
        new_pool("")
    assert os.listdir(tmp_path) == [] and stat.S_IMODE(os.stat(tmp_path).st_mode) == mode
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    os.symlink(real, tmp_path / "link")
    for call in (lambda: new_pool(tmp_path / "link"), lambda: Pool.open(tmp_path / "link")):
        with pytest.raises(UsageError, match="symbolic link") as exc:
            call()
        assert "\n" not in str(exc.value)
    assert os.listdir(real) == [] and stat.S_IMODE(os.stat(real).st_mode) == 0o755


def test_cli_refuses_empty_pool_directory(tmp_path):
    r = subprocess.run([sys.executable, "-m", "dmthin", "pool", "create", ""], cwd=tmp_path,
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "empty path" in r.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_another_users_directory_is_refused_unless_allowed(tmp_path):
    d = tmp_path / "pool"
    new_pool(d).close()
    os.chown(d, 4321, 4321)
    with pytest.raises(UsageError, match="owned by uid 4321") as exc:
        Pool.open(d)
    assert "allow_other_owner" in str(exc.value)
    with pytest.raises(UsageError, match="owned by uid 4321"):
        new_pool(d)
    with Pool.open(d, allow_other_owner=True) as pool:
        assert pool.thin_ids() == []


def test_failed_create_removes_only_what_it_made(tmp_path, monkeypatch):
    d = tmp_path / "pool"
    d.mkdir(mode=0o700)
    (d / "data").write_bytes(b"someone's data")          # kept, as Docker's ensureImage
    ino = os.stat(d / "data").st_ino

    def boom(*a: object) -> None:
        raise OSError(5, "injected failure")
    monkeypatch.setattr(SimPoolBackend, "create", classmethod(boom))
    with pytest.raises(OSError, match="injected"):
        new_pool(d)
    assert sorted(os.listdir(d)) == ["data"]
    assert os.stat(d / "data").st_ino == ino


def test_a_create_that_loses_the_race_removes_nothing(tmp_path):
    """Another process is making a pool in the directory (it holds the
    directory lock): our create fails at once and deletes none of its files."""
    d = tmp_path / "pool"
    d.mkdir(mode=0o700)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "open(os.path.join(sys.argv[1], 'metadata'), 'wb').write(b'theirs')\n"
         "print('held', flush=True); time.sleep(30)", str(d)],
        stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(PoolLocked, match="another process is creating"):
            new_pool(d)
        assert sorted(os.listdir(d)) == ["metadata"]
        assert (d / "metadata").read_bytes() == b"theirs"
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout:
            holder.stdout.close()


def test_files_made_are_private_and_config_is_checked(tmp_path):
    d = tmp_path / "pool"
    new_pool(d).close()
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for f in ("data", "metadata", "pool.json", ".lock"):
        assert stat.S_IMODE(os.stat(d / f).st_mode) == 0o600
    for bad in (b"\xff\xfe not utf-8", b"[]", b'{"backend": "sim"}',
                b'{"backend": "sim", "data_block_sectors": 128.0, "low_water_mark": 1}',
                b'{"backend": "sim", "data_block_sectors": 128, "low_water_mark": 1, '
                b'"thins": {"\xd9\xa1": 512}}'):
        (d / "pool.json").write_bytes(bad)
        with pytest.raises(UsageError, match="not a valid dmthin pool config") as exc:
            Pool.open(d)
        assert "\n" not in str(exc.value)


def test_reading_writes_nothing(tmp_path):
    d = tmp_path / "pool"
    with new_pool(d) as pool:
        pool.create_thin(1, "1M").write(0, b"x" * 5000)
    sums = {f: hashlib.sha256((d / f).read_bytes()).hexdigest() for f in os.listdir(d)}
    stats = {f: os.stat(d / f).st_mtime_ns for f in os.listdir(d)}
    with Pool.open(d, readonly=True) as pool:
        assert pool.readonly and pool.thin(1).read(0, 3) == b"xxx"
        pool.status()
        pool.thin(1).flush()
    assert {f: hashlib.sha256((d / f).read_bytes()).hexdigest() for f in os.listdir(d)} == sums
    assert {f: os.stat(d / f).st_mtime_ns for f in os.listdir(d)} == stats
