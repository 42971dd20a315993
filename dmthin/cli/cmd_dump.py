"""``dmthin dump``: thin metadata to XML or human-readable text (thin_dump)."""
from __future__ import annotations

import io
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from ..errors import UsageError


def metadata_path(arg: str) -> str:
    """METADATA argument: a metadata file/device, or a pool directory (use
    its ``metadata`` file).  Raises :class:`UsageError` if it is missing."""
    p = Path(arg)
    if p.is_dir():
        p = p / "metadata"
        if not p.exists():
            raise UsageError(f"{arg} is a directory without a 'metadata' file: "
                             "give a metadata file or a pool directory")
    elif not p.exists():
        raise UsageError(f"{arg}: no such file or device: give a metadata file, device "
                         "or pool directory")
    return str(p)


@contextmanager
def progress_bar(total: int, desc: str, unit: str):
    """Yield an ``update(n_done)`` callable, or None: a tqdm bar on stderr
    only when stderr is a terminal and there is enough work to show."""
    if total < 100_000 or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm
    bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr,
               leave=False)
    last = [0]

    def update(done: int) -> None:
        if done - last[0] >= 65536 or done >= total:
            bar.update(done - last[0])
            last[0] = done
    try:
        yield update
    finally:
        bar.close()


@contextmanager
def text_output(path: str | None):
    """A buffered text stream to *path* (written to a temp file and renamed
    into place on success, so a failed run leaves no partial file), or to
    stdout when *path* is None or '-'."""
    if path is None or path == "-":
        out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="\n",
                               write_through=False, line_buffering=False)
        try:
            yield out
            out.flush()
        finally:
            out.detach()
        return
    target = Path(path)
    if target.exists() and not target.is_file():
        with open(target, "w", encoding="utf-8", newline="\n", buffering=1 << 20) as out:
            yield out
        return
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n", buffering=1 << 20) as out:
            yield out
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def fix_optional_snap(args) -> None:
    """``-m [BLOCK]`` before METADATA: argparse gives the path to -m; undo that.
    Raises :class:`UsageError` when METADATA is missing."""
    if args.metadata is None and args.metadata_snap not in (None, ""):
        if not args.metadata_snap.isdigit() or os.path.exists(args.metadata_snap):
            args.metadata, args.metadata_snap = args.metadata_snap, ""
    if args.metadata is None:
        raise UsageError("missing METADATA argument (a metadata file, device or pool "
                         "directory)")


def _snap_arg(value: str):
    if value == "":
        return True
    if not value.isdigit():
        raise UsageError(f"-m/--metadata-snap takes a block number, not {value!r}")
    return int(value)


def run(args) -> int:
    from ..thin.dump import dump, open_block_manager, total_mapped
    from ..thin.human import HumanReadableWriter
    from ..thin.xml import XmlWriter

    fix_optional_snap(args)
    path = metadata_path(args.metadata)
    snap = None if args.metadata_snap is None else _snap_arg(args.metadata_snap)
    bm = open_block_manager(path)
    try:
        total = total_mapped(bm, snap) if sys.stderr.isatty() else 0
        with progress_bar(total, "dump", "map") as update, text_output(args.output) as out:
            writer = XmlWriter(out) if args.format == "xml" else HumanReadableWriter(out)
            dump(bm, writer, metadata_snap=snap, dev_ids=args.dev_id,
                 skip_mappings=args.skip_mappings, progress=update)
    finally:
        bm.close()
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "dump", help="dump thin metadata as XML or text (like thin_dump)",
        description="Write thin-pool metadata as thin_dump 0.9.0 XML (or its human-readable "
                    "form). METADATA is a metadata file or device, or a pool directory.")
    p.add_argument("metadata", metavar="METADATA", nargs="?")
    p.add_argument("-f", "--format", choices=("xml", "human", "human_readable"), default="xml",
                   help="output format (default xml)")
    p.add_argument("-m", "--metadata-snap", nargs="?", const="", default=None, metavar="BLOCK",
                   help="dump the held metadata snapshot (or the one at BLOCK)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument("--dev-id", type=int, action="append", metavar="ID",
                   help="dump only this device (repeatable)")
    p.add_argument("--skip-mappings", action="store_true", help="omit the mappings")
    p.set_defaults(func=run)
