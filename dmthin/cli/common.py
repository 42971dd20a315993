"""What every ``cmd_*`` module shares: the parser class, subcommand groups,
pool and metadata arguments, JSON and file output, argument parsing.

Conventions:

* each ``cmd_*.py`` defines ``register(subparsers)`` and adds its
  (sub)commands with :func:`add_command` (or :func:`add_group` and then
  :func:`add_command`);
* a handler is named ``run`` (a single command) or ``run_<subcommand>``
  (a group's subcommands), takes the parsed :class:`argparse.Namespace` and
  returns the exit code;
* handlers raise :class:`~dmthin.errors.DmThinError` or :class:`OSError`
  for problems; :func:`dmthin.cli.main.main` prints them as one line.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TextIO

from .. import __version__
from ..backend import BACKENDS, DEFAULT_BACKEND
from ..errors import UsageError
from ..pool import Pool
from ..pooldir import PoolDir
from ..units import MAX_DEV_ID

Handler = Callable[[argparse.Namespace], int]

#: exit status of a usage error in the commands mirroring
#: thin-provisioning-tools (LVM reads 2 as "tool missing")
TOOL_USAGE_EXIT = 1


class CommandParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` that records, in the namespace,
    which (sub)command parsed the arguments (``command_parser``), and
    whose usage errors exit with :attr:`usage_exit_code`."""

    #: exit status of a usage error (argparse's 2, unless a command says otherwise)
    usage_exit_code = 2

    def parse_known_args(  # type: ignore[override]
            self, args: Sequence[str] | None = None,
            namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, extras = super().parse_known_args(args, namespace)
        # The innermost subcommand returns first; its parents keep its name.
        if getattr(ns, "command_parser", None) is None:
            ns.command_parser = self
        return ns, extras

    def error(self, message: str) -> NoReturn:
        """Print the usage and one error line; exit with :attr:`usage_exit_code`."""
        self.print_usage(sys.stderr)
        self.exit(self.usage_exit_code, f"{self.prog}: error: {message}\n")


def add_command(subs: Any, name: str, handler: Handler | None, help: str, *,
                description: str | None = None, tool: bool = False,
                aliases: Sequence[str] = (), **kwargs: Any) -> CommandParser:
    """Add subcommand *name* running *handler* (None for a group).

    *description* defaults to *help*.  *tool*: the command mirrors a
    thin-provisioning-tools program, so a usage error exits with 1 as
    theirs do."""
    p: CommandParser = subs.add_parser(name, help=help, aliases=list(aliases),
                                       description=description or help, **kwargs)
    if tool:
        p.usage_exit_code = TOOL_USAGE_EXIT
    if handler is not None:
        p.set_defaults(handler=handler)
    return p


def add_group(subs: Any, name: str, help: str, *, description: str | None = None) -> Any:
    """Add a command group *name* (``dmthin NAME SUBCOMMAND``); return the
    subparsers action to add its subcommands to with :func:`add_command`."""
    p = add_command(subs, name, None, help, description=description)
    return p.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND", required=True)


# -- pools ---------------------------------------------------------------------------
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


# -- metadata files -----------------------------------------------------------------
def add_metadata_arg(p: argparse.ArgumentParser, nargs: str | None = None) -> None:
    """The METADATA positional of the metadata tools."""
    p.add_argument("metadata", metavar="METADATA", nargs=nargs,
                   help="metadata file or block device, or a pool directory (its "
                        "metadata file)")


def metadata_path(arg: str) -> str:
    """The metadata file named by METADATA *arg*: itself, or the metadata
    file of a pool directory.  Raises :class:`UsageError` if there is none
    or it cannot be reached (naming the permission problem)."""
    denied = (f"{arg}: permission denied; run as its owner or fix the permissions of it "
              "and its parent directories")
    try:
        st = os.stat(arg)
    except PermissionError:
        raise UsageError(denied) from None
    except OSError:
        raise UsageError(f"{arg}: no such file or device: give a metadata file, device "
                         "or pool directory") from None
    if not stat.S_ISDIR(st.st_mode):
        return arg
    path = os.fspath(PoolDir(arg).metadata_path)
    if not os.access(arg, os.R_OK | os.X_OK):
        raise UsageError(denied)
    try:
        os.stat(path)
    except PermissionError:
        raise UsageError(f"{path}: permission denied; run as its owner or fix its "
                         "permissions") from None
    except OSError:
        raise UsageError(f"{arg} is a directory without a 'metadata' file: "
                         "give a metadata file or a pool directory") from None
    return path


def add_version_arg(p: argparse.ArgumentParser) -> None:
    """``-V/--version`` (every thin-provisioning-tools program has it): the
    dmthin version, one line ``X.Y.Z``."""
    p.add_argument("-V", "--version", action="version", version=__version__,
                   help="print the version and exit")


def add_metadata_snap_arg(p: argparse.ArgumentParser, what: str) -> None:
    """``-m/--metadata-snap [BLOCK]`` (thin_dump's and thin_delta's): *what*
    the command then reads."""
    p.add_argument("-m", "--metadata-snap", nargs="?", const="", default=None, metavar="BLOCK",
                   help=f"{what} the held metadata snapshot (or the one at BLOCK)")


def metadata_snap_arg(args: argparse.Namespace) -> bool | int | None:
    """The ``-m [BLOCK]`` value: None (not given), True (the held snapshot)
    or a block number.  ``-m`` right before METADATA makes argparse take the
    path as BLOCK: that is undone here.  Raises :class:`UsageError` for a
    bad BLOCK or a missing METADATA."""
    snap = args.metadata_snap
    if args.metadata is None and snap not in (None, "") \
            and (not snap.isdigit() or os.path.exists(snap)):
        args.metadata, snap = snap, ""
    if args.metadata is None:
        raise UsageError("missing METADATA argument (a metadata file, device or pool "
                         "directory)")
    if snap is None:
        return None
    if snap == "":
        return True
    if not snap.isdigit():
        raise UsageError(f"-m/--metadata-snap takes a block number, not {snap!r}")
    return int(snap)


# -- output --------------------------------------------------------------------------
def emit_json(doc: object) -> None:
    """Print *doc* as indented JSON on stdout."""
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")


@contextmanager
def text_output(path: str | None) -> Iterator[TextIO]:
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
        with open(target, "w", encoding="utf-8", newline="\n", buffering=1 << 20) as f:
            yield f
        return
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n", buffering=1 << 20) as f:
            yield f
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


# -- argument values (parsed by the handler, so a bad one is one line) -----------------
def parse_dev_id(text: str | int) -> int:
    """A thin device id from the command line.  Raises :class:`UsageError`
    unless it is a decimal number (the range is checked by the library)."""
    if isinstance(text, int):
        return text
    if not text.isdigit():
        raise UsageError(f"invalid thin device id {text!r}: use a decimal number from 0 to "
                         f"{MAX_DEV_ID}")
    return int(text)


def parse_natural(text: str) -> int:
    """A non-negative decimal integer.  Raises :class:`UsageError`."""
    if not (text.isascii() and text.isdigit()):
        raise UsageError(f"{text!r} is not a non-negative integer")
    return int(text)
