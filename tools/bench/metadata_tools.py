#!/usr/bin/env python3
"""Benchmark dmthin's metadata tools against thin-provisioning-tools 0.9.0 and 1.1.0.

  tools/bench/metadata_tools.py [--mappings 1000000 [10000000 ...]] [--shapes ranges singles]
                                [--devices 10] [--tools dump restore check ls delta rmap repair]
                                [--repeat 1] [--dir DIR] [--profile TOOL] [--no-install]

For each size and shape an XML is generated -- D devices, half of them
snapshots of the other half (a tenth of their blocks rewritten) -- and
restored by 0.9.0's thin_restore; every tool then runs on that metadata,
dmthin, 0.9.0 and 1.1.0 (``pdata_tools``, from tools/fetch-thin-tools) side by
side in the same run: dump (XML to a file), restore (that XML into a blank
file), check, ls, delta (an origin against its snapshot, in a pool of just
those two holding all the mappings), rmap (every data block) and repair (of
the undamaged metadata).  Shapes: ``ranges`` -- runs
of 1..256 blocks, as sequential writers leave -- and ``singles`` -- isolated
blocks, as random 64 KiB writes leave.  Prints each wall time (best of
``--repeat``), the ratios to both tools and each child's peak RSS (its
``wait4`` resource usage).  dmthin is timed as installed: this checkout
``pip install``-ed into a fresh venv in the work directory (``--no-install``:
the checkout's own, editable, whose import hook costs each start ~10 ms).
``--profile TOOL`` runs one dmthin command under cProfile.
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GNU_TIME = "/usr/bin/time"
SBIN = "/usr/sbin"
TOOLS = ("dump", "restore", "check", "ls", "delta", "rmap", "repair")
PATTERNS = {
    "ranges": [1, 2, 4, 8, 16, 64, 256],                # sequential writers
    "singles": [1],                                     # random 64 KiB writes
}


def gen_xml(path: Path, nr_mappings: int, nr_devices: int, pattern: str, seed: int = 1) -> int:
    """Write the benchmark XML; return nr_data_blocks."""
    rnd = random.Random(seed)
    lengths = PATTERNS[pattern]
    origins = max(1, nr_devices - nr_devices // 2)
    per_dev = nr_mappings // nr_devices
    nr_data = origins * per_dev + (nr_devices // 2) * (per_dev // 5 + 1) + 1000
    cursor = 0
    devs = []
    for _ in range(origins):
        runs, v, left = [], 0, per_dev
        while left:
            n = min(left, rnd.choice(lengths))
            runs.append((v, cursor, rnd.randrange(0, 3), n))
            cursor += n
            v += n + (rnd.randrange(1, 16) if pattern == "singles" else rnd.choice([0, 0, 3]))
            left -= n
        devs.append(runs)
    for i in range(nr_devices // 2):
        runs = []
        for v, d, t, n in devs[i % origins]:
            if rnd.random() < 0.1:
                runs.append((v, cursor, 3, n))           # rewritten after the snapshot
                cursor += n
            else:
                runs.append((v, d, t, n))
        devs.append(runs)
    assert cursor <= nr_data, (cursor, nr_data)
    with open(path, "w", buffering=1 << 20) as f:
        w = f.write
        w(f'<superblock uuid="" time="4" transaction="9" data_block_size="128" '
          f'nr_data_blocks="{nr_data}">\n')
        for dev_id, runs in enumerate(devs):
            mapped = sum(r[3] for r in runs)
            w(f'  <device dev_id="{dev_id}" mapped_blocks="{mapped}" transaction="0" '
              f'creation_time="0" snap_time="3">\n')
            for v, d, t, n in runs:
                if n == 1:
                    w(f'    <single_mapping origin_block="{v}" data_block="{d}" time="{t}"/>\n')
                else:
                    w(f'    <range_mapping origin_begin="{v}" data_begin="{d}" length="{n}" '
                      f'time="{t}"/>\n')
            w("  </device>\n")
        w("</superblock>\n")
    return nr_data


def timed(argv: list, prepare=None) -> tuple[float, float, int, int]:
    """(CPU seconds, wall seconds, peak RSS in KiB, exit status) of one
    command, from its resource usage (``wait4``: every thread, to the
    microsecond; not this large process's).  CPU time (user + system)
    is what the ratios use: on a loaded machine wall time measures the
    scheduler."""
    if prepare:
        prepare()
    fd, rss_file = tempfile.mkstemp(prefix="dmthin-bench-rss-")
    os.close(fd)
    t0 = time.perf_counter()
    # Launched by GNU time, whose %M is the tool's own peak RSS (Linux keeps
    # a process's peak across fork and exec: the tool's own rusage would
    # start from this large process's).  wait4 gives the launcher's usage
    # with the tool's (reaped) included: CPU to the microsecond.
    p = subprocess.Popen([GNU_TIME, "-q", "-f", "%M", "-o", rss_file,
                          *(str(a) for a in argv)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    err = p.stderr.read()
    p.stderr.close()
    _pid, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t0
    p.returncode = code = os.waitstatus_to_exitcode(status)
    try:
        rss = int(Path(rss_file).read_text().split()[-1])
    except (ValueError, IndexError):
        rss = 0
    os.unlink(rss_file)
    if code != 0:
        print(f"  ! {' '.join(map(str, argv))}: exit {code}: "
              f"{err.decode(errors='replace').strip()[:200]}")
    return ru.ru_utime + ru.ru_stime, dt, rss, code


def best(argv: list, repeat: int, prepare=None) -> tuple[float, float, int, int]:
    return min(timed(argv, prepare) for _ in range(repeat))


#: the dmthin command timed (set by main: an installed copy, see install())
DMTHIN: list[str] = []


def dmthin_command() -> list[str]:
    """How a user runs dmthin: the ``dmthin`` console script installed beside
    this interpreter (``python -m dmthin`` adds runpy's imports), else that."""
    if DMTHIN:
        return DMTHIN
    script = Path(sys.executable).parent / "dmthin"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "dmthin"]


def install(work: Path) -> list[str] | None:
    """Install this checkout into a fresh venv under *work*, as a user's
    ``pip install`` does (a wheel, its modules compiled to bytecode), and
    return its ``dmthin`` command; None if that fails.  An editable install's
    import hook and .pth files cost every start ~10 ms that no installed
    dmthin pays."""
    venv = work / "venv"
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(venv / "bin" / "pip"), "install", "-q", "cffi"],
             [str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(REPO)]]
    for argv in steps:
        p = subprocess.run(argv, capture_output=True, text=True, check=False)
        if p.returncode:
            print(f"installing into {venv} failed ({' '.join(argv[-3:])}): "
                  f"{(p.stderr.strip().splitlines() or [''])[-1]}; timing the checkout's "
                  "dmthin instead")
            return None
    return [str(venv / "bin" / "dmthin")]


def compile_bytecode() -> None:
    """Compile dmthin's modules to bytecode first, as installing a wheel
    does: a source checkout run with PYTHONDONTWRITEBYTECODE set (or from a
    read-only tree) otherwise compiles every module it imports at each start,
    ~25 ms of CPU that no installed dmthin pays."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "dmthin")],
                   stdout=subprocess.DEVNULL, check=True)


def pdata_tools() -> str:
    path = os.environ.get("DMTHIN_PDATA_TOOLS")
    if path:
        return path
    p = subprocess.run([str(REPO / "tools" / "fetch-thin-tools"), "--quiet"],
                       capture_output=True, text=True, check=False)
    if p.returncode:
        sys.exit("tools/fetch-thin-tools failed: " + p.stderr.strip())
    return p.stdout.strip().splitlines()[-1]


def commands(tool: str, md: Path, xml: Path, work: Path, devices: int, nr_data: int):
    """{"dmthin": argv, "0.9.0": argv, "1.1.0": argv} and a prepare callable."""
    out = work / "out.md"

    def blank():
        with open(out, "wb") as f:
            f.truncate(md.stat().st_size)
    py = dmthin_command()
    snap = devices - devices // 2            # the snapshot of origin 0
    args = {
        "dump": (["dump", "-o", work / "dump.xml", md], ["-o", work / "dump.xml", md], None),
        "restore": (["restore", "-i", xml, "-o", out], ["-i", xml, "-o", out], blank),
        "check": (["check", md], [md], None),
        "ls": (["ls", "-o", "DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS", md],
               ["-o", "DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS", md], None),
        "delta": (["delta", "--snap1", "0", "--snap2", str(snap), md],
                  ["--snap1", "0", "--snap2", str(snap), md], None),
        "rmap": (["rmap", "--region", f"0..{nr_data}", md], ["--region", f"0..{nr_data}", md],
                 None),
        "repair": (["repair", "-i", md, "-o", out], ["-i", md, "-o", out], blank),
    }[tool]
    ours, theirs, prepare = args
    pdata = pdata_tools()
    return ({"dmthin": py + ours, "0.9.0": [f"{SBIN}/thin_{tool}", *theirs],
             "1.1.0": [pdata, f"thin_{tool}", *theirs]}, prepare)


def _pool(work: Path, name: str, n: int, devices: int, shape: str) -> tuple[Path, Path, int]:
    """(metadata, XML, nr_data_blocks) of a generated pool, restored by 0.9.0."""
    xml, md = work / f"{name}.xml", work / f"{name}.md"
    t0 = time.perf_counter()
    nr_data = gen_xml(xml, n, devices, shape)
    size = max(64, (n * 48 // (1 << 20)) + 64) << 20
    with open(md, "wb") as f:
        f.truncate(size)
    if timed([f"{SBIN}/thin_restore", "-i", xml, "-o", md])[3]:
        sys.exit(f"thin_restore 0.9.0 failed on {xml}")
    for f in (md, xml):         # into the page cache: no tool pays a cold first read
        with open(f, "rb") as src:
            while src.read(1 << 24):
                pass
    print(f"{name}: {devices} devices, {xml.stat().st_size / 1e6:.0f} MB XML, {size >> 20} MiB "
          f"metadata, {nr_data} data blocks ({time.perf_counter() - t0:.0f}s)", flush=True)
    return md, xml, nr_data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mappings", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--shapes", nargs="+", choices=sorted(PATTERNS), default=["ranges", "singles"])
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--dir", help="work directory (default: a temp dir, removed)")
    ap.add_argument("--profile", choices=TOOLS, help="profile one dmthin command instead")
    ap.add_argument("--no-install", action="store_true",
                    help="time the checkout's own dmthin (editable install) instead of a "
                         "copy installed into a fresh venv")
    args = ap.parse_args()
    compile_bytecode()
    tmp = None
    if args.dir:
        work = Path(args.dir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="dmthin-bench-")
        work = Path(tmp.name)
    if not args.no_install and not args.profile:
        DMTHIN[:] = install(work) or []
    print(f"dmthin: {' '.join(dmthin_command())}", flush=True)
    rows = []
    for n in args.mappings:
        for shape in args.shapes:
            md, xml, nr_data = _pool(work, f"{shape}-{n}", n, args.devices, shape)
            if args.profile:
                return profile(args.profile, md, xml, work, args.devices, nr_data)
            pair = None
            for tool in args.tools:
                if tool == "delta":
                    if pair is None:
                        pair = _pool(work, f"{shape}-{n}-pair", n, 2, shape)
                    argvs, prepare = commands(tool, pair[0], pair[1], work, 2, pair[2])
                else:
                    argvs, prepare = commands(tool, md, xml, work, args.devices, nr_data)
                res = {who: best(argv, args.repeat, prepare) for who, argv in argvs.items()}
                rows.append((tool, shape, n, res))
                show(rows[-1:], header=len(rows) == 1)
    print()
    show(rows, header=True)
    if tmp:
        tmp.cleanup()
    return 0


def show(rows, header: bool) -> None:
    if header:
        print(f"{'tool':8} {'shape':8} {'mappings':>9} {'CPU s: dmthin':>14} {'0.9.0':>7} "
              f"{'1.1.0':>7} {'/0.9.0':>7} {'/1.1.0':>7}  {'wall s: dmthin/0.9.0/1.1.0':>27} "
              f"{'RSS MiB: dmthin/0.9.0/1.1.0':>28}")
    for tool, shape, n, res in rows:
        (t, w, r, c), (t0, w0, r0, c0), (t1, w1, r1, c1) = (res["dmthin"], res["0.9.0"],
                                                            res["1.1.0"])
        flag = "" if not (c or c0 or c1) else f"  exit {c}/{c0}/{c1}"
        print(f"{tool:8} {shape:8} {n:9} {t:14.3f} {t0:7.3f} {t1:7.3f} {t / max(t0, .001):7.2f} "
              f"{t / max(t1, .001):7.2f}  {w:13.2f} {w0:6.2f} {w1:6.2f} "
              f"{r / 1024:14.0f} {r0 / 1024:6.0f} {r1 / 1024:6.0f}{flag}", flush=True)


def profile(tool: str, md: Path, xml: Path, work: Path, devices: int, nr_data: int) -> int:
    import cProfile
    import io
    import pstats
    sys.path.insert(0, str(REPO))
    from dmthin.cli.main import main as cli
    argvs, prepare = commands(tool, md, xml, work, devices, nr_data)
    if prepare:
        prepare()
    prof = cProfile.Profile()
    with open(os.devnull, "w") as null:
        old, sys.stdout = sys.stdout, null
        prof.enable()
        try:
            cli([str(a) for a in argvs["dmthin"][len(dmthin_command()):]])
        finally:
            prof.disable()
            sys.stdout = old
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(20)
    print(s.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
