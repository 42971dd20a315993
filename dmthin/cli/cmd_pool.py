"""``dmthin pool``: create a thin pool, show its status, send it messages."""
from __future__ import annotations

import json
import os
import sys

from ..units import human_size_decimal

BACKEND_HELP = "sim (simulated, no root needed; the default) or kernel (device-mapper, root)"


def add_backend(p, default=None) -> None:
    p.add_argument("--backend", choices=("sim", "kernel"), default=default,
                   help=BACKEND_HELP + ("" if default else "; default: the pool's own"))


def docker_summary(pool, status) -> list[tuple[str, str]]:
    """The pool figures in Docker's ``Status()`` words and units."""
    bs = pool.data_block_size
    data_used = status.used_data_blocks * bs
    data_total = status.total_data_blocks * bs
    meta_used = status.used_metadata_blocks * 4096
    meta_total = status.total_metadata_blocks * 4096
    data_avail = data_total - data_used
    meta_avail = meta_total - meta_used
    # Docker caps "Available" at the free space of the filesystem under a loop file.
    for path, attr in ((pool.pooldir.data_path, "data"), (pool.pooldir.metadata_path, "meta")):
        try:
            st = os.statvfs(path)
        except OSError:
            continue
        free = st.f_bfree * st.f_frsize
        if attr == "data":
            data_avail = min(data_avail, free)
        else:
            meta_avail = min(meta_avail, free)
    return [("Pool Blocksize", human_size_decimal(bs)),
            ("Data Space Used", human_size_decimal(data_used)),
            ("Data Space Total", human_size_decimal(data_total)),
            ("Data Space Available", human_size_decimal(data_avail)),
            ("Metadata Space Used", human_size_decimal(meta_used)),
            ("Metadata Space Total", human_size_decimal(meta_total)),
            ("Metadata Space Available", human_size_decimal(meta_avail))]


def cmd_create(args) -> int:
    from .. import Pool
    lwm = None
    if args.low_water_mark is not None:
        try:
            lwm = int(args.low_water_mark)
        except ValueError:
            from ..errors import UsageError
            raise UsageError(f"invalid low water mark {args.low_water_mark!r}: "
                             "give a number of data blocks") from None
    with Pool.create(args.pooldir, data_size=args.data_size, metadata_size=args.metadata_size,
                     block_size=args.block_size, low_water_mark=lwm, features=args.feature,
                     backend=args.backend) as pool:
        print(pool.table_line())
    return 0


def cmd_status(args) -> int:
    from .. import Pool
    with Pool.open(args.pooldir, backend=args.backend) as pool:
        status = pool.status()
        summary = docker_summary(pool, status)
        if args.json:
            doc = {"status_line": status.to_line(), "table_line": pool.table_line(),
                   "backend": pool.backend, "data_block_size": pool.data_block_size,
                   "transaction_id": status.transaction_id,
                   "used_metadata_blocks": int(status.used_metadata_blocks),
                   "total_metadata_blocks": int(status.total_metadata_blocks),
                   "used_data_blocks": int(status.used_data_blocks),
                   "total_data_blocks": int(status.total_data_blocks),
                   "held_root": status.held_root, "mode": status.mode.value,
                   "discard": status.discard.value,
                   "no_space_policy": status.no_space_policy.value,
                   "needs_check": status.needs_check,
                   "metadata_low_watermark": status.metadata_low_watermark,
                   "thins": {str(k): v for k, v in sorted(pool.config.thins.items())},
                   "summary": dict(summary)}
            json.dump(doc, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            length = pool.table_line().split()[1]
            print(f"0 {length} thin-pool {status.to_line()}")
            for key, value in summary:
                print(f"{key}: {value}")
    return 0


def cmd_message(args) -> int:
    from .. import Pool
    with Pool.open(args.pooldir, backend=args.backend) as pool:
        result = pool.message(args.message)
    if result:
        print(result)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("pool", help="create a thin pool, show its status, send messages",
                              description="Thin pools in a directory (data and metadata "
                                          "sparse files, pool.json).")
    subs = p.add_subparsers(dest="pool_command", metavar="SUBCOMMAND")
    subs.required = True

    c = subs.add_parser("create", help="create a pool directory and format the pool",
                        description="Create POOLDIR (0700) with sparse data and metadata files "
                                    "(0600) and format a thin pool over them. Sizes take units "
                                    "K, M, G, T (binary) or s (sectors).")
    c.add_argument("pooldir", metavar="POOLDIR")
    c.add_argument("--data-size", default="100G",
                   help="data file size (default 100G)")
    c.add_argument("--metadata-size", default="2G",
                   help="metadata file size (default 2G)")
    c.add_argument("--block-size", default="64K",
                   help="data block size, a multiple of 64K from 64K to 1G (default 64K)")
    c.add_argument("--low-water-mark", metavar="BLOCKS",
                   help="free data blocks that raise an event (default min(32768, blocks/10))")
    c.add_argument("--feature", action="append", default=[], metavar="F",
                   help="pool feature: skip_block_zeroing, ignore_discard, "
                        "no_discard_passdown, read_only, error_if_no_space (repeatable)")
    add_backend(c, default="sim")
    c.set_defaults(func=cmd_create)

    s = subs.add_parser("status", help="the pool's kernel status line and a summary",
                        description="Print the kernel's thin-pool status line, then the "
                                    "figures as 'docker info' shows them.")
    s.add_argument("pooldir", metavar="POOLDIR")
    s.add_argument("--json", action="store_true", help="print JSON")
    add_backend(s)
    s.set_defaults(func=cmd_status)

    m = subs.add_parser("message", help="send a thin-pool message",
                        description="Send a thin-pool target message, e.g. 'create_thin 1', "
                                    "'create_snap 2 1', 'delete 2', 'set_transaction_id 0 1', "
                                    "'reserve_metadata_snap', 'release_metadata_snap'.")
    m.add_argument("pooldir", metavar="POOLDIR")
    m.add_argument("message", metavar="MSG")
    add_backend(m)
    m.set_defaults(func=cmd_message)

