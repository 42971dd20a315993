"""What every ``cmd_*`` module shares: the parser class, subcommand groups,
metadata arguments (the pool ones: :mod:`dmthin.cli.pool_args`), JSON and file
output, argument parsing.

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
import os
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, BinaryIO, NoReturn, TextIO

from .. import __version__, units
from ..errors import UsageError

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
        """Print the usage and one error line (control characters from the
        arguments escaped); exit with :attr:`usage_exit_code`."""
        self.print_usage(sys.stderr)
        line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
        self.exit(self.usage_exit_code, f"{self.prog}: error: {line}\n")


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
    # A pool directory's layout (pooldir: pathlib, json, the target tables)
    # only now: the metadata tools are mostly given a file, and this import
    # is a third of their start-up.
    from ..pooldir import PoolDir
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
            and (not (snap.isascii() and snap.isdigit()) or os.path.exists(snap)):
        args.metadata, snap = snap, ""
    if args.metadata is None:
        raise UsageError("missing METADATA argument (a metadata file, device or pool "
                         "directory)")
    if snap is None:
        return None
    if snap == "":
        return True
    return units.parse_int(snap, "-m/--metadata-snap block number")


# -- output --------------------------------------------------------------------------
def emit_json(doc: object) -> None:
    """Print *doc* as indented JSON on stdout."""
    import json  # (here: the metadata tools' start-up does not load it)
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")


@contextmanager
def text_output(path: str | None) -> Iterator[TextIO]:
    """A buffered text stream to *path* (:func:`binary_output`), or to
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
    with binary_output(path) as raw:
        out = io.TextIOWrapper(raw, encoding="utf-8", newline="\n", write_through=False)
        try:
            yield out
            out.flush()
        finally:
            out.detach()


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


@contextmanager
def binary_output(path: str) -> Iterator[BinaryIO]:
    """A buffered binary stream to the file *path*.

    A regular file (or a new one) is written to a temporary file made with
    ``mkstemp`` in the same directory (``O_EXCL``, never a predictable name)
    and renamed over *path* on success: a failed run leaves neither a partial
    file nor a temporary.  The new file gets the old one's mode, else
    0666 less the umask.  Anything else (a device, a fifo) is written in
    place.  Raises ``OSError``."""
    target = os.path.realpath(path)
    try:
        st: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        with open(target, "wb", buffering=1 << 20) as f:
            yield f
        return
    import tempfile  # (here: the metadata tools' start-up does not load it)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp",
                               dir=os.path.dirname(target))
    try:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o777 if st is not None
                  else 0o666 & ~_umask())
        with os.fdopen(fd, "wb", buffering=1 << 20) as f:
            fd = -1
            yield f
        os.replace(tmp, target)
        tmp = ""
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


# -- argument values (parsed by the handler, so a bad one is one line) -----------------
def parse_dev_id(text: str | int) -> int:
    """A thin device id from the command line (:func:`dmthin.units.parse_dev_id`:
    ASCII decimal, 0 to 2^24-1).  Raises :class:`UsageError`."""
    return units.parse_dev_id(text)


def parse_natural(text: str, what: str = "number", maximum: int = units.MAX_U64) -> int:
    """A non-negative decimal integer up to *maximum*
    (:func:`dmthin.units.parse_int`).  Raises :class:`UsageError`."""
    return units.parse_int(text, what, maximum=maximum)


def parse_overrides(args: argparse.Namespace) -> dict[str, int | None]:
    """``--transaction-id``, ``--data-block-size`` (sectors) and
    ``--nr-data-blocks`` of restore and repair, parsed (None: not given).
    Raises :class:`UsageError`."""
    def get(name: str, what: str, maximum: int) -> int | None:
        text = getattr(args, name)
        return None if text is None else units.parse_int(text, what, maximum=maximum)
    return {"transaction_id": get("transaction_id", "--transaction-id", units.MAX_U64),
            "data_block_size": get("data_block_size", "--data-block-size",
                                   units.DATA_BLOCK_SIZE_MAX_SECTORS),
            "nr_data_blocks": get("nr_data_blocks", "--nr-data-blocks",
                                  units.MAX_DATA_BLOCKS)}
