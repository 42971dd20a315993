"""Handlers of ``dmthin thin write|read|discard``: stream data in and out of
a thin device in chunks, with a progress bar on a terminal.  Registered by
:mod:`dmthin.cli.cmd_thin`, which parses ids, offsets and lengths first."""
from __future__ import annotations

import argparse
import os
import stat
import sys
from contextlib import nullcontext
from typing import BinaryIO

from ..errors import UsageError
from ..sim.params import DEFAULT_NO_SPACE_TIMEOUT, NO_SPACE_TIMEOUT_ENV, env_seconds
from ..units import format_size
from .common import binary_output
from .pool_args import open_pool
from .progress import command_report

CHUNK = 4 << 20

#: the longest a command waits for data space (seconds): the kernel's
#: default no-space timeout.  The simulator's "queue for ever" (a no-space
#: timeout of 0) is not honoured by the command line: while a command holds
#: the pool's writer lock no other process can add space, so it would hang
#: for ever, lock held; it waits this long and then fails with ENOSPC.
CLI_NO_SPACE_TIMEOUT = DEFAULT_NO_SPACE_TIMEOUT


def bound_no_space_wait() -> None:
    """Make this process's simulated pools give up waiting for space after
    :data:`CLI_NO_SPACE_TIMEOUT` when asked to wait for ever.  Raises
    :class:`UsageError` for a bad ``DMTHIN_SIM_NO_SPACE_TIMEOUT``."""
    if env_seconds(NO_SPACE_TIMEOUT_ENV, None) == 0:
        os.environ[NO_SPACE_TIMEOUT_ENV] = str(CLI_NO_SPACE_TIMEOUT)


def _input_size(src: BinaryIO) -> int | None:
    """Bytes left in *src* if it is a regular file, else None."""
    try:
        st = os.fstat(src.fileno())
        if stat.S_ISREG(st.st_mode):
            return st.st_size - src.tell()
    except (OSError, ValueError, AttributeError):
        pass
    return None


def run_write(args: argparse.Namespace) -> int:
    """Write the input at ``--offset``, then flush.  Raises
    :class:`UsageError` if a regular input file does not fit."""
    stdin = args.input in (None, "-")
    bound_no_space_wait()
    with (nullcontext(sys.stdin.buffer) if stdin else open(args.input, "rb")) as src, \
            open_pool(args) as pool:
        thin = pool.thin(args.dev_id)
        known = _input_size(src)
        if known is not None and args.offset + known > thin.size:
            raise UsageError(f"input of {known} bytes at offset {args.offset} does not fit "
                             f"thin device {args.dev_id} ({format_size(thin.size)}, "
                             f"{thin.size} bytes)")
        with command_report(f"write {args.dev_id}", "B", binary=True) as report:
            pos = args.offset
            while chunk := src.read(CHUNK):
                thin.write(pos, chunk)
                pos += len(chunk)
                report.progress(pos - args.offset, known)
        thin.flush()
    return 0


def run_read(args: argparse.Namespace) -> int:
    """Copy ``--length`` bytes (default: to the end) from ``--offset`` out.
    Raises :class:`UsageError` for an offset past the end.  Writes nothing."""
    with open_pool(args, readonly=True) as pool:
        thin = pool.thin(args.dev_id)
        if args.offset > thin.size:
            raise UsageError(f"offset {args.offset} is past the end of thin device "
                             f"{args.dev_id} ({thin.size} bytes)")
        end = thin.size if args.length is None else min(thin.size, args.offset + args.length)
        to_stdout = args.output in (None, "-")
        with (nullcontext(sys.stdout.buffer) if to_stdout else binary_output(args.output)) as out, \
                command_report(f"read {args.dev_id}", "B", binary=True) as report:
            pos = args.offset
            while pos < end:
                n = min(CHUNK, end - pos)
                out.write(thin.read(pos, n))
                pos += n
                report.progress(pos - args.offset, end - args.offset)
            out.flush()
    return 0


def run_discard(args: argparse.Namespace) -> int:
    """Discard the byte range, then flush."""
    with open_pool(args) as pool:
        thin = pool.thin(args.dev_id)
        thin.discard(args.offset, args.length)
        thin.flush()
    return 0
