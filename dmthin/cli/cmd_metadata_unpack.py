"""``dmthin metadata-unpack``: thin-provisioning-tools 1.x's thin_metadata_unpack."""
from __future__ import annotations

import argparse
from typing import Any

from ..errors import UsageError
from ..thin.pack import unpack
from .commands import SUMMARIES
from .common import add_command, add_version_arg


def register(subs: Any) -> None:
    """Add the ``metadata-unpack`` subcommand."""
    p = add_command(subs, "metadata-unpack", run, SUMMARIES["metadata-unpack"], tool=True)
    p.add_argument("-i", "--input", metavar="FILE", help="the input")
    p.add_argument("-o", "--output", metavar="FILE", help="the output (a new file unless -f)")
    p.add_argument("-f", "--force", action="store_true", help="replace an existing output")
    add_version_arg(p)


def run(args: argparse.Namespace) -> int:
    """Unpack; return 0.  Raises UsageError, MetadataError and OSError."""
    if not args.input or not args.output:
        raise UsageError("give both -i INPUT and -o OUTPUT")
    unpack(args.input, args.output, force=args.force)
    return 0
