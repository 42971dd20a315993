"""Shared test helpers.

Environment facts the tests need: are we in CI, can real device-mapper tests
run here, where are thin-provisioning-tools 0.9.0 and 1.1.0.  Functions report
what is missing (Unavailable); :func:`skip_or_fail` turns a reason into a skip
(outside CI) or a failure (CI=true): the one gate every test that needs
something from the machine goes through (:func:`requires_real_dm` for the
real kernel).
"""
from __future__ import annotations

import functools
import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import NoReturn

import pytest

from dmthin.cli.main import main as dmthin_main
from dmthin.dm._lib import kernel_has_dm

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
VMRUN = TOOLS / "vmrun"
FETCH_THIN_TOOLS = TOOLS / "fetch-thin-tools"

#: the 0.9.0 tools the tests use, all installed by thin-provisioning-tools 0.9.0
THIN_TOOLS_090 = ("thin_check", "thin_dump", "thin_ls", "thin_restore", "thin_delta",
                  "thin_repair", "thin_rmap", "thin_metadata_size", "thin_trim")
THIN_TOOLS_090_DIR = "/usr/sbin"

REAL_DM_SKIP = "needs root and device-mapper: run tools/test, which runs these in a qemu guest"


class Unavailable(Exception):
    """A tool or facility the test needs is missing; the message says why."""


def in_ci() -> bool:
    """True when CI is set to a true value (CI=true, as CI services do)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the current test with *reason*, or fail it under CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: this must not be skipped)", pytrace=False)
    pytest.skip(reason)


def requires_real_dm() -> None:
    """The real-kernel gate: return if root on a kernel with device-mapper
    and loop devices, else :func:`skip_or_fail` saying what is missing.
    Applied to every ``real_dm`` test (tests/conftest.py)."""
    missing = real_dm_missing()
    if missing is not None:
        skip_or_fail(f"{REAL_DM_SKIP} ({missing})")


def in_vm() -> bool:
    """True inside the tools/vmrun guest."""
    return os.environ.get("DMTHIN_IN_VM") == "1"


def real_dm_missing() -> str | None:
    """Why real_dm tests cannot run here, or None if they can."""
    missing = []
    if os.geteuid() != 0:
        missing.append("not root")
    if not kernel_has_dm():
        missing.append("no device-mapper in this kernel")
    if not os.path.exists("/dev/loop-control"):
        missing.append("no /dev/loop-control")
    return ", ".join(missing) or None


def _version(argv: list[str]) -> str | None:
    try:
        p = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (p.stdout + p.stderr).strip() if p.returncode == 0 else None


@functools.cache
def pdata_tools_110() -> str:
    """Path of thin-provisioning-tools 1.1.0's pdata_tools.

    $DMTHIN_PDATA_TOOLS if set (tools/test sets it), else what
    tools/fetch-thin-tools prints (it downloads on first use).
    Raises Unavailable with the reason.
    """
    path = os.environ.get("DMTHIN_PDATA_TOOLS")
    if not path:
        try:
            p = subprocess.run([str(FETCH_THIN_TOOLS), "--quiet"], capture_output=True,
                               text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Unavailable(f"tools/fetch-thin-tools did not run: {e}") from e
        if p.returncode != 0:
            raise Unavailable("tools/fetch-thin-tools failed: " + p.stderr.strip())
        path = p.stdout.strip().splitlines()[-1]
    got = _version([path, "thin_check"])
    if got is None or not re.search(r"(^|\s)1\.1\.0(\s|$)", got):
        raise Unavailable(f"{path} thin_check --version gives {got!r}, not 1.1.0 "
                          "(run tools/fetch-thin-tools)")
    return path


def pdata_tools_110_gated() -> str:
    """:func:`pdata_tools_110`, or the gate (:func:`skip_or_fail`) with
    the reason it is unavailable: for tests that call it outside a fixture
    (state machines, helpers)."""
    try:
        return pdata_tools_110()
    except Unavailable as e:
        skip_or_fail(f"thin-provisioning-tools 1.1.0 unavailable: {e}")


@functools.cache
def thin_tools_090() -> dict[str, str]:
    """{tool name: path} of the installed 0.9.0 tools.

    Raises Unavailable if one is missing or the version is not 0.9.0.
    """
    tools = {name: os.path.join(THIN_TOOLS_090_DIR, name) for name in THIN_TOOLS_090}
    missing = [p for p in tools.values() if not os.access(p, os.X_OK)]
    if missing:
        raise Unavailable("missing " + ", ".join(missing) +
                          ": apt-get install thin-provisioning-tools (0.9.0, Debian 12)")
    got = _version([tools["thin_check"]])
    if got != "0.9.0":
        raise Unavailable(f"{tools['thin_check']} --version gives {got!r}, not 0.9.0")
    return tools


# -- running the dmthin command ------------------------------------------------------
def _argv(args: tuple[object, ...]) -> list[str]:
    return [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args]


def run_dmthin(*args: object, input: bytes | None = None,
               text: bool = False) -> subprocess.CompletedProcess:
    """Run ``dmthin ARGS`` in this process (:func:`dmthin.cli.main.main`)
    with *input* on stdin; return what ``subprocess.run(...,
    capture_output=True, text=text)`` would: the exit status and
    stdout/stderr as bytes, or as str if *text*.

    A usage error or ``--help`` (SystemExit) gives its exit status; any other
    exception propagates, failing the test (a real run would print a
    traceback)."""
    argv = _argv(args)
    out, err = io.BytesIO(), io.BytesIO()
    streams = (io.TextIOWrapper(io.BytesIO(input or b""), encoding="utf-8"),
               io.TextIOWrapper(out, encoding="utf-8", write_through=True),
               io.TextIOWrapper(err, encoding="utf-8", write_through=True))
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = streams
    try:
        try:
            code = dmthin_main(argv)
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        result = subprocess.CompletedProcess(["dmthin", *argv], code, out.getvalue(),
                                             err.getvalue())
        if text:
            result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
    return result


def run_dmthin_subprocess(*args: object, input: bytes | None = None,
                          timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m dmthin ARGS`` from this checkout in a new process (for
    the smoke tests of the entry point, and for tests that need a process of
    their own); output as bytes."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "dmthin", *_argv(args)], cwd=REPO, env=env,
                          input=input, capture_output=True, timeout=timeout)


def layer_tar(entries: list[tuple[str, str, dict]], *, t0: float, fill: int = 100,
              chr_dev: tuple[int, int] = (1, 5)) -> bytes:
    """A PAX tar of ``(name, kind, extra)`` entries, kind one of dir, file,
    sym, hard, fifo, chr; *extra* may give ``mode``, ``owner`` (uid, gid),
    ``data`` (a file's bytes; default the name repeated *fill* times),
    ``to`` (a link's target) and ``xattrs``.  Entry *i* gets mtime
    ``t0 + i`` (give t0 a fraction to test sub-second times)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i, (name, kind, extra) in enumerate(entries):
            ti = tarfile.TarInfo(name)
            ti.mtime = t0 + i
            ti.mode = extra.get("mode", 0o755 if kind == "dir" else 0o644)
            ti.uid, ti.gid = extra.get("owner", (0, 0))
            data = None
            if kind == "dir":
                ti.type = tarfile.DIRTYPE
            elif kind == "file":
                data = extra.get("data", name.encode() * fill)
                ti.size = len(data)
            elif kind in ("sym", "hard"):
                ti.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                ti.linkname = extra["to"]
            elif kind == "fifo":
                ti.type = tarfile.FIFOTYPE
            elif kind == "chr":
                ti.type = tarfile.CHRTYPE
                ti.devmajor, ti.devminor = chr_dev
            if "xattrs" in extra:
                ti.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                                  for k, v in extra["xattrs"].items()}
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()
