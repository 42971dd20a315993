"""What the pool-facing ``cmd_*`` modules share: POOLDIR and ``--backend``
arguments and opening the pool they name.  Apart from
:mod:`dmthin.cli.common` so that the metadata tools (``dump``, ``check``,
...), which never open a pool, do not import the pool facade and its
backends at start-up."""
from __future__ import annotations

import argparse

from ..backend import BACKENDS, DEFAULT_BACKEND
from ..pool import Pool


def add_backend_arg(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--backend``, one of :data:`dmthin.backend.BACKENDS`; *default* None
    means the pool's own."""
    p.add_argument("--backend", choices=tuple(BACKENDS), default=default,
                   help=" or ".join(BACKENDS) + "; default: "
                        + (default or "the pool's own"))


def add_pool_args(p: argparse.ArgumentParser, *, create: bool = False,
                  backend: str | None = None) -> None:
    """POOLDIR, ``--backend`` (for *create*, defaulting to
    :data:`~dmthin.backend.DEFAULT_BACKEND`; else to *backend*, None: the
    pool's own) and ``--allow-other-owner``."""
    p.add_argument("pooldir", metavar="POOLDIR")
    add_backend_arg(p, DEFAULT_BACKEND if create else backend)
    p.add_argument("--allow-other-owner", action="store_true",
                   help="use a pool directory owned by another user (refused by default)")


def open_pool(args: argparse.Namespace, readonly: bool = False) -> Pool:
    """The pool in ``args.pooldir`` with ``args.backend`` (None: its own),
    read-only if *readonly* (nothing written: for commands that only look).
    Raises what :meth:`dmthin.Pool.open` raises."""
    return Pool.open(args.pooldir, backend=args.backend, readonly=readonly,
                     allow_other_owner=getattr(args, "allow_other_owner", False))
