"""``dmthin restore``: metadata XML to thin metadata (thin_restore)."""
from __future__ import annotations

import os
import sys


def _natural(text: str) -> int:
    from ..errors import UsageError
    if not (text.isascii() and text.isdigit()):
        raise UsageError(f"{text!r} is not a non-negative integer")
    return int(text)


def run(args) -> int:
    from ..errors import UsageError
    from ..thin.restore import restore
    from .cmd_dump import progress_bar

    stdin = args.input == "-"
    if not stdin and not os.path.exists(args.input):
        raise UsageError(f"input {args.input} does not exist")
    pool = None
    if os.path.isdir(args.output):
        # A pool directory: restore its metadata under the pool's writer lock,
        # so a running dmthin process on that pool is never overwritten.
        from ..pooldir import PoolDir
        pool = PoolDir(args.output)
        args.output = os.path.join(args.output, "metadata")
    overrides = {k: None if getattr(args, k) is None else _natural(getattr(args, k))
                 for k in ("transaction_id", "data_block_size", "nr_data_blocks")}
    size = os.path.getsize(args.input) if not stdin and os.path.isfile(args.input) else 0
    total = size if sys.stderr.isatty() and not args.quiet and size > (8 << 20) else 0
    if pool is not None:
        pool.lock()
    try:
        with progress_bar(total, "restore", "B") as update:
            source = sys.stdin.buffer if stdin else args.input
            restore(source, args.output, progress=update, **overrides)
    finally:
        if pool is not None:
            pool.unlock()
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "restore", help="write thin metadata from XML (like thin_restore)",
        description="Restore thin-pool metadata from thin_dump XML (0.9.0 or 1.x form). The "
                    "output must exist; its size fixes the metadata size. The whole input is "
                    "validated before anything is written (the input is read twice; memory "
                    "does not grow with the number of mappings). OUTPUT may be a pool "
                    "directory.")
    p.add_argument("-i", "--input", required=True, metavar="XML",
                   help="the XML file, or - for stdin (copied to a temporary file: it is "
                        "read twice)")
    p.add_argument("-o", "--output", required=True, metavar="METADATA")
    p.add_argument("--transaction-id", metavar="N", help="override the transaction id")
    p.add_argument("--data-block-size", metavar="SECTORS", help="override the data block size")
    p.add_argument("--nr-data-blocks", metavar="N", help="override the number of data blocks")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
