"""``dmthin replay docker-article``: replay the 2014 Docker storage article
through the graph driver (see :mod:`dmthin.graph.replay`)."""
from __future__ import annotations

import argparse
import shutil
import tempfile
from typing import Any

from ..backend import DEFAULT_BACKEND
from ..errors import UsageError
from ..graph.article import plot
from ..graph.replay import Replay
from .commands import SUMMARIES
from .common import add_command
from .pool_args import add_backend_arg

WORKLOADS = ("docker-article",)


def register(subs: Any) -> None:
    """Add the ``replay`` subcommand."""
    p = add_command(subs, "replay", run, SUMMARIES["replay"],
                    description="Replay the Docker storage article (docs/experiment.md): pull "
                                "ubuntu:14.10 and 12.10, run a container, write a large "
                                "file, replace it, commit, remove; print du and pool "
                                "status after each step beside the article's figures.")
    p.add_argument("workload", choices=WORKLOADS, help="the workload to replay")
    add_backend_arg(p, DEFAULT_BACKEND)
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply every size by F (e.g. 0.01 runs in seconds on the sim)")
    p.add_argument("--root", help="driver root directory (default: a temporary one, removed)")
    p.add_argument("--plot", metavar="PNG",
                   help="where to save the plot of data and metadata usage (needs matplotlib; "
                        "default: dmthin-replay-BACKEND.png in the current directory)")
    p.add_argument("--no-plot", action="store_true", help="do not save a plot")


def run(args: argparse.Namespace) -> int:
    """Replay the workload.  Raises :class:`UsageError` for a bad scale."""
    if not 0 < args.scale <= 1:
        raise UsageError(f"invalid --scale {args.scale}: use a number in (0, 1]")
    root = args.root or tempfile.mkdtemp(prefix="dmthin-replay-")
    try:
        rep = Replay(f"{root}/docker" if not args.root else root, backend=args.backend,
                     scale=args.scale, out=lambda line: print(line, flush=True))
        print(f"replaying docker-article at scale {args.scale} on the {args.backend} backend "
              f"in {root}")
        steps = rep.run()
        print(f"replay took {rep.seconds:.0f} s ({rep.seconds / 60:.1f} min)")
        if not args.no_plot:
            print(plot(steps, args.plot or f"dmthin-replay-{args.backend}.png", args.scale,
                       args.backend))
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)
    return 0
