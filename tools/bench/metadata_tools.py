#!/usr/bin/env python3
"""Benchmark dmthin's metadata tools against thin-provisioning-tools 0.9.0.

  tools/bench/metadata_tools.py [--mappings 1000000] [--devices 100] [--dir DIR]
                                [--repeat 1] [--profile dump|restore|ls]

Builds an XML with N mappings over D devices, half of them snapshots of an
origin (same mappings, a tenth of them rewritten to new blocks), restores
it with ``thin_restore``, then times ``dmthin dump`` / ``thin_dump``,
``dmthin restore`` / ``thin_restore``, ``dmthin ls`` / ``thin_ls`` and, if
present, ``dmthin check`` / ``thin_check``.  Prints wall time, the ratio and
each child's peak RSS (``wait4`` rusage).  ``--profile`` runs one dmthin
command under cProfile in-process and prints the top functions.
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


PATTERNS = {
    "ranges": [1, 1, 1, 2, 4, 8, 16, 64, 256],          # sequential writers
    "mixed": [1] * 6 + [2, 4, 8, 16, 64],
    "singles": [1],                                     # random 64 KiB writes
}


def gen_xml(path: Path, nr_mappings: int, nr_devices: int, pattern: str = "mixed",
            seed: int = 1) -> int:
    """Write the benchmark XML; return nr_data_blocks."""
    rnd = random.Random(seed)
    lengths = PATTERNS[pattern]
    origins = nr_devices - nr_devices // 2
    per_dev = nr_mappings // nr_devices
    nr_data = origins * per_dev + (nr_devices // 2) * (per_dev // 10 + 1) + 1000
    data_cursor = 0
    devs = []
    for i in range(origins):
        runs, v = [], 0
        left = per_dev
        while left:
            n = min(left, rnd.choice(lengths))
            runs.append((v, data_cursor, rnd.randrange(0, 3), n))
            data_cursor += n
            v += n + rnd.choice([0, 0, 1, 3, 100]) + (1 if lengths == [1] else 0)
            left -= n
        devs.append(runs)
    snaps = []
    for i in range(nr_devices // 2):
        origin = devs[i % origins]
        runs = []
        for (v, d, t, n) in origin:
            if rnd.random() < 0.1:
                runs.append((v, data_cursor, 3, n))     # rewritten after the snapshot
                data_cursor += n
            else:
                runs.append((v, d, t, n))
        snaps.append(runs)
    assert data_cursor <= nr_data, (data_cursor, nr_data)
    with open(path, "w", buffering=1 << 20) as f:
        w = f.write
        w(f'<superblock uuid="" time="4" transaction="9" data_block_size="128" '
          f'nr_data_blocks="{nr_data}">\n')
        for dev_id, runs in enumerate(devs + snaps):
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


GNU_TIME = "/usr/bin/time"


def timed(argv, stdout=subprocess.DEVNULL) -> tuple[float, int, int]:
    """(seconds, peak RSS in KiB, exit status) of one child process.

    The peak comes from GNU time when present: a child forked straight from
    this (large) benchmark process would report our RSS at fork time as its
    peak; GNU time is small, so its own child's maxrss is the command's."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    fd, rss_file = tempfile.mkstemp(prefix="dmthin-bench-rss-")
    os.close(fd)
    use_time = os.access(GNU_TIME, os.X_OK)
    full = ([GNU_TIME, "-q", "-f", "%M", "-o", rss_file] if use_time else []) + [
        str(a) for a in argv]
    t0 = time.perf_counter()
    p = subprocess.Popen(full, stdout=stdout, stderr=subprocess.PIPE, env=env)
    _pid, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read()
    p.stderr.close()
    try:
        rss = int(Path(rss_file).read_text().split()[-1]) if use_time else ru.ru_maxrss
    except (ValueError, IndexError):
        rss = ru.ru_maxrss
    os.unlink(rss_file)
    if p.returncode != 0:
        print(f"  ! {' '.join(map(str, argv))}: exit {p.returncode}: "
              f"{err.decode(errors='replace').strip()[:200]}")
    return dt, rss, p.returncode


def best(argv, repeat: int, prepare=None):
    runs = []
    for _ in range(repeat):
        if prepare:
            prepare()
        runs.append(timed(argv))
    return min(runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mappings", type=int, default=1_000_000)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--dir", help="work directory (default: a temp dir, removed)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--pattern", choices=sorted(PATTERNS), default="mixed",
                    help="run lengths of the mappings (default mixed)")
    ap.add_argument("--metadata-mib", type=int, default=256)
    ap.add_argument("--profile", choices=("dump", "restore", "ls"))
    args = ap.parse_args()

    tmp = None
    if args.dir:
        work = Path(args.dir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="dmthin-bench-")
        work = Path(tmp.name)
    xml = work / "bench.xml"
    t0 = time.perf_counter()
    nr_data = gen_xml(xml, args.mappings, args.devices, args.pattern)
    print(f"generated {xml} ({xml.stat().st_size / 1e6:.1f} MB, {args.mappings} mappings, "
          f"{args.devices} devices, {args.pattern} runs, {nr_data} data blocks) in {time.perf_counter() - t0:.1f}s")

    size = args.metadata_mib << 20
    ref_md, our_md = work / "ref.md", work / "ours.md"

    def blank(p):
        def f():
            with open(p, "wb") as fh:
                fh.truncate(size)
        return f
    blank(ref_md)()
    t, rss, rc = timed(["/usr/sbin/thin_restore", "-i", xml, "-o", ref_md])
    if rc:
        return 1
    py = [sys.executable, "-m", "dmthin"]

    if args.profile:
        return profile(args.profile, xml, ref_md, work)

    rows = []
    rows.append(("dump", best(py + ["dump", "-o", work / "ours.xml", ref_md], args.repeat),
                 best(["/usr/sbin/thin_dump", "-o", work / "ref.xml", ref_md], args.repeat)))
    same = (work / "ours.xml").read_bytes() == (work / "ref.xml").read_bytes()
    rows.append(("restore",
                 best(py + ["restore", "-i", xml, "-o", our_md], args.repeat, blank(our_md)),
                 best(["/usr/sbin/thin_restore", "-i", xml, "-o", ref_md], args.repeat,
                      blank(ref_md))))
    rows.append(("ls", best(py + ["ls", "-o", "DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,SHARED_BLOCKS",
                                  ref_md], args.repeat),
                 best(["/usr/sbin/thin_ls", "-o", "DEV,MAPPED_BLOCKS,EXCLUSIVE_BLOCKS,"
                       "SHARED_BLOCKS", ref_md], args.repeat)))
    if (REPO / "dmthin" / "cli" / "cmd_check.py").exists():
        rows.append(("check", best(py + ["check", ref_md], args.repeat),
                     best(["/usr/sbin/thin_check", ref_md], args.repeat)))
    print(f"\n{'tool':8} {'dmthin s':>9} {'0.9.0 s':>9} {'ratio':>6} {'dmthin MiB':>11} "
          f"{'0.9.0 MiB':>10}")
    for name, (t1, r1, c1), (t2, r2, c2) in rows:
        flag = "" if not (c1 or c2) else f"  (exit {c1}/{c2})"
        print(f"{name:8} {t1:9.2f} {t2:9.2f} {t1 / t2:6.2f} {r1 / 1024:11.1f} "
              f"{r2 / 1024:10.1f}{flag}")
    print(f"\ndump output identical to thin_dump: {same}")
    chk = timed(["/usr/sbin/thin_check", "-q", our_md])
    print(f"thin_check 0.9.0 of dmthin restore's output: exit {chk[2]}")
    if tmp:
        tmp.cleanup()
    return 0


def profile(what: str, xml: Path, md: Path, work: Path) -> int:
    import cProfile
    import io
    import pstats
    sys.path.insert(0, str(REPO))
    from dmthin.cli.main import main as cli
    argv = {"dump": ["dump", "-o", str(work / "prof.xml"), str(md)],
            "restore": ["restore", "-i", str(xml), "-o", str(work / "prof.md")],
            "ls": ["ls", "-o", "DEV,EXCLUSIVE_BLOCKS", str(md)]}[what]
    if what == "restore":
        with open(work / "prof.md", "wb") as f:
            f.truncate(md.stat().st_size)
    prof = cProfile.Profile()
    prof.enable()
    with open(os.devnull, "w") as null:
        old, sys.stdout = sys.stdout, null
        try:
            cli(argv)
        finally:
            sys.stdout = old
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(15)
    print(s.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
