"""Fidelity traces: replay pool operations on the simulator and on the real
kernel through the public :class:`dmthin.Pool` API, and compare what each
backend reported (a test library: the tests in tests/fidelity and
``python -m tracelib``, which tools/fidelity runs, use it).

- :mod:`.format`: reading and writing traces, the bytes a step writes;
- :mod:`.runner`: replaying a trace on one backend (:func:`~.runner.run_trace`);
- :mod:`.generate`: random traces from a seed;
- :mod:`.compare`: the compared quantities, :class:`~.compare.Tally`, the report;
- :mod:`.suite`: hand-written and generated traces on both backends.

A trace is JSON lines.  The first line is the header::

    {"name": "...", "pool": {"data_size": "16M", "metadata_size": "4M",
     "block_size": "64K", "low_water_mark": 8, "features": []},
     "no_space_timeout": 2}

Every other line is one step (offsets and sizes in bytes, or "64K"-style):

    {"op": "create_thin", "id": 1, "size": "4M"}
    {"op": "create_snap", "id": 2, "origin": 1}
    {"op": "delete", "id": 1}
    {"op": "set_transaction_id", "old": 0, "new": 1}
    {"op": "message", "text": "create_thin 7"}
    {"op": "reserve_metadata_snap"}         {"op": "release_metadata_snap"}
    {"op": "write", "id": 1, "offset": 0, "length": 4096, "seed": 5}   (or "byte": 83)
    {"op": "writes", "seed": 9, "ios": [[id, offset, length], ...]}    (one step)
    {"op": "writes", "seed": 9, "id": 1, "blocks": [0, 5, 7]}           (whole blocks)
    {"op": "discard", "id": 1, "offset": 0, "length": 65536}
    {"op": "flush", "id": 1}   {"op": "status"}   {"op": "reopen"}
    {"op": "activate", "id": 1}   {"op": "deactivate", "id": 1}

Written bytes are ``random.Random(f"{seed}:{k}").randbytes(length)`` for the
k-th I/O of the step.  After every step the runner records the pool status,
the status line of every active thin, the pool's event counter and the errno
of a failing step (for "writes": [index, errno] of each failing I/O).  At the
end it reads every thin device (sha256), closes the pool (kernel: teardown)
and runs thin_dump, thin_ls and thin_check 0.9.0 on the metadata file (through
a read-only loop device where the file system refuses O_DIRECT).

The kernel commits every second, the simulator only on messages, flushes,
status and close; traces that free blocks (discard) commit (flush or status)
before the next allocation, so data allocation is the same on both.
"""
from __future__ import annotations

from .compare import Tally, compare, report
from .format import TRACES_DIR, load_trace, save_trace
from .generate import generate
from .runner import run_trace
from .suite import suite, trace_files

__all__ = ["TRACES_DIR", "Tally", "compare", "generate", "load_trace", "report", "run_trace",
           "save_trace", "suite", "trace_files"]
