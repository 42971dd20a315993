#!/usr/bin/env python3
"""Benchmark: N x (create_thin + activate + deactivate + delete) on a real
thin pool, through dmthin's libdevmapper binding vs through ``dmsetup``
processes doing the same, plus the full ``dmthin.Pool`` facade (which also
rewrites pool.json each time) and the kernel's floor: the same ioctls issued
straight from Python (``fcntl.ioctl`` on /dev/mapper/control, no
libdevmapper, nodes made with mknod), so ``binding/kernel`` is the binding's
own overhead and the rest is the kernel's time.

Needs root and device-mapper: run it in the guest, from the repo root:

    tools/vmrun -- .venv/bin/python tools/bench/dm_cycle.py [-n 50] [-r 3] [--udevd] [--resident]

Methods run one after the other in each round (each round starting with the
next method), so a round's ratios compare runs made under the same machine
load; the summary gives medians over the rounds.  Wall and CPU milliseconds
per cycle (CPU: this process's user+sys for in-process methods, the dmsetup
children's for dmsetup), and each phase's wall time.  ``--udevd`` starts
systemd-udevd for the run (the guest has none): the binding then waits on
udev cookies, and dmsetup runs without ``DM_DISABLE_UDEV`` so that it waits
too; the kernel row is left
out (udev's rules, not ours, make the nodes then).  ``--resident`` keeps
another thin device of the pool active during the run, as in a pool in use:
the kernel then keeps the thin target's bio slab caches between cycles
(destroying one waits for an RCU barrier).
"""
from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
if "--udevd" in sys.argv[1:]:
    # libdevmapper reads DM_DISABLE_UDEV (which the guest sets) once, when it loads
    os.environ.pop("DM_DISABLE_UDEV", None)

from dmthin import Pool
from dmthin.dm import loop, task
from dmthin.pooldir import device_prefix

THIN_SECTORS = 2048 * 100     # 100 MiB thin devices
PHASES = ("create_thin", "activate", "deactivate", "delete")
UDEVD = "/lib/systemd/systemd-udevd"

#: a cycle's phases: each takes the cycle number
Phases = list[Callable[[int], object]]


# -- the kernel's floor: dm ioctls without libdevmapper -----------------------------

_DM_IOCTL_SIZE = 312                                   # sizeof(struct dm_ioctl)
_DM_IOCTL_BASE = 0xC0000000 | _DM_IOCTL_SIZE << 16 | 0xFD << 8   # _IOWR(0xfd, nr, ...)
_DEV_CREATE, _DEV_REMOVE, _DEV_SUSPEND, _TABLE_LOAD, _TARGET_MSG = 3, 4, 6, 9, 14
_TARGET_SPEC_SIZE = 40                                 # sizeof(struct dm_target_spec)


class RawDM:
    """The ioctls libdevmapper issues for a message, a create (DEV_CREATE,
    TABLE_LOAD, DEV_SUSPEND to resume) and a remove, made directly."""

    def __init__(self) -> None:
        self.fd = os.open("/dev/mapper/control", os.O_RDWR | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.fd)

    def _ioctl(self, nr: int, name: str, payload: bytes = b"", target_count: int = 0) -> bytes:
        size = _DM_IOCTL_SIZE + len(payload) + 256
        buf = bytearray(size)
        struct.pack_into("=3I5I", buf, 0, 4, 0, 0, size, _DM_IOCTL_SIZE, target_count, 0, 0)
        raw = name.encode()
        buf[48:48 + len(raw)] = raw
        buf[_DM_IOCTL_SIZE:_DM_IOCTL_SIZE + len(payload)] = payload
        fcntl.ioctl(self.fd, _DM_IOCTL_BASE + nr, buf, True)
        return bytes(buf)

    def message(self, name: str, text: str) -> None:
        self._ioctl(_TARGET_MSG, name, struct.pack("=Q", 0) + text.encode() + b"\0")

    def create(self, name: str, length: int, target_type: str, params: str) -> None:
        self._ioctl(_DEV_CREATE, name)
        p = params.encode() + b"\0"
        p += b"\0" * (-(_TARGET_SPEC_SIZE + len(p)) % 8)
        spec = struct.pack("=QQiI16s", 0, length, 0, _TARGET_SPEC_SIZE + len(p),
                           target_type.encode()) + p
        self._ioctl(_TABLE_LOAD, name, spec, target_count=1)
        out = self._ioctl(_DEV_SUSPEND, name)                 # no suspend flag: resume
        dev = struct.unpack_from("=Q", out, 40)[0]            # the kernel's huge_encode_dev
        major, minor = (dev >> 8) & 0xFFF, (dev & 0xFF) | ((dev >> 12) & 0xFFF00)
        os.mknod(task.node_path(name), 0o600 | 0o060000, os.makedev(major, minor))

    def remove(self, name: str) -> None:
        self._ioctl(_DEV_REMOVE, name)
        os.unlink(task.node_path(name))


# -- the methods --------------------------------------------------------------------


def binding_phases(pool: str, pool_dev: str, prefix: str) -> Phases:
    return [lambda i: task.message(pool, f"create_thin {i}"),
            lambda i: task.create(f"{prefix}-{i}", [(0, THIN_SECTORS, "thin", f"{pool_dev} {i}")]),
            lambda i: task.remove(f"{prefix}-{i}"),
            lambda i: task.message(pool, f"delete {i}")]


def kernel_phases(raw: RawDM, pool: str, pool_dev: str, prefix: str) -> Phases:
    return [lambda i: raw.message(pool, f"create_thin {i}"),
            lambda i: raw.create(f"{prefix}-{i}", THIN_SECTORS, "thin", f"{pool_dev} {i}"),
            lambda i: raw.remove(f"{prefix}-{i}"),
            lambda i: raw.message(pool, f"delete {i}")]


def dmsetup_phases(pool: str, pool_dev: str, prefix: str, udev: bool) -> Phases:
    env = dict(os.environ)
    if not udev:
        env["DM_DISABLE_UDEV"] = "1"

    def dmsetup(*args: str) -> None:
        subprocess.run(["dmsetup", *args], check=True, env=env, stdout=subprocess.DEVNULL)
    return [lambda i: dmsetup("message", pool, "0", f"create_thin {i}"),
            lambda i: dmsetup("create", f"{prefix}-{i}", "--table",
                              f"0 {THIN_SECTORS} thin {pool_dev} {i}"),
            lambda i: dmsetup("remove", f"{prefix}-{i}"),
            lambda i: dmsetup("message", pool, "0", f"delete {i}")]


def facade_phases(p: Pool) -> Phases:
    return [lambda i: p.create_thin(i, THIN_SECTORS * 512),   # message + activate
            lambda i: p.delete(i)]                                      # deactivate + message


class Result:
    """One method's run: wall and CPU seconds, and wall seconds per phase."""

    def __init__(self, phases: int):
        self.wall = self.cpu = 0.0
        self.phase = [0.0] * phases


def run(phases: Phases, children: bool, n: int) -> Result:
    res = Result(len(phases))
    clock = time.perf_counter_ns
    c0, t0 = os.times(), time.perf_counter()
    for i in range(n):
        for k, phase in enumerate(phases):
            a = clock()
            phase(i)
            res.phase[k] += (clock() - a) / 1e9
    res.wall = time.perf_counter() - t0
    c1 = os.times()
    res.cpu = (c1.children_user - c0.children_user + c1.children_system - c0.children_system
               if children else c1.user - c0.user + c1.system - c0.system)
    return res


@contextmanager
def udevd_running(wanted: bool) -> Iterator[None]:
    """systemd-udevd for the run (started and stopped here) if *wanted*."""
    if not wanted or os.path.exists("/run/udev/control"):
        yield
        return
    if not os.path.exists(UDEVD):
        sys.exit(f"dm_cycle: {UDEVD} missing: apt-get install udev")
    os.makedirs("/run/udev", exist_ok=True)
    proc = subprocess.Popen([UDEVD], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(400):
            if os.path.exists("/run/udev/control"):
                break
            time.sleep(0.05)
        else:
            sys.exit("dm_cycle: systemd-udevd did not start")
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        shutil.rmtree("/run/udev", ignore_errors=True)


def ms(secs: float, n: int) -> str:
    return f"{secs / n * 1e3:8.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=50, help="cycles per method and round (default 50)")
    ap.add_argument("-r", "--rounds", type=int, default=1, help="rounds (default 1)")
    ap.add_argument("--resident", action="store_true",
                    help="keep one other thin device active during the run (a pool in use)")
    ap.add_argument("--udevd", action="store_true",
                    help="start systemd-udevd for the run (binding and dmsetup sync with it)")
    args = ap.parse_args()
    n = args.n
    base = tempfile.mkdtemp(prefix="dm-cycle-deleteme-")
    rounds: list[dict[str, Result]] = []
    with udevd_running(args.udevd), \
            Pool.create(os.path.join(base, "pool"), data_size="1G", metadata_size="64M",
                        backend="kernel") as p:
        info = p.info()
        pool, pool_dev = info.device_name or "", info.pool_dev or ""
        prefix = device_prefix(p.path)
        task.message(pool, f"create_thin {10 ** 6}")     # warm up the pool once
        if args.resident:
            task.create(f"{prefix}-resident", [(0, THIN_SECTORS, "thin", f"{pool_dev} {10 ** 6}")])
        else:
            task.message(pool, f"delete {10 ** 6}")
        udev = task.udev_sync()
        raw = RawDM()
        methods: dict[str, tuple[Phases, bool]] = {
            "binding": (binding_phases(pool, pool_dev, prefix), False),
            "dmsetup": (dmsetup_phases(pool, pool_dev, prefix, udev), True),
            "facade": (facade_phases(p), False)}
        if not args.udevd:
            methods["kernel"] = (kernel_phases(raw, pool, pool_dev, prefix), False)
        try:
            for r in range(args.rounds):
                order = list(methods)[r % len(methods):] + list(methods)[:r % len(methods)]
                res = {name: run(*methods[name], n) for name in order}
                rounds.append(res)
                walls = "  ".join(f"{k} {ms(v.wall, n).strip()}" for k, v in res.items())
                print(f"round {r + 1}: {walls} ms/cycle; dmsetup/binding "
                      f"{res['dmsetup'].wall / res['binding'].wall:.1f}x", flush=True)
        finally:
            raw.close()
            if args.resident:
                task.remove(f"{prefix}-resident")
        leftover = [d for d, _, _ in task.list_devices() if d != pool]
    print(f"udev sync: {'on (udevd runs)' if udev else 'off (no udevd)'}; {n} cycles x "
          f"{args.rounds} round(s); medians over the rounds, ms per cycle")
    print(f"{'method':8s} {'wall':>8s} {'cpu':>8s}   " + " ".join(f"{ph:>11s}" for ph in PHASES))
    for name in methods:
        wall = statistics.median(rd[name].wall for rd in rounds)
        cpu = statistics.median(rd[name].cpu for rd in rounds)
        phases = [statistics.median(rd[name].phase[k] for rd in rounds)
                  for k in range(len(rounds[0][name].phase))]
        shown = (["   (message + activate)", "  (deactivate + message)"]
                 if name == "facade" else [""] * len(phases))
        print(f"{name:8s} {ms(wall, n)} {ms(cpu, n)}   "
              + " ".join(f"{ms(s, n):>11s}{extra}" for s, extra in zip(phases, shown, strict=True)))

    def ratio(a: str, b: str) -> str:
        each = [rd[a].wall / rd[b].wall for rd in rounds]
        return f"{statistics.median(each):.2f}x (rounds: {' '.join(f'{x:.2f}' for x in each)})"
    print(f"ratio dmsetup/binding = {ratio('dmsetup', 'binding')} (target >= 10x)")
    print(f"ratio dmsetup/facade  = {ratio('dmsetup', 'facade')}")
    if "kernel" in methods:
        print(f"ratio binding/kernel  = {ratio('binding', 'kernel')} (the binding's own overhead)")
        print(f"ratio dmsetup/kernel  = {ratio('dmsetup', 'kernel')} (the ceiling for any binding)")
    print(f"left over: dm {leftover}, loops {[b for _, b in loop.list_attached() if base in b]}")
    return 0 if not leftover else 1


if __name__ == "__main__":
    sys.exit(main())
