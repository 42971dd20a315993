"""``dmthin pool``: create a thin pool, show its status, send it messages."""
from __future__ import annotations

import argparse
from typing import Any

from ..errors import UsageError
from ..graph.dsstatus import pool_summary
from ..pool import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_DATA_SIZE,
    DEFAULT_METADATA_SIZE,
    DOCKER_LOW_WATER_MARK,
    Pool,
)
from ..target.table import POOL_FEATURES
from ..units import (
    DATA_BLOCK_SIZE_MAX_SECTORS,
    DATA_BLOCK_SIZE_MIN_SECTORS,
    MAX_DATA_BLOCKS,
    SECTOR_SIZE,
    format_size,
    parse_int,
    parse_size,
)
from .activation import register_pool
from .commands import SUMMARIES
from .common import add_command, add_group, emit_json
from .pool_args import add_pool_args, open_pool

_MIN_BLOCK = format_size(DATA_BLOCK_SIZE_MIN_SECTORS * SECTOR_SIZE)
_MAX_BLOCK = format_size(DATA_BLOCK_SIZE_MAX_SECTORS * SECTOR_SIZE)


def register(subs: Any) -> None:
    """Add the ``pool`` command group."""
    pool = add_group(subs, "pool", SUMMARIES["pool"],
                     description="Thin pools in a directory (data and metadata sparse "
                                 "files, pool.json).")
    c = add_command(pool, "create", run_create,
                    "create a pool directory and format the pool",
                    description="Create POOLDIR (0700) with sparse data and metadata files "
                                "(0600) and format a thin pool over them. Sizes take units "
                                "K, M, G, T (binary) or s (sectors).")
    add_pool_args(c, create=True)
    c.add_argument("--data-size", default=DEFAULT_DATA_SIZE,
                   help=f"data file size (default {DEFAULT_DATA_SIZE})")
    c.add_argument("--metadata-size", default=DEFAULT_METADATA_SIZE,
                   help=f"metadata file size (default {DEFAULT_METADATA_SIZE})")
    c.add_argument("--block-size", default=DEFAULT_BLOCK_SIZE,
                   help=f"data block size, a multiple of {_MIN_BLOCK} from {_MIN_BLOCK} to "
                        f"{_MAX_BLOCK} (default {DEFAULT_BLOCK_SIZE})")
    c.add_argument("--low-water-mark", metavar="BLOCKS",
                   help=f"free data blocks that raise an event (default "
                        f"min({DOCKER_LOW_WATER_MARK}, blocks/10))")
    c.add_argument("--feature", action="append", default=[], metavar="F",
                   help="pool feature: " + ", ".join(POOL_FEATURES) + " (repeatable)")
    c.add_argument("--name", help="the pool's device-mapper name (kernel backend; default "
                                  "dmthin-MAJ:MIN-INO-pool of POOLDIR)")
    c.add_argument("--force", action="store_true",
                   help="format over metadata that holds a pool (destroys it)")

    s = add_command(pool, "status", run_status, "the pool's kernel status line and a summary",
                    description="Print the kernel's thin-pool status line, then the "
                                "figures as 'docker info' shows them.")
    add_pool_args(s)
    s.add_argument("--json", action="store_true", help="print JSON")

    m = add_command(pool, "message", run_message, "send a thin-pool message",
                    description="Send a thin-pool target message, e.g. 'create_thin 1', "
                                "'create_snap 2 1', 'delete 2', 'set_transaction_id 0 1', "
                                "'reserve_metadata_snap', 'release_metadata_snap'.")
    add_pool_args(m)
    m.add_argument("message", metavar="MSG")
    register_pool(pool)


def _low_water_mark(args: argparse.Namespace) -> int:
    """``--low-water-mark``: a number of data blocks within the pool (when
    its sizes parse; else the library names the bad size).  Raises
    :class:`UsageError`."""
    try:
        nr_blocks = parse_size(args.data_size, "data size") // \
            parse_size(args.block_size, "block size")
    except (UsageError, ZeroDivisionError):
        nr_blocks = MAX_DATA_BLOCKS
    return parse_int(args.low_water_mark, "low water mark", maximum=nr_blocks,
                     limit_note="the pool's data blocks")


def run_create(args: argparse.Namespace) -> int:
    """Create the pool and print its table line.  Raises what
    :meth:`dmthin.Pool.create` raises."""
    lwm = None if args.low_water_mark is None else _low_water_mark(args)
    with Pool.create(args.pooldir, data_size=args.data_size, metadata_size=args.metadata_size,
                     block_size=args.block_size, low_water_mark=lwm, features=args.feature,
                     backend=args.backend, name=args.name, force=args.force,
                     allow_other_owner=args.allow_other_owner) as pool:
        print(pool.table_line())
    return 0


def run_status(args: argparse.Namespace) -> int:
    """Print the status line and the summary (or JSON); writes nothing."""
    with open_pool(args, readonly=True) as pool:
        status = pool.status()
        summary = pool_summary(pool, status)
        if args.json:
            emit_json({"status_line": status.to_line(), "table_line": pool.table_line(),
                       "backend": pool.backend, "data_block_size": pool.data_block_size,
                       **status.to_dict(),
                       "thins": {str(k): v for k, v in sorted(pool.config.thins.items())},
                       "summary": dict(summary)})
        else:
            length = pool.table_line().split()[1]
            print(f"0 {length} thin-pool {status.to_line()}")
            for key, value in summary:
                print(f"{key}: {value}")
    return 0


def run_message(args: argparse.Namespace) -> int:
    """Send the message; print its result, if any."""
    with open_pool(args) as pool:
        result = pool.message(args.message)
    if result:
        print(result)
    return 0
