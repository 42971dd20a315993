"""``dmthin thin``: thin devices of a pool -- create, snapshot, delete, write,
read, discard, status, list.  Offsets and lengths take units (``64K``,
``1M``, ``8s``); large reads and writes stream in chunks with a progress
bar on stderr when it is a terminal."""
from __future__ import annotations

import json
import os
import sys

from ..errors import UsageError
from ..units import format_size, parse_size
from .cmd_pool import add_backend

CHUNK = 4 << 20


def _open(args):
    from .. import Pool
    return Pool.open(args.pooldir, backend=args.backend)


def _dev_id(text) -> int:
    if isinstance(text, int):
        return text
    if not text.isdigit():
        raise UsageError(f"invalid thin device id {text!r}: use a decimal number from 0 to "
                         "16777215")
    return int(text)


def _sizes(args) -> None:
    """Parse ids, offsets and lengths here, so a bad one is a one-line error
    like every other (argparse would print its usage too)."""
    for name in ("dev_id", "new_id", "origin_id"):
        if getattr(args, name, None) is not None:
            setattr(args, name, _dev_id(getattr(args, name)))
    for name, what in (("offset", "offset"), ("length", "length"), ("size", "thin device size")):
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, parse_size(value, what))


def _command(func):
    def run(args):
        _sizes(args)
        return func(args)
    return run


def _progress(total: int | None, desc: str):
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, leave=False)


def cmd_create(args) -> int:
    with _open(args) as pool:
        pool.create_thin(args.dev_id, args.size)
    return 0


def cmd_snapshot(args) -> int:
    with _open(args) as pool:
        pool.create_snap(args.new_id, args.origin_id)
    return 0


def cmd_delete(args) -> int:
    with _open(args) as pool:
        pool.delete(args.dev_id)
    return 0


def cmd_resize(args) -> int:
    with _open(args) as pool:
        # The size lives in the table (pool.json), not in the kernel's metadata.
        pool.resize_thin(args.dev_id, args.size)
    return 0


def cmd_write(args) -> int:
    close = False
    if args.input in (None, "-"):
        src = sys.stdin.buffer
    else:
        src = open(args.input, "rb")
        close = True
    try:
        with _open(args) as pool:
            thin = pool.thin(args.dev_id)
            known = None
            try:
                st = os.fstat(src.fileno())
                if st.st_mode & 0o170000 == 0o100000:
                    known = st.st_size - src.tell()
            except (OSError, ValueError, AttributeError):
                pass
            if known is not None and args.offset + known > thin.size:
                raise UsageError(f"input of {known} bytes at offset {args.offset} does not fit "
                                 f"thin device {args.dev_id} ({format_size(thin.size)}, "
                                 f"{thin.size} bytes)")
            bar = _progress(known, f"write {args.dev_id}")
            pos = args.offset
            try:
                while True:
                    chunk = src.read(CHUNK)
                    if not chunk:
                        break
                    thin.write(pos, chunk)
                    pos += len(chunk)
                    if bar:
                        bar.update(len(chunk))
            finally:
                if bar:
                    bar.close()
            thin.flush()
    finally:
        if close:
            src.close()
    return 0


def cmd_read(args) -> int:
    with _open(args) as pool:
        thin = pool.thin(args.dev_id)
        if args.offset > thin.size:
            raise UsageError(f"offset {args.offset} is past the end of thin device "
                             f"{args.dev_id} ({thin.size} bytes)")
        end = thin.size if args.length is None else min(thin.size, args.offset + args.length)
        out = sys.stdout.buffer if args.output in (None, "-") else open(args.output, "wb")
        bar = _progress(end - args.offset, f"read {args.dev_id}")
        try:
            pos = args.offset
            while pos < end:
                n = min(CHUNK, end - pos)
                out.write(thin.read(pos, n))
                pos += n
                if bar:
                    bar.update(n)
            out.flush()
        finally:
            if bar:
                bar.close()
            if out is not sys.stdout.buffer:
                out.close()
    return 0


def cmd_discard(args) -> int:
    with _open(args) as pool:
        thin = pool.thin(args.dev_id)
        thin.discard(args.offset, args.length)
        thin.flush()
    return 0


def _thin_doc(pool, dev_id: int) -> dict:
    thin = pool.thin(dev_id)
    st = thin.status()
    return {"dev_id": dev_id, "size": thin.size, "status_line": st.to_line(),
            "mapped_sectors": int(st.mapped_sectors),
            "mapped_bytes": int(st.mapped_sectors) * 512,
            "highest_mapped_sector": None if st.highest_mapped_sector is None
            else int(st.highest_mapped_sector),
            "table_line": thin.table_line()}


def cmd_status(args) -> int:
    with _open(args) as pool:
        doc = _thin_doc(pool, args.dev_id)
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"0 {doc['size'] // 512} thin {doc['status_line']}")
        print(f"Size: {format_size(doc['size'])} ({doc['size']} bytes)")
        print(f"Mapped: {format_size(doc['mapped_bytes'])} ({doc['mapped_bytes']} bytes)")
    return 0


def cmd_list(args) -> int:
    with _open(args) as pool:
        docs = [_thin_doc(pool, i) if i in pool.config.thins else
                {"dev_id": i, "size": None, "mapped_bytes": None, "status_line": None}
                for i in pool.thin_ids()]
    if args.json:
        json.dump(docs, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"{'DEV':>8} {'SIZE':>10} {'MAPPED':>10}  STATUS")
    for d in docs:
        size = "-" if d["size"] is None else format_size(d["size"])
        mapped = "-" if d["mapped_bytes"] is None else format_size(d["mapped_bytes"])
        print(f"{d['dev_id']:>8} {size:>10} {mapped:>10}  {d['status_line'] or '-'}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("thin", help="thin devices: create, snapshot, resize, delete, "
                                           "write, read, discard, status, list",
                              description="Thin devices of a pool directory.")
    subs = p.add_subparsers(dest="thin_command", metavar="SUBCOMMAND")
    subs.required = True

    def sub(name, func, help_text):
        s = subs.add_parser(name, help=help_text, description=help_text)
        s.add_argument("pooldir", metavar="POOLDIR")
        add_backend(s)
        s.set_defaults(func=_command(func))
        return s

    s = sub("create", cmd_create, "create a thin device (create_thin) with a size")
    s.add_argument("dev_id", metavar="ID")
    s.add_argument("--size", required=True,
                   help="virtual size, e.g. 10G")
    s = sub("snapshot", cmd_snapshot, "snapshot ORIGIN_ID as NEW_ID (create_snap)")
    s.add_argument("new_id", metavar="NEW_ID")
    s.add_argument("origin_id", metavar="ORIGIN_ID")
    s = sub("resize", cmd_resize, "set a thin device's size (the table length; mappings "
                                  "beyond a smaller size are kept but unreachable)")
    s.add_argument("dev_id", metavar="ID")
    s.add_argument("--size", required=True, help="new virtual size, e.g. 20G")
    s = sub("delete", cmd_delete, "delete a thin device")
    s.add_argument("dev_id", metavar="ID")
    s = sub("write", cmd_write, "write a file (or stdin) into a thin device, then flush")
    s.epilog = ("On a full pool with queue_if_no_space a write waits for space like the kernel "
                "does, up to the no-space timeout (60 s; the simulator reads "
                "DMTHIN_SIM_NO_SPACE_TIMEOUT), then fails with ENOSPC.")
    s.add_argument("dev_id", metavar="ID")
    s.add_argument("--offset", default="0", help="byte offset (default 0)")
    s.add_argument("--input", metavar="FILE|-", help="input file (default: stdin)")
    s = sub("read", cmd_read, "read from a thin device to a file (or stdout)")
    s.add_argument("dev_id", metavar="ID")
    s.add_argument("--offset", default="0", help="byte offset (default 0)")
    s.add_argument("--length", help="bytes to read (default: to the end)")
    s.add_argument("--output", metavar="FILE|-", help="output file (default: stdout)")
    s = sub("discard", cmd_discard, "discard a byte range (whole blocks inside it are unmapped)")
    s.add_argument("dev_id", metavar="ID")
    s.add_argument("--offset", required=True, help="byte offset")
    s.add_argument("--length", required=True, help="bytes")
    s = sub("status", cmd_status, "a thin device's kernel status line and usage")
    s.add_argument("dev_id", metavar="ID")
    s.add_argument("--json", action="store_true", help="print JSON")
    s = sub("list", cmd_list, "list the pool's thin devices")
    s.add_argument("--json", action="store_true", help="print JSON")
