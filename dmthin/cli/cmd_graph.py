"""``dmthin graph``: inspect a Docker devicemapper graph root.

ROOT is the driver home, dockerd's ``DATA_ROOT/devicemapper`` (or a root
``dmthin.graph`` made).  Every subcommand opens it read-only: not a byte of
the root, its pool or Docker's records changes.  ID is a device hash
(``base`` for the base device), or a layer chain id or container id from
dockerd's layer store beside the root (12 or more hex digits).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ..graph import Driver, format_status
from ..graph.inspection import cat, export, find_device, list_devices
from ..graph.layerdb import LayerDB
from ..graph.rootpool import driver_home
from .commands import SUMMARIES
from .common import add_command, add_group, emit_json
from .pool_args import add_backend_arg


def register(subs: Any) -> None:
    """Add the ``graph`` command group."""
    graph = add_group(subs, "graph", SUMMARIES["graph"],
                      description="Inspect a Docker devicemapper graph root (dockerd's "
                                  "DATA_ROOT/devicemapper, or one dmthin.graph made) without "
                                  "changing a byte of it.")
    s = add_command(graph, "status", run_status, "Docker's 'docker info' storage section")
    _root_args(s)
    ls = add_command(graph, "ls", run_ls, "devices: hash, thin id, size, flags, layer")
    _root_args(ls)
    ls.add_argument("--json", action="store_true", help="print JSON")
    c = add_command(graph, "cat", run_cat, "print a file of a layer or container")
    _root_args(c)
    c.add_argument("id", metavar="ID", help="device hash, 'base', chain id or container id")
    c.add_argument("path", metavar="PATH", help="the file's path as the container sees it")
    e = add_command(graph, "export", run_export, "write a layer's diff as a tar")
    _root_args(e)
    e.add_argument("id", metavar="ID", help="device hash, 'base', chain id or container id")
    e.add_argument("-o", "--output", metavar="FILE", required=True,
                   help="the tar to write ('-' for stdout)")
    e.add_argument("--parent", metavar="ID",
                   help="diff against this layer (default: the parent dockerd's layer store "
                        "names; none: the whole tree)")


def _root_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", metavar="ROOT",
                   help="the driver home, DATA_ROOT/devicemapper (DATA_ROOT also works)")
    add_backend_arg(p)
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a dm.* storage option as given to dockerd (repeatable), e.g. "
                        "dm.thinpooldev=/dev/mapper/NAME or dm.min_free_space=5%%")


def _open(args: argparse.Namespace) -> Driver:
    return Driver(driver_home(args.root), args.opt, backend=args.backend, cleanup_interval=None,
                  readonly=True)


def run_status(args: argparse.Namespace) -> int:
    """Print Docker's Status() of ROOT."""
    with _open(args) as drv:
        sys.stdout.write("Storage Driver: devicemapper\n" + format_status(drv.status()))
    return 0


def run_ls(args: argparse.Namespace) -> int:
    """List the devices in ROOT's pool and Docker's records of them."""
    with _open(args) as drv:
        rows = list_devices(drv, LayerDB.for_root(drv.home))
    if args.json:
        emit_json([r.to_dict() for r in rows])
        return 0
    print(f"{'HASH':<66} {'ID':>8} {'SIZE':>14} {'TX':>6} FLAGS")
    for r in rows:
        flags = [f for f, on in (("initialized", r.initialized), ("deleted", r.deleted),
                                 ("no-record", r.hash is None),
                                 ("not-in-pool", not r.in_pool)) if on]
        if r.layer is not None:
            flags.append(f"{r.layer.kind}={r.layer.name}")
        size = "-" if r.size is None else str(r.size)
        tx = "-" if r.transaction_id is None else str(r.transaction_id)
        print(f"{r.label:<66} {r.device_id:>8} {size:>14} {tx:>6} {','.join(flags) or '-'}")
    return 0


def run_cat(args: argparse.Namespace) -> int:
    """Copy one file of a layer to stdout."""
    with _open(args) as drv:
        device = find_device(drv, LayerDB.for_root(drv.home), args.id)
        sys.stdout.flush()
        cat(drv, device, args.path, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Write a layer's diff against its parent as a tar."""
    with _open(args) as drv:
        layers = LayerDB.for_root(drv.home)
        device = find_device(drv, layers, args.id)
        if args.parent is not None:
            parent = find_device(drv, layers, args.parent)
        else:
            parent = layers.parent_of(device) or ""
        with binary_output(args.output) as out:
            export(drv, device, parent, out)
    return 0


@contextmanager
def binary_output(path: str) -> Iterator[IO[bytes]]:
    """stdout for '-', else a new file written under a temporary name and
    renamed into place on success (a failed export leaves no partial tar)."""
    if path == "-":
        sys.stdout.flush()
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
