"""Corruption fuzz: a bit flipped in a metadata block and the block
re-sealed (its checksum fixed, so only the content is wrong), in every
sealed block of a pool with internal nodes, snapshots and a held metadata
snapshot, then:

* ``dmthin check`` is at least as strict as thin_check 0.9.0 and 1.1.0:
  whatever either refuses, it refuses;
* ``dmthin dump``, ``dmthin ls``, ``Pool.open`` (read-only) and reading
  every thin device never traceback (only dmthin's errors), never hang,
  never change the metadata or data file;
* they never return wrong data (a device missing or extra, a byte read back
  that was not written) unless ``dmthin check`` reports the damage, or the
  flip made other valid metadata that all three checks pass (a leaf key
  moved within its order); and where all three checks pass, ``dmthin dump``
  prints what thin_dump 0.9.0 prints.

Every sealed block gets one flip (a fixed sweep: block by block, an offset
from the block number), and hypothesis chooses more (block, byte, bit)
over all of them.  ``DMTHIN_FUZZ_FLIPS`` sets the hypothesis examples
(default 40).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dmthin import Pool
from dmthin.errors import DmThinError
from dmthin.pdata.checksum import BLOCK_SIZE, block_kind
from forge import read_block, write_block
from helpers import THIN_TOOLS_090_DIR, pdata_tools_110_gated
from helpers import run_dmthin as dmthin

FLIPS = int(os.environ.get("DMTHIN_FUZZ_FLIPS", "40"))
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
BS = 64 << 10
SECONDS = 30
#: thin id -> {virtual block: the tag written at its start}
EXPECTED: dict[int, dict[int, bytes]] = {}


def _tag(dev: int, block: int) -> bytes:
    return f"dev{dev:02d}blk{block:05d}".encode()


def make_base(path: Path) -> dict[int, dict[int, bytes]]:
    """A pool whose trees have internal nodes (thin 1: 400 mappings), a
    snapshot with rewritten blocks, a thin with a few mappings, an empty
    one, and a held metadata snapshot.  Returns what each thin holds."""
    want: dict[int, dict[int, bytes]] = {1: {}, 2: {}, 3: {}, 4: {}}
    with Pool.create(path, data_size=600 * BS, metadata_size="2M", block_size=BS,
                     backend="sim") as pool:
        t = pool.create_thin(1, 512 * BS)
        for b in range(400):
            t.write(b * BS, _tag(1, b))
            want[1][b] = _tag(1, b)
        t.flush()
        s = pool.create_snap(2, 1)
        want[2] = dict(want[1])
        for b in range(0, 400, 40):
            s.write(b * BS, _tag(2, b))
            want[2][b] = _tag(2, b)
        s.flush()
        pool.reserve_metadata_snap()
        u = pool.create_thin(3, 16 * BS)
        for b in (0, 5, 15):
            u.write(b * BS, _tag(3, b))
            want[3][b] = _tag(3, b)
        pool.create_thin(4, 4 * BS)
    return want


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corrupt") / "pool"
    EXPECTED.update(make_base(path))
    return path


def sealed_blocks(meta: Path) -> list[int]:
    """Blocks with a valid seal at their own location: every block in use
    (and stale copies the space maps count free)."""
    out = []
    with open(meta, "rb") as f:
        b = 0
        while buf := f.read(BLOCK_SIZE):
            if len(buf) == BLOCK_SIZE and block_kind(buf) is not None \
                    and int.from_bytes(buf[8:16], "little") == b:
                out.append(b)
            b += 1
    return out



class Hang(Exception):
    pass


def _alarm(_sig: int, _frame: object) -> None:
    raise Hang()


def bounded(what: str, call, *args):  # type: ignore[no-untyped-def]
    """*call(*args)* within :data:`SECONDS`."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(SECONDS)
    try:
        return call(*args)
    except Hang:
        pytest.fail(f"{what} ran for more than {SECONDS} s")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def state(pool: Path) -> tuple[str, int, int]:
    data = (pool / "data").stat()
    return (hashlib.sha1((pool / "metadata").read_bytes()).hexdigest(), data.st_size,
            data.st_mtime_ns)


def read_all(pool: Path) -> str | None:
    """Open the pool read-only and read every thin device's tags; return a
    description of the first wrong answer (None: all right, or a clean
    dmthin error)."""
    try:
        with Pool.open(pool, readonly=True) as p:
            ids = p.thin_ids()
            if ids != sorted(EXPECTED):
                return f"thin ids {ids}"
            for dev, blocks in EXPECTED.items():
                t = p.thin(dev)
                for b in range(t.size // BS):
                    want = blocks.get(b, bytes(16))
                    got = t.read(b * BS, 16)
                    if got != want.ljust(16, b"\0"):
                        return f"thin {dev} block {b}: {got!r}"
    except (DmThinError, OSError):
        return None
    return None


def flip_and_judge(base: Path, block: int, offset: int, bit: int) -> str:
    """Flip *bit* of byte *offset* of *block* in a copy of *base*, re-seal
    it, and judge every reader (see the module docstring); returns what
    happened, for the figures."""
    work = Path(tempfile.mkdtemp(prefix="dmthin-flip-", dir=SCRATCH))
    try:
        pool = work / "pool"
        shutil.copytree(base, pool)
        meta = pool / "metadata"
        buf = read_block(meta, block)
        buf[offset] ^= 1 << bit
        write_block(meta, block, buf)
        ours = bounded("dmthin check", dmthin, "check", meta)
        assert ours.returncode in (0, 1) and b"Traceback" not in ours.stderr, ours.stderr
        theirs = [subprocess.run([*argv, str(meta)], capture_output=True, timeout=SECONDS)
                  for argv in ([os.path.join(THIN_TOOLS_090_DIR, "thin_check"), "-q"],
                               [pdata_tools_110_gated(), "thin_check", "-q"])]
        fail090, fail110 = (r.returncode != 0 for r in theirs)
        damaged = ours.returncode != 0
        if fail090 or fail110:
            assert damaged, (f"thin_check {'0.9.0' if fail090 else '1.1.0'} refuses block "
                             f"{block} byte {offset} bit {bit}; dmthin check passes")
        before = state(pool)
        for argv in (("dump", meta), ("dump", "--repair", meta), ("ls", meta),
                     ("ls", "-m", meta)):
            r = bounded(f"dmthin {argv[0]}", dmthin, *argv)
            assert r.returncode in (0, 1) and b"Traceback" not in r.stderr, (argv, r.stderr)
            if r.returncode:
                assert len(r.stderr.decode().strip().splitlines()) == 1, (argv, r.stderr)
        wrong = bounded("open and read", read_all, pool)
        assert state(pool) == before, "a reader changed the pool's files"
        # Data other than written, with no check finding damage: the flip made
        # other valid metadata (e.g. a leaf's key 15 -> 14, still ascending:
        # no checker can tell), whose meaning is what is read as long as
        # dmthin reads it as thin_dump 0.9.0 does (below).
        remapped = wrong is not None and not (damaged or fail090 or fail110)
        assert wrong is None or damaged or remapped, \
            f"wrong data without a finding of check: {wrong}"
        if not (damaged or fail090 or fail110):
            ref = subprocess.run([os.path.join(THIN_TOOLS_090_DIR, "thin_dump"), str(meta)],
                                 capture_output=True, timeout=SECONDS)
            r = dmthin("dump", meta)
            assert (r.returncode, r.stdout) == (ref.returncode, ref.stdout), \
                "dmthin dump differs from thin_dump 0.9.0 on metadata all checks pass"
        return "refused" if damaged else "valid remap" if remapped else "harmless"
    finally:
        shutil.rmtree(work, ignore_errors=True)


#: flips tried and what came of them (for the note)
FIGURES: dict[str, int] = {}


def _count(outcome: str) -> None:
    FIGURES["flips"] = FIGURES.get("flips", 0) + 1
    FIGURES[outcome] = FIGURES.get(outcome, 0) + 1


def test_one_flip_in_every_sealed_block(base: Path) -> None:
    """The fixed sweep: every sealed block, one flip each (header or used
    payload, an offset and bit from the block number)."""
    blocks = sealed_blocks(base / "metadata")
    assert len(blocks) > 20, blocks
    for i, b in enumerate(blocks):
        offset = 4 + (b * 2654435761 + i) % (16 + 32 + 8 * 64 - 4)   # header and first entries
        _count(flip_and_judge(base, b, offset, (b + i) % 8))


@st.composite
def flips(draw: st.DrawFn) -> tuple[int, int, int]:
    block = draw(st.sampled_from(SEALED))
    offset = draw(st.one_of(st.integers(4, 63), st.integers(4, 32 + 16 * 126),
                            st.integers(4, BLOCK_SIZE - 1)))
    return block, offset, draw(st.integers(0, 7))


def _sealed_of_a_fresh_base() -> list[int]:
    with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
        make_base(Path(d) / "pool")
        return sealed_blocks(Path(d) / "pool" / "metadata")


SEALED = _sealed_of_a_fresh_base()


@settings(max_examples=FLIPS, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(flip=flips())
@example(flip=(0, 4, 0))                         # the superblock's flags: needs_check
@example(flip=(0, 32, 1))                        # the magic (only the kernel checks it)
def test_random_flips(base: Path, flip: tuple[int, int, int]) -> None:
    _count(flip_and_judge(base, *flip))


def test_zz_figures(capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\ncorruption fuzz: {FIGURES} over {len(SEALED)} sealed blocks")
