"""Fuzz of every command line: hypothesis builds argv for every (sub)command
the parser has (read from the parser itself, so a new command is fuzzed
too), its options and positionals filled with values valid and hostile:
pool directories in many states (sound, empty, half made, locked by another
holder, damaged metadata, bad pool.json, files that are symlinks to files
outside, a symlinked POOLDIR), metadata and XML files, symlinks to files
and directories, dangling links, missing paths, names of undecodable bytes,
numbers and sizes in every hostile spelling (Unicode digits, superscripts,
5000 digits, floats, signs, units).

Every run, in this process (``helpers.run_dmthin``), must end with exit
status 0, or 1 with one line saying why (2 for the usage errors of
commands that do not mirror thin-provisioning-tools; those never exit 2),
never a traceback, never a hang; the files outside the working directory
(the targets of the hostile pool's symlinks, the symlinked POOLDIR's pool)
are never touched; a read-only command changes no file at all.  The kernel
backend is never chosen (this runs on the host).

``DMTHIN_FUZZ_EXAMPLES`` sets the number of argv tried (default 300; a
bench run: 5000).
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dmthin.cli.common import TOOL_USAGE_EXIT
from dmthin.cli.main import build_parser
from dmthin.graph import Driver
from forge import make_pool, read_block, write_block
from helpers import run_dmthin as dmthin

#: commands not fuzzed: replay runs a long workload by design
SKIP = {("replay",)}
#: tmpfs when there is one: the pools' fsyncs cost nothing there
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
EXAMPLES = int(os.environ.get("DMTHIN_FUZZ_EXAMPLES", "300"))
SECONDS_PER_RUN = 20
GRAPH_OPTIONS = ("dm.loopdatasize=64M", "dm.loopmetadatasize=4M", "dm.basesize=16M",
                 "dm.fs=ext4", "dm.min_free_space=0%")
UNDECODABLE = os.fsdecode(b"p\xff\xfe")        # a name that is not UTF-8


def commands() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every leaf (sub)command path and its parser."""
    out = []

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            if path not in SKIP:
                out.append((path, parser))
            return
        for name, sub in subs[0].choices.items():
            if sub.prog.split()[-1] == name:         # an alias is fuzzed under its name
                walk(sub, (*path, name))
    walk(build_parser(), ())
    return out


COMMANDS = commands()
IS_TOOL = {path: getattr(parser, "usage_exit_code", 2) == TOOL_USAGE_EXIT
           for path, parser in COMMANDS}
#: commands that must not change any file (their -o/--output aside)
READ_ONLY = {("check",), ("delta",), ("dump",), ("ls",), ("rmap",), ("metadata-size",),
             ("dm", "version"), ("dm", "ls"), ("graph", "status"), ("graph", "ls"),
             ("graph", "cat"), ("graph", "export"), ("pool", "status"), ("thin", "status"),
             ("thin", "list"), ("thin", "ls"), ("thin", "read")}
#: options that make a read-only command write its input
WRITING_OPTIONS = {"--auto-repair", "--clear-needs-check-flag"}
#: pool directories in the working directory, by state
POOLS = ["pool", "graphroot", "hostile", "linkpool", "empty", "junk", "halfpool", "nodata",
         "badjson", "zeros", "shortmeta", "locked", "needscheck", UNDECODABLE]
FILES = ["meta.bin", "dump.xml", "bad.xml", "text.txt", "filelink", "dirlink", "dangling",
         "pool/metadata", "pool/data", "pool/pool.json", "hostile/metadata",
         f"{UNDECODABLE}/metadata", "out", f"out/{UNDECODABLE}.xml", "out/new", "out/new.xml",
         "missing/x", "-", "", ".", "..", "./pool/../meta.bin"]
PATHS = POOLS + FILES
NUMBERS = ["0", "1", "2", "3", "7", "42", "128", "16777215", "16777216", "4294967296",
           "18446744073709551616", "-1", "+1", " 1", "1.5", "1e3", "0x10", "nan", "inf",
           "\u0661\u0662\u0663", "\u00b2", "\u2460", "9" * 5000, "0" * 5000 + "1", "", "1_000",
           "\udcff"]
SIZES = ["64K", "1M", "8M", "512", "0", "1.5M", "16E", "8E", "999999999999999999999E", "10G",
         "-5M", "0.1", "1e9", "\u0661M", "1KiB", "1 K B", "9" * 400 + ".5", "128", "65536"]
WORDS = ["create_thin 9", "delete 1", "create_snap 9 1", "set_transaction_id 0 1",
         "set_transaction_id 1 2", "reserve_metadata_snap", "release_metadata_snap", "bogus",
         "xml", "human", "DEV,MAPPED", "DEV,NOPE", "skip_block_zeroing", "error_if_no_space",
         "read_only", "nosuch", "dm.basesize=1G", "dm.basesize=9" + "9" * 400, "0..10",
         "10..0", "a..b", "sim", "thinpool-x", "\udcff\udcfe", "x" * 300, "a/b", "a\nb"]


#: values a command accepts, drawn half of the time (so commands get past
#: their checks and run)
VALID = {"pool": ["pool", UNDECODABLE, "empty", "out/newpool", "graphroot"],
         "metadata": ["meta.bin", "pool/metadata", "filelink", f"{UNDECODABLE}/metadata"],
         "input": ["dump.xml", "text.txt", "meta.bin"],
         "output": ["out/new", "out/new.xml", f"out/{UNDECODABLE}.xml", "meta.bin"],
         "id": ["1", "2", "3", "9"], "size": ["64K", "1M", "128", "2M", "64s"],
         "offset": ["0", "4096", "64K", "1"], "region": ["0..10", "2..3"],
         "format": ["DEV,MAPPED", "xml", "human"], "message": WORDS[:7],
         "feature": ["skip_block_zeroing", "error_if_no_space"], "opt": ["dm.basesize=1G"],
         "backend": ["sim"], "name": ["thinpool-x"], "mark": ["0", "10"]}


def kind_of(name: str) -> str:
    """Which kind of value an option or positional *name* takes."""
    if name in ("pooldir", "root"):
        return "pool"
    if name in ("metadata", "ignored", "metadata-dev", "data-dev", "data", "path"):
        return "metadata"
    if name in ("input", "output", "backend", "region", "format", "message", "feature",
                "opt", "name"):
        return name
    if "size" in name:
        return "size"
    if name in ("offset", "length"):
        return "offset"
    if "mark" in name or "lines" in name or "blocks" in name:
        return "mark"
    if "id" in name or "snap" in name or "thin" in name:
        return "id"
    return "any"


#: options a tame run always gives (a command without them only says so)
ESSENTIAL = {"input", "output", "region", "metadata"}
HOSTILE = {"pool": POOLS + FILES, "metadata": PATHS, "input": PATHS, "output": PATHS,
           "size": SIZES + NUMBERS, "offset": SIZES + NUMBERS, "id": NUMBERS + WORDS,
           "mark": NUMBERS + WORDS, "backend": ["nosuch", "", "dm", "kernel"],
           "any": WORDS + PATHS + NUMBERS}


def value(name: str, tame: bool) -> st.SearchStrategy[str]:
    """A value for the option or positional *name*: valid if *tame*, else
    valid or hostile."""
    kind = kind_of(name.lstrip("-").replace("_", "-"))
    valid = st.sampled_from(VALID.get(kind, VALID["id"]))
    return valid if tame else st.one_of(valid, st.sampled_from(HOSTILE.get(kind,
                                                                           HOSTILE["any"])))


@st.composite
def argvs(draw: st.DrawFn) -> list[str]:
    path, parser = draw(st.sampled_from(COMMANDS))
    tame = draw(st.booleans())                    # every value valid: the command runs
    argv = list(path)
    opts = [a for a in parser._actions if a.option_strings and
            not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]
    chosen = draw(st.lists(st.sampled_from(opts), max_size=3)) if opts else []
    # required options, and in a tame run the ones naming files and regions
    chosen += [a for a in opts if a.required or (tame and kind_of(
        a.option_strings[-1].lstrip("-")) in ESSENTIAL and a not in chosen)]
    for action in chosen:
        flag = draw(st.sampled_from(action.option_strings))
        if action.nargs == 0:
            argv.append(flag)
        else:
            text = draw(value(action.option_strings[-1], tame))
            argv += [f"{flag}={text}"] if draw(st.booleans()) and flag.startswith("--") \
                else [flag, text]
    for action in parser._actions:
        if action.option_strings:
            continue
        if action.nargs in ("?", "*", argparse.REMAINDER, "..."):
            most = 1 if tame or action.nargs == "?" else 2
            argv += draw(st.lists(value(action.dest, tame), min_size=int(tame), max_size=most))
        else:
            argv.append(draw(value(action.dest, tame)))
    if not tame and draw(st.integers(0, 9)) == 0:     # a stray argument now and then
        argv.insert(draw(st.integers(len(path), len(argv))), draw(st.sampled_from(WORDS + NUMBERS)))
    return argv


def _copy(src: Path, dst: Path) -> None:
    if src.is_symlink():
        dst.symlink_to(os.readlink(src))
    elif src.is_dir():
        shutil.copytree(src, dst, symlinks=True)
    else:
        shutil.copy2(src, dst)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scratch tree copied for each run: ``outside/`` (files no command
    may touch) and ``cwd/`` (the working directory: pools in every state,
    metadata, XML, links)."""
    root = tmp_path_factory.mktemp("fuzz")
    out, cwd = root / "outside", root / "cwd"
    out.mkdir()
    cwd.mkdir()
    make_pool(out / "realpool", data_size="1M")
    shutil.copytree(out / "realpool", cwd / "pool")
    for name in ("data", "metadata"):
        shutil.copy(out / "realpool" / name, out / f"sentinel-{name}")
    (out / "sentinel-lock").write_bytes(b"precious\n")
    hostile = cwd / "hostile"
    hostile.mkdir(mode=0o700)
    shutil.copy(cwd / "pool" / "pool.json", hostile / "pool.json")
    for name, target in (("data", "data"), ("metadata", "metadata"), (".lock", "lock")):
        (hostile / name).symlink_to(out / f"sentinel-{target}")
    (cwd / "linkpool").symlink_to(out / "realpool")
    (cwd / "empty").mkdir(mode=0o700)
    (cwd / "junk").mkdir(mode=0o700)
    (cwd / "junk" / "notes").write_text("someone's file\n")
    (cwd / "halfpool").mkdir(mode=0o700)
    shutil.copy(cwd / "pool" / "pool.json", cwd / "halfpool" / "pool.json")
    for name, change in (("nodata", "nodata"), ("badjson", "badjson"), ("zeros", "zeros"),
                         ("shortmeta", "short"), ("locked", None), ("needscheck", "flag"),
                         (UNDECODABLE, None)):
        shutil.copytree(cwd / "pool", cwd / name)
        meta = cwd / name / "metadata"
        if change == "nodata":
            (cwd / name / "data").unlink()
        elif change == "badjson":
            (cwd / name / "pool.json").write_bytes(b'{"backend": "\xff\xfe"}')
        elif change == "zeros":
            size = meta.stat().st_size
            meta.write_bytes(b"")
            os.truncate(meta, size)
        elif change == "short":
            os.truncate(meta, 3 * 4096)
        elif change == "flag":
            _set_needs_check(meta)
    shutil.copy(cwd / "pool" / "metadata", cwd / "meta.bin")
    (cwd / "dump.xml").write_bytes(dmthin("dump", cwd / "pool").stdout)
    (cwd / "bad.xml").write_text('<superblock uuid="" time="0" transaction="1" '
                                 'data_block_size="128" nr_data_blocks="1099511627776">\n'
                                 '<device dev_id="1" mapped_blocks="0" transaction="0" '
                                 'creation_time="0" snap_time="0">\n<range_mapping '
                                 'origin_begin="0" data_begin="0" length="1099511627776" '
                                 'time="0"/>\n</device>\n</superblock>\n')
    (cwd / "text.txt").write_text("not metadata\n")
    (cwd / "filelink").symlink_to("meta.bin")
    (cwd / "out").mkdir()
    (cwd / "dirlink").symlink_to("out")
    (cwd / "dangling").symlink_to("nowhere")
    with Driver(cwd / "graphroot", GRAPH_OPTIONS, backend="sim", cleanup_interval=None) as drv:
        drv.create("layer1", "")
        drv.create("layer2", "layer1")
    for side in ("pool.json", ".lock"):                # as dockerd leaves it
        (cwd / "graphroot" / "devicemapper" / side).unlink(missing_ok=True)
    return root


def _set_needs_check(meta: Path) -> None:
    """Set the superblock's needs_check flag, re-sealed."""
    buf = read_block(meta, 0)
    buf[4] |= 1                                   # flags: le32 after the checksum
    write_block(meta, 0, buf)


def tree_state(top: Path, skip: set[Path] = frozenset()) -> dict[str, tuple[int, int, str]]:
    """Every entry under *top*: mode, size and content hash (targets of links)."""
    state: dict[str, tuple[int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p in skip:
                continue
            st_ = os.lstat(p)
            digest = os.readlink(p) if p.is_symlink() else \
                hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else ""
            size = 0 if p.is_dir() and not p.is_symlink() else st_.st_size
            state[str(p.relative_to(top))] = (st_.st_mode, size, digest)
    return state


@contextmanager
def sandbox(template: Path, argv: list[str]) -> Iterator[Path]:
    """A fresh scratch tree: ``outside/`` and, as the current directory,
    ``cwd/`` holding the entries of the template *argv* names; the pool
    ``locked`` is locked by this process (another open file, as another
    dmthin would)."""
    scratch = Path(tempfile.mkdtemp(prefix="dmthin-fuzz-", dir=SCRATCH))
    old = os.getcwd()
    lock_fd = None
    try:
        _copy(template / "outside", scratch / "outside")
        cwd = scratch / "cwd"
        cwd.mkdir()
        joined = "\0".join(argv)
        for src in (template / "cwd").iterdir():
            if src.name in joined or src.name in ("meta.bin", "out"):
                _copy(src, cwd / src.name)
        if (cwd / "locked").exists():
            lock_fd = os.open(cwd / "locked" / "metadata", os.O_RDONLY)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
        os.chdir(cwd)
        yield scratch
    finally:
        os.chdir(old)
        if lock_fd is not None:
            os.close(lock_fd)
        shutil.rmtree(scratch, ignore_errors=True)


class Hang(Exception):
    pass


def _alarm(_sig: int, _frame: object) -> None:
    raise Hang()


#: notices the mirrored tools print before their result, as the tools do
NOTICES = ("--pool-inactive no longer required",)


def error_lines(err: str) -> list[str]:
    """The lines of *err* past argparse's usage block and the tools' notices."""
    lines = [ln for ln in err.splitlines() if not ln.startswith(NOTICES)]
    if lines and lines[0].startswith("usage:"):
        lines = lines[1:]
        while lines and lines[0].startswith(" "):
            lines = lines[1:]
    return lines


#: the runs counted (for the note's figures); printed at the end of the test
RUNS = {"runs": 0, "exit 0": 0, "exit 1": 0, "exit 2": 0}
SUCCEEDED: set[tuple[str, ...]] = set()


@settings(max_examples=EXAMPLES, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
@given(argv=argvs())
@example(argv=["pool", "status", "hostile"])
@example(argv=["pool", "create", "hostile", "--force", "--data-size=1M"])
@example(argv=["pool", "create", "linkpool", "--data-size", "1M"])
@example(argv=["restore", "-i", "dump.xml", "-o", "hostile"])
@example(argv=["restore", "-i", "dump.xml", "-o", "linkpool"])
@example(argv=["thin", "create", "locked", "9", "--size", "1M"])
@example(argv=["dump", UNDECODABLE, "-o", f"out/{UNDECODABLE}.xml"])
@example(argv=["ls", f"{UNDECODABLE}/metadata"])
@example(argv=["thin", "list", UNDECODABLE])
@example(argv=["pool", "status", "badjson"])
@example(argv=["thin", "write", "pool", "1", "--offset", "9" * 5000, "--input", "text.txt"])
@example(argv=["pool", "create", "empty", "--data-size", "16E"])
@example(argv=["check", "meta.bin", "--auto-repair"])
@example(argv=["trim", "--metadata-dev", "pool", "--data-dev", "pool", "--pool-inactive"])
@example(argv=["dm", "version", "a\nb"])
@example(argv=["graph", "cat", "--opt", "dm.basesize=" + "9" * 400, "graphroot", "0", "x"])
def test_every_command_fails_cleanly(template: Path, monkeypatch: pytest.MonkeyPatch,
                                     argv: list[str]) -> None:
    monkeypatch.setenv("DMTHIN_SIM_NO_SPACE_TIMEOUT", "0.2")
    cmd = tuple(argv[:2]) if tuple(argv[:2]) in IS_TOOL else (argv[0],)
    read_only = cmd in READ_ONLY and not WRITING_OPTIONS & set(argv)
    with sandbox(template, argv) as scratch:
        outside = tree_state(scratch / "outside")
        cwd = scratch / "cwd"
        outputs = {cwd / a.split("=", 1)[1] for a in argv if a.startswith("--output=")} | \
            {cwd / argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-o", "--output")}
        inside = tree_state(cwd, skip=outputs) if read_only else {}
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(SECONDS_PER_RUN)
        try:
            p = dmthin(*argv, input=b"some input\n")
        except Hang:
            pytest.fail(f"dmthin {argv!r} ran for more than {SECONDS_PER_RUN} s")
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        err = p.stderr.decode("utf-8", "replace")
        RUNS["runs"] += 1
        RUNS[f"exit {p.returncode}"] = RUNS.get(f"exit {p.returncode}", 0) + 1
        if p.returncode == 0:
            SUCCEEDED.add(cmd)
        assert "Traceback" not in err, (argv, err)
        allowed = {0, 1} if IS_TOOL[cmd] else {0, 1, 2}
        assert p.returncode in allowed, (argv, p.returncode, err)
        if p.returncode:
            lines = error_lines(err)
            # check lists its findings, metadata-size prints thin_metadata_size's messages
            if cmd not in (("check",), ("metadata-size",)):
                assert len(lines) == 1, (argv, "not one line", err)
            quiet = cmd == ("check",) and {"-q", "--quiet"} & set(argv)  # thin_check -q
            assert quiet or (lines and lines[-1].strip()), (argv, "failed without saying why")
        assert tree_state(scratch / "outside") == outside, \
            (argv, "a file outside the working directory changed")
        if read_only:
            assert tree_state(cwd, skip=outputs) == inside, \
                (argv, "a read-only command changed a file")


def test_zz_figures(capsys: pytest.CaptureFixture[str]) -> None:
    """Print the count of argv tried (for the note), after the fuzz."""
    with capsys.disabled():
        print(f"\nCLI fuzz: {RUNS} over {len(COMMANDS)} commands, "
              f"{len(SUCCEEDED)} of them with a run that succeeded")
