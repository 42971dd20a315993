"""Fuzz of the API's inputs: hypothesis drives a simulator :class:`Pool`
with valid operation sequences (create, snapshot, delete, resize, write,
discard, flush, read back, transaction ids, metadata snapshots, reopen)
interleaved with hostile calls (wrong types, bools, floats, numbers as
strings, None, negative and huge ids, sizes, offsets and lengths, names
with ``/``, NUL or over 127 bytes, messages the kernel refuses).

Every failure must be a dmthin error meaning what the kernel's errno means
(:class:`~dmthin.errors.UsageError` is the EINVAL of a malformed size or
name); a hostile call changes nothing: after it the pool still equals an
independent model of the operations it accepted (ids, sizes, every byte
of every device, the transaction id), and at the end, closed, it passes
``dmthin check`` and both thin_checks, and opens again equal to the model.

``DMTHIN_FUZZ_API_EXAMPLES`` sets the number of sequences (default 40).
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from dmthin import Pool
from dmthin.errors import DmThinError, InvalidArgument, UsageError
from dmthin.target.message import parse_message
from dmthin.thin.check import check_metadata
from helpers import THIN_TOOLS_090_DIR, pdata_tools_110_gated

#: tmpfs when there is one: the pool's fsyncs cost nothing there
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
EXAMPLES = int(os.environ.get("DMTHIN_FUZZ_API_EXAMPLES", "40"))
BS = 64 << 10                       # the pool's data block size
NR_BLOCKS = 3                       # small: running out of data space is part of the fuzz
THIN_MAX = 8 * BS

IDS = st.integers(0, 5)
SIZES = st.one_of(st.integers(1, THIN_MAX // BS).map(lambda b: b * BS),
                  st.integers(1, THIN_MAX // 512).map(lambda s: s * 512))
HOSTILE_IDS = st.sampled_from([-1, 1 << 24, 1 << 64, -(1 << 70), True, False, 1.0, 2.5,
                               float("nan"), "1", "\u0663", b"1", None, [1], 1j])
HOSTILE_SIZES = st.sampled_from([0, -512, 511, 513, 1 << 80, (1 << 63) * 512, True, 1.5,
                                 float("inf"), "1.5", "\u0661M", "1M\0", "-1M", "", "M", None,
                                 b"1M", [BS], "9" * 5000, "1e6"])
HOSTILE_NAMES = st.sampled_from(["", ".", "..", "a/b", "x" * 128, "a\0b", "a b", "é",
                                 "\udcff", 5, b"name", True])
HOSTILE_OFFSETS = st.sampled_from([-1, -BS, 1.0, 0.5, True, "0", None, b"0", 1 << 70,
                                   THIN_MAX * 4, float("nan"), [0]])
HOSTILE_DATA = st.sampled_from(["text", None, 5, 1.5, [1, 2], {"a": 1}, True])
HOSTILE_MESSAGES = st.sampled_from([5, None, b"create_thin 1", "create_thin -1",
                                    "create_thin 1\0", "create_thin", "delete",
                                    "create_thin 16777216", "create_thin 1 2",
                                    "create_snap 1", "set_transaction_id 0",
                                    "set_transaction_id a b", "create_thin \u0661",
                                    "create_thin ++1",
                                    "create_thin 0x1", "create_thin -0", "", " ", "x" * 5000,
                                    "create_thin " + "9" * 5000, "reserve_metadata_snap 1"])

#: errno a hostile argument may give (UsageError stands for EINVAL)
BAD_ARGUMENT = {errno.EINVAL}


def errno_of(err: BaseException) -> int:
    """The errno a dmthin error means; fails the test for anything else."""
    assert isinstance(err, DmThinError), f"{type(err).__name__} is not a dmthin error: {err}"
    if isinstance(err, UsageError):
        return errno.EINVAL
    assert isinstance(err, OSError), f"{type(err).__name__} without an errno: {err}"
    assert err.errno is not None
    return err.errno


class Model:
    """What the pool must hold: devices (size and bytes by data block),
    transaction id, metadata snapshot."""

    def __init__(self) -> None:
        self.sizes: dict[int, int] = {}
        self.blocks: dict[int, dict[int, bytes]] = {}
        self.transaction = 0
        self.held = False

    def read(self, dev: int, off: int, n: int) -> bytes:
        out = bytearray()
        while n > 0:
            b, inner = divmod(off, BS)
            take = min(n, BS - inner)
            block = self.blocks[dev].get(b, bytes(BS))
            out += block[inner:inner + take]
            off += take
            n -= take
        return bytes(out)


class PoolFuzz(RuleBasedStateMachine):
    """The pool against :class:`Model`, hostile calls interleaved."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="dmthin-apifuzz-", dir=SCRATCH))
        self.model = Model()
        self.pool: Pool | None = None
        self.tries = 0

    @initialize()
    def create(self) -> None:
        self.pool = Pool.create(self.dir / "pool", data_size=NR_BLOCKS * BS, metadata_size="2M",
                                block_size=BS, features=["error_if_no_space"], backend="sim")

    # -- helpers ------------------------------------------------------------------------
    @property
    def p(self) -> Pool:
        assert self.pool is not None
        return self.pool

    def refuse(self, expected: set[int], call: Any, *args: Any, **kwargs: Any) -> None:
        """*call* must fail with one of *expected* errnos and change nothing."""
        self.tries += 1
        try:
            call(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - every exception is judged here
            code = errno_of(err)
            assert code in expected, (call, args, kwargs, errno.errorcode.get(code), err)
        else:
            raise AssertionError(f"{call.__name__}{args}{kwargs} was accepted")

    def pick(self, choice: int) -> int:
        """An existing device (by *choice*), or *choice* if there is none."""
        ids = sorted(self.model.sizes)
        return ids[choice % len(ids)] if ids else choice

    # -- valid operations ---------------------------------------------------------------
    @rule(dev=IDS, size=SIZES, as_text=st.booleans())
    def create_thin(self, dev: int, size: int, as_text: bool) -> None:
        arg: int | str = f"{size // 512}s" if as_text else size
        if dev in self.model.sizes:
            self.refuse({errno.EEXIST}, self.p.create_thin, dev, arg)
            return
        self.p.create_thin(dev, arg)
        self.model.sizes[dev] = size
        self.model.blocks[dev] = {}

    @rule(dev=IDS, origin=IDS)
    def create_snap(self, dev: int, origin: int) -> None:
        if dev in self.model.sizes:
            # the kernel says EEXIST first, whether the origin exists or not
            self.refuse({errno.EEXIST}, self.p.create_snap, dev, origin)
        elif origin not in self.model.sizes:
            self.refuse({errno.ENODATA}, self.p.create_snap, dev, origin)
        else:
            self.p.create_snap(dev, origin)
            self.model.sizes[dev] = self.model.sizes[origin]
            self.model.blocks[dev] = dict(self.model.blocks[origin])

    @rule(dev=IDS)
    def delete(self, dev: int) -> None:
        if dev not in self.model.sizes:
            self.refuse({errno.ENODATA}, self.p.delete, dev)
            return
        self.p.delete(dev)
        del self.model.sizes[dev], self.model.blocks[dev]

    @rule(dev=IDS, size=SIZES)
    def resize_thin(self, dev: int, size: int) -> None:
        if dev not in self.model.sizes:
            self.refuse({errno.ENODATA}, self.p.resize_thin, dev, size)
            return
        self.p.resize_thin(dev, size)
        self.model.sizes[dev] = size

    @rule(dev=IDS, block=st.integers(0, THIN_MAX // BS - 1), inner=st.integers(0, BS - 1),
          length=st.integers(1, 600), fill=st.integers(1, 255), whole=st.booleans())
    def write(self, dev: int, block: int, inner: int, length: int, fill: int,
              whole: bool) -> None:
        """A write inside one data block (so running out of space is all or nothing)."""
        dev = self.pick(dev)
        if dev not in self.model.sizes:
            return
        if whole and self.model.sizes[dev] >= BS:       # mostly inside the device
            block %= self.model.sizes[dev] // BS
        inner, length = (0, BS) if whole else (inner, min(length, BS - inner))
        off = block * BS + inner
        data = bytes([fill]) * length
        t = self.p.thin(dev)
        if off + length > self.model.sizes[dev]:
            self.refuse({errno.ENOSPC}, t.write, off, data)
            return
        try:
            t.write(off, data)
        except Exception as err:  # noqa: BLE001 - judged: only running out of space
            assert errno_of(err) == errno.ENOSPC, err
            assert t.read(off, length) == self.model.read(dev, off, length)
            FIGURES["writes out of space"] += 1
            return
        old = self.model.blocks[dev].get(block, bytes(BS))
        self.model.blocks[dev][block] = old[:inner] + data + old[inner + length:]
        FIGURES["writes"] += 1

    @rule(dev=IDS, first=st.integers(0, THIN_MAX // BS - 1), count=st.integers(1, 8),
          fill=st.integers(1, 255))
    def fill(self, dev: int, first: int, count: int, fill: int) -> None:
        """Whole blocks written one by one, as far as the device and the
        pool's space go (the way to run out of data space)."""
        dev = self.pick(dev)
        blocks = self.model.sizes.get(dev, 0) // BS
        first = first % blocks if blocks else first
        for block in range(first, min(first + count, blocks)):
            self.write(dev, block, 0, BS, fill, True)

    @rule(dev=IDS, start=st.integers(0, THIN_MAX // BS), count=st.integers(0, 3),
          ragged=st.booleans())
    def discard(self, dev: int, start: int, count: int, ragged: bool) -> None:
        dev = self.pick(dev)
        if dev not in self.model.sizes:
            return
        off, n = start * BS + (100 if ragged else 0), count * BS
        t = self.p.thin(dev)
        if off + n > self.model.sizes[dev]:
            self.refuse({errno.ENOSPC}, t.discard, off, n)
            return
        t.discard(off, n)
        first = -(-off // BS)
        for b in range(first, (off + n) // BS):      # whole blocks inside the range
            self.model.blocks[dev].pop(b, None)

    @rule(dev=IDS)
    def flush(self, dev: int) -> None:
        dev = self.pick(dev)
        if dev not in self.model.sizes:
            return
        try:
            self.p.thin(dev).flush()
        except Exception as err:  # noqa: BLE001 - judged: only the kernel's no-space flush
            # out of data space, an empty flush is a write to block 0 (dm-thin)
            assert errno_of(err) == errno.ENOSPC, err
            assert self.p.status().mode.value == "out_of_data_space", err
            assert 0 not in self.model.blocks[dev], err

    @rule(new=st.integers(0, 1 << 64), right=st.booleans())
    def set_transaction_id(self, new: int, right: bool) -> None:
        old = self.model.transaction if right else self.model.transaction + 1
        if not right:
            self.refuse({errno.EINVAL}, self.p.set_transaction_id, old, new)
            return
        if new >= 1 << 64:
            self.refuse({errno.EINVAL}, self.p.set_transaction_id, old, new)
            return
        self.p.set_transaction_id(old, new)
        self.model.transaction = new

    @rule()
    def reserve_metadata_snap(self) -> None:
        if self.model.held:
            self.refuse({errno.EBUSY}, self.p.reserve_metadata_snap)
            return
        self.p.reserve_metadata_snap()
        self.model.held = True

    @rule()
    def release_metadata_snap(self) -> None:
        if not self.model.held:
            self.refuse({errno.EINVAL}, self.p.release_metadata_snap)
            return
        self.p.release_metadata_snap()
        self.model.held = False

    @rule(extra=st.integers(1, 3))
    def grow_data(self, extra: int) -> None:
        current = self.p.status().total_data_blocks
        self.p.resize_data((current + extra) * BS)

    @rule()
    def reopen(self) -> None:
        self.p.close()
        self.pool = Pool.open(self.dir / "pool")
        self.check_contents()

    # -- hostile calls ------------------------------------------------------------------
    @rule(data=st.data(), kind=st.integers(0, 6))
    def hostile(self, data: st.DataObject, kind: int) -> None:
        """One hostile call of each kind (one rule: the valid operations stay
        most of the sequence)."""
        if kind == 0:
            self.hostile_id(data.draw(HOSTILE_IDS), data.draw(st.sampled_from([BS, "1M"])))
        elif kind == 1:
            self.hostile_size(data.draw(IDS), data.draw(HOSTILE_SIZES))
        elif kind == 2:
            self.hostile_name(data.draw(HOSTILE_NAMES))
        elif kind == 3:
            self.hostile_range(data.draw(IDS), data.draw(HOSTILE_OFFSETS),
                               data.draw(st.integers(0, BS)))
        elif kind == 4:
            self.hostile_data(data.draw(IDS), data.draw(HOSTILE_DATA))
        elif kind == 5:
            self.hostile_message(data.draw(HOSTILE_MESSAGES))
        else:
            self.hostile_transaction(data.draw(HOSTILE_IDS), data.draw(HOSTILE_IDS))

    def hostile_id(self, dev: object, size: object) -> None:
        p = self.p
        for call, args in ((p.create_thin, (dev, size)), (p.create_snap, (dev, 0)),
                           (p.create_snap, (0, dev)), (p.delete, (dev,)),
                           (p.resize_thin, (dev, size)), (p.thin, (dev,)),
                           (p.deactivate_thin, (dev,))):
            self.refuse(BAD_ARGUMENT, call, *args)

    def hostile_size(self, dev: object, size: object) -> None:
        new = next(i for i in range(6, 100) if i not in self.model.sizes)
        self.refuse(BAD_ARGUMENT, self.p.create_thin, new, size)
        if dev in self.model.sizes:
            self.refuse(BAD_ARGUMENT, self.p.resize_thin, dev, size)
        self.refuse(BAD_ARGUMENT, self.p.resize_data, size)
        self.refuse(BAD_ARGUMENT, self.p.resize_metadata, size)

    def hostile_name(self, name: object) -> None:
        new = next(i for i in range(6, 100) if i not in self.model.sizes)
        self.refuse(BAD_ARGUMENT, self.p.create_thin, new, BS, name=name)
        if self.model.sizes:
            origin = min(self.model.sizes)
            self.refuse(BAD_ARGUMENT, self.p.create_snap, new, origin, name=name)

    def hostile_range(self, dev: int, offset: object, good: int) -> None:
        dev = self.pick(dev)
        if dev not in self.model.sizes:
            return
        t = self.p.thin(dev)
        whole = isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0
        past = {errno.ENOSPC} if whole else BAD_ARGUMENT
        self.refuse(past, t.write, offset, b"x")
        self.refuse(past, t.discard, offset, BS)
        self.refuse(BAD_ARGUMENT | {errno.ENOSPC}, t.discard, good, offset)
        if whole:
            assert t.read(offset, 10) == b""          # past the end: short, as pread
        else:
            self.refuse(BAD_ARGUMENT, t.read, offset, 10)
            self.refuse(BAD_ARGUMENT, t.read, good, offset)

    def hostile_data(self, dev: int, data: object) -> None:
        dev = self.pick(dev)
        if dev in self.model.sizes:
            self.refuse(BAD_ARGUMENT, self.p.thin(dev).write, 0, data)

    def hostile_message(self, text: object) -> None:
        self.refuse(BAD_ARGUMENT, self.p.message, text)

    def hostile_transaction(self, old: object, new: object) -> None:
        self.refuse(BAD_ARGUMENT, self.p.set_transaction_id, old, new)

    # -- the model ------------------------------------------------------------------------
    @invariant()
    def ids_and_sizes(self) -> None:
        FIGURES["steps"] += 1
        if self.pool is None:
            return
        assert self.p.thin_ids() == sorted(self.model.sizes)
        for dev, size in self.model.sizes.items():
            assert self.p.thin(dev).size == size
        status = self.p.status()
        assert status.transaction_id == self.model.transaction
        assert (status.held_root is not None) == self.model.held
        assert not status.needs_check and status.mode.value in ("rw", "out_of_data_space"), \
            status

    def check_contents(self) -> None:
        for dev, size in self.model.sizes.items():
            t = self.p.thin(dev)
            assert t.read(0, size) == self.model.read(dev, 0, size), f"thin {dev} differs"

    @precondition(lambda self: self.pool is not None)
    @rule()
    def read_back(self) -> None:
        self.check_contents()

    def teardown(self) -> None:
        try:
            if self.pool is not None:
                self.check_contents()
                self.p.close()
                meta = self.dir / "pool" / "metadata"
                res = check_metadata(meta)
                assert res.ok, res.problems
                for argv in self.thin_checks(meta):
                    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
                    assert r.returncode == 0, (argv, r.stdout, r.stderr)
                self.pool = Pool.open(self.dir / "pool")
                self.check_contents()
                self.p.close()
                FIGURES["sequences"] += 1
                FIGURES["hostile or failing calls"] += self.tries
        finally:
            if self.pool is not None:
                self.pool.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def thin_checks(meta: Path) -> list[list[str]]:
        return [[os.path.join(THIN_TOOLS_090_DIR, "thin_check"), str(meta)],
                [pdata_tools_110_gated(), "thin_check", str(meta)]]



#: sequences run, calls that had to fail, writes that ran out of space (for the note)
FIGURES = {"sequences": 0, "steps": 0, "hostile or failing calls": 0, "writes": 0,
           "writes out of space": 0}

PoolFuzz.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestPoolFuzz = PoolFuzz.TestCase


def test_zz_figures(capsys: pytest.CaptureFixture[str]) -> None:
    """Print the count of hostile calls (for the note), after the fuzz."""
    with capsys.disabled():
        print(f"\nAPI fuzz: {FIGURES}")


@pytest.mark.parametrize("text", ["create_thin " + "9" * 5000,
                                  "create_thin " + "0" * 5000 + "1" * 21,
                                  "set_transaction_id 0 " + "9" * 4301, "create_thin ++1"])
def test_message_numbers_past_64_bits(text: str) -> None:
    """Found by the fuzz: a 5000-digit id raised ValueError (Python's int()
    limit) instead of EINVAL; refused as kstrtoull refuses it."""
    with pytest.raises(InvalidArgument):
        parse_message(text)


def test_message_numbers_as_kstrtoull() -> None:
    """kstrtoull takes one leading '+' and any number of leading zeros."""
    assert parse_message("create_thin +7").args == (7,)
    assert parse_message("create_thin " + "0" * 5000 + "7").args == (7,)
