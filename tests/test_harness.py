"""The test harness itself: tools/vmrun, tools/fetch-thin-tools, the fixtures.

The vmrun tests boot the qemu guest three times (exit status + streaming +
exact bytes; argv/env/cwd/share; timeout), a few seconds each.  The real_dm
smoke test runs inside the guest (tools/test's guest run).
"""
from __future__ import annotations

import gzip
import importlib.machinery
import importlib.util
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time

import pytest

import helpers


def load_vmrun():
    """tools/vmrun as a module (it is a script without .py)."""
    loader = importlib.machinery.SourceFileLoader("vmrun_under_test", str(helpers.VMRUN))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def vm_ready():
    """tools/vmrun can boot: packages, kernel and initramfs are in place."""
    p = subprocess.run([str(helpers.VMRUN), "--prepare"], capture_output=True, text=True,
                       timeout=900)
    if p.returncode != 0:
        helpers.skip_or_fail("tools/vmrun --prepare failed: " + p.stderr.strip()[-500:])


def vmrun(args, cwd=None, env=None, timeout=300):
    """Run tools/vmrun; return (status, stdout bytes, stderr text, arrival times).

    arrival times: [(seconds since start, chunk)] of stdout as it came.
    """
    t0 = time.monotonic()
    proc = subprocess.Popen([str(helpers.VMRUN), *args], cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    chunks, err = [], []
    fds = {proc.stdout.fileno(): chunks, proc.stderr.fileno(): err}
    while fds:
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail(f"tools/vmrun {args} ran over {timeout} s")
        ready, _, _ = select.select(list(fds), [], [], 1.0)
        for fd in ready:
            data = os.read(fd, 65536)
            if not data:
                del fds[fd]
            else:
                fds[fd].append((time.monotonic() - t0, data))
    rc = proc.wait()
    out = b"".join(c for _, c in chunks)
    return rc, out, b"".join(c for _, c in err).decode(errors="replace"), chunks


BOOT_LINE = re.compile(r"^vmrun: boot-seconds=(\d+\.\d+)$", re.M)


def test_status_3_live_stream_and_exact_bytes(vm_ready):
    script = ('printf "first\\n"; sleep 3; printf "a\\r\\nb\\000\\377\\n"; '
              'echo err >&2; exit 3')
    rc, out, err, chunks = vmrun(["--", "sh", "-c", script])
    assert rc == 3, err
    assert out == b"first\na\r\nb\x00\xff\nerr\n"
    assert BOOT_LINE.search(err), err
    seen, first_at = b"", None
    for t, c in chunks:  # serial output may arrive a few bytes at a time
        seen += c
        if first_at is None and seen.startswith(b"first\n"):
            first_at = t
    last_at = chunks[-1][0]
    assert last_at - first_at >= 2.0, "output was not streamed while the command ran"


GUEST_CHECK = r"""
import json, os, sys
res = {"argv": sys.argv[1:], "cwd": os.getcwd(), "uid": os.getuid(),
       "x": os.environ.get("DMTHIN_TEST_X"), "extra": os.environ.get("VMRUN_EXTRA"),
       "unpassed": os.environ.get("VMRUN_NOT_PASSED"),
       "udev": os.environ.get("DM_DISABLE_UDEV"),
       "path": os.environ["PATH"].split(":"),
       "control": os.path.exists("/dev/mapper/control"),
       "loop_control": os.path.exists("/dev/loop-control")}
with open("written-in-guest", "w") as f:
    f.write("hello from the guest")
try:
    open("/usr/vmrun-must-not-exist", "w")
    res["root_ro"] = False
except OSError as e:
    res["root_ro"] = e.errno
with open("/proc/mounts") as f:
    res["tmp_fs"] = [l.split()[2] for l in f if l.split()[1] == "/tmp"]
print(json.dumps(res))
"""


def test_status_0_argv_env_cwd_and_share(vm_ready, tmp_path):
    # the share lies under the host's /tmp, which is a fresh tmpfs in the guest
    (tmp_path / "check.py").write_text(GUEST_CHECK)
    argv = ["a b", "$(touch /x)", "'q\"", "", "*"]
    env = dict(os.environ, DMTHIN_TEST_X="two\nlines $HOME", VMRUN_NOT_PASSED="1",
               VMRUN_EXTRA="yes")
    py = os.path.realpath(sys.executable)
    rc, out, err, _ = vmrun(["--share", str(tmp_path), "--env", "VMRUN_EXTRA", "--", py,
                             "check.py", *argv], cwd=tmp_path, env=env)
    assert rc == 0, err + out.decode(errors="replace")
    res = json.loads(out.decode().strip().splitlines()[-1])
    assert res["argv"] == argv
    assert res["cwd"] == str(tmp_path)
    assert res["uid"] == 0
    assert res["x"] == "two\nlines $HOME"
    assert res["extra"] == "yes" and res["unpassed"] is None
    assert res["udev"] == "1"
    assert "/usr/sbin" in res["path"] and "/sbin" in res["path"]
    assert res["control"] and res["loop_control"]
    assert res["root_ro"] == 30  # EROFS
    assert res["tmp_fs"] == ["tmpfs"]
    assert (tmp_path / "written-in-guest").read_text() == "hello from the guest"


def test_timeout_kills_the_guest_with_124(vm_ready):
    t0 = time.monotonic()
    rc, _out, err, _ = vmrun(["--timeout", "8", "--", "sleep", "600"])
    elapsed = time.monotonic() - t0
    assert rc == 124, err
    assert "timeout" in err and "killed" in err
    assert elapsed < 8 + 20


def test_vmrun_usage_errors():
    p = subprocess.run([str(helpers.VMRUN)], capture_output=True, text=True)
    assert p.returncode == 2 and "no COMMAND" in p.stderr
    p = subprocess.run([str(helpers.VMRUN), "--share", "/", "--", "true"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "--share /:" in p.stderr


# ---------------------------------------------------------------- no boot

def test_module_order_puts_dependencies_first(tmp_path):
    vm = load_vmrun()
    (tmp_path / "modules.dep").write_text(
        "kernel/a.ko: kernel/b.ko kernel/c-d.ko\n"
        "kernel/b.ko: kernel/c-d.ko\n"
        "kernel/c-d.ko:\n"
        "kernel/e.ko.xz:\n")
    (tmp_path / "modules.builtin").write_text("kernel/f.ko\n")
    assert vm.module_order(str(tmp_path), ["a", "f", "e"]) == [
        "kernel/c-d.ko", "kernel/b.ko", "kernel/a.ko", "kernel/e.ko.xz"]
    with pytest.raises(vm.VmError, match="not in this kernel"):
        vm.module_order(str(tmp_path), ["nope"])


def test_cpio_archive_unpacks_with_busybox(tmp_path):
    busybox = shutil.which("busybox")
    if not busybox:
        helpers.skip_or_fail("busybox not installed (apt-get install busybox-static)")
    vm = load_vmrun()
    arc = vm.Cpio()
    arc.dir("d")
    arc.file("d/x", b"abc", 0o755)
    arc.file("odd", b"12345")
    data = gzip.compress(arc.finish())
    subprocess.run([busybox, "cpio", "-i", "-d"], input=gzip.decompress(data),
                   cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "d" / "x").read_bytes() == b"abc"
    assert os.access(tmp_path / "d" / "x", os.X_OK)
    assert (tmp_path / "odd").read_bytes() == b"12345"


def test_guest_env_is_filtered(monkeypatch):
    vm = load_vmrun()
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("DMTHIN_FOO", "1")
    monkeypatch.setenv("SECRET_TOKEN", "x")
    monkeypatch.setenv("PATH", "/opt/venv/bin:/usr/bin")
    env = vm.guest_env(["MORE=2"])
    assert env[b"CI"] == b"true" and env[b"DMTHIN_FOO"] == b"1" and env[b"MORE"] == b"2"
    assert b"SECRET_TOKEN" not in env
    assert env[b"PATH"].split(b":")[:2] == [b"/opt/venv/bin", b"/usr/bin"]
    assert b"/usr/sbin" in env[b"PATH"].split(b":")
    assert env[b"DM_DISABLE_UDEV"] == b"1"


def test_fetch_thin_tools_gives_1_1_0(pdata_tools_110):
    p = subprocess.run([pdata_tools_110, "thin_check", "--version"], capture_output=True,
                       text=True)
    assert p.returncode == 0 and p.stdout.strip() == "1.1.0"


def test_thin_tools_090_fixture(thin_tools_090):
    assert set(thin_tools_090) == set(helpers.THIN_TOOLS_090)
    p = subprocess.run([thin_tools_090["thin_dump"], "--version"], capture_output=True,
                       text=True)
    assert p.stdout.strip() == "0.9.0"


# ---------------------------------------------------------------- in the guest

def sh(*argv, check=True):
    """Run argv; return stdout text (raise with output on failure)."""
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"{argv} exited {p.returncode}: {p.stdout}{p.stderr}")
    return p.stdout


@pytest.mark.real_dm
def test_guest_smoke_dmsetup_loop_linear_thin(tmp_path, thin_tools_090):
    assert helpers.kernel_has_dm()
    assert "Driver version:" in sh("dmsetup", "version")
    assert os.path.exists("/dev/mapper/control")
    tag = f"deleteme-harness-{os.getpid()}"
    data = tmp_path / f"{tag}-data"
    meta = tmp_path / f"{tag}-meta"
    with open(data, "wb") as f:
        f.truncate(64 << 20)
    with open(meta, "wb") as f:
        f.truncate(4 << 20)
    loops = []
    made = []
    try:
        for path in (data, meta):
            loops.append(sh("losetup", "-f", "--show", str(path)).strip())
        # a linear device over the data loop
        sh("dmsetup", "create", f"{tag}-lin", "--table", f"0 {64 << 11} linear {loops[0]} 0")
        made.append(f"{tag}-lin")
        assert os.path.exists(f"/dev/mapper/{tag}-lin")  # DM_DISABLE_UDEV: libdm made it
        assert sh("dmsetup", "table", f"{tag}-lin").split()[2] == "linear"
        sh("dmsetup", "remove", f"{tag}-lin")
        made.pop()
        assert not os.path.exists(f"/dev/mapper/{tag}-lin")
        # a thin pool with one thin device (dm-thin-pool loaded in the guest)
        sh("dd", "if=/dev/zero", f"of={loops[1]}", "bs=4096", "count=1", "status=none")
        pool = f"{tag}-pool"
        sh("dmsetup", "create", pool, "--table",
           f"0 {64 << 11} thin-pool {loops[1]} {loops[0]} 128 0")
        made.append(pool)
        sh("dmsetup", "message", pool, "0", "create_thin 0")
        sh("dmsetup", "create", f"{tag}-thin", "--table",
           f"0 {32 << 11} thin /dev/mapper/{pool} 0")
        made.append(f"{tag}-thin")
        sh("dd", "if=/dev/urandom", f"of=/dev/mapper/{tag}-thin", "bs=64k", "count=4",
           "oflag=direct", "status=none")
        status = sh("dmsetup", "status", f"{tag}-thin").split()
        assert status[2] == "thin" and int(status[3]) == 4 * 128  # 4 x 64 KiB mapped
        for name in reversed(made):
            sh("dmsetup", "remove", name)
        made.clear()
        # the kernel's metadata passes the 0.9.0 checker
        sh(thin_tools_090["thin_check"], loops[1])
    finally:
        for name in reversed(made):
            sh("dmsetup", "remove", name, check=False)
        for dev in loops:
            sh("losetup", "-d", dev, check=False)
