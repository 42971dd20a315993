"""Entry point of the ``dmthin`` command: discovers ``cmd_*`` modules,
parses arguments, runs the command and turns errors into one line on
stderr with a non-zero exit (never a traceback).

Only the module of the command being run is imported; the others are
listed by their summaries (:mod:`dmthin.cli.commands`)."""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import DmThinError
from .commands import SUMMARIES, command_name
from .common import CommandParser

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def build_parser(argv: Sequence[str] | None = None) -> CommandParser:
    """The command line: every ``cmd_*`` module's ``register``, or, given
    the *argv* to parse, only that of the command *argv* names (the other
    commands are listed, not loaded)."""
    parser = CommandParser(
        prog="dmthin",
        description="Device-mapper thin provisioning: simulated and real thin pools, and "
                    "tools for the kernel's thin metadata (dump, restore, check, ls).")
    parser.add_argument("--version", action="version", version=f"dmthin {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks and library log messages")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = None if argv is None else _command(argv)
    for module in _command_modules():
        name = command_name(module)
        if argv is None or name == wanted or name not in SUMMARIES:
            importlib.import_module(f"{__package__}.{module}").register(subs)
        else:
            subs.add_parser(name, help=SUMMARIES[name])
    return parser


def _command_modules() -> list[str]:
    """The ``cmd_*`` modules of this package, sorted.  A directory listing,
    not :func:`pkgutil.iter_modules`: that imports :mod:`inspect` (and
    :mod:`ast`, :mod:`dis`, :mod:`tokenize`), a sixth of a metadata tool's
    start-up."""
    names = {entry.removesuffix(".py")
             for folder in sys.modules[__package__].__path__
             for entry in os.listdir(folder)
             if entry.startswith("cmd_") and entry.endswith(".py")}
    return sorted(names)


def _command(argv: Sequence[str]) -> str | None:
    """The command *argv* names: its first word that is not an option (the
    top-level options take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    """Run ``dmthin`` with *argv* (default ``sys.argv[1:]``); return the exit
    status.  A usage error exits (SystemExit) as argparse does, with 1 for
    the commands mirroring thin-provisioning-tools."""
    if argv is None:
        argv = sys.argv[1:]
    _undecodable_safe_streams()
    parser = build_parser(argv)
    args, extras = parser.parse_known_args(argv)
    command: argparse.ArgumentParser = args.command_parser
    if extras:
        command.error(f"unrecognized arguments: {' '.join(extras)}")
    if args.debug:
        # logging only for --debug: its import is a tenth of a metadata tool's
        # start-up, and nothing else on the tools' paths loads it
        import logging
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("dmthin: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `dmthin dump ... | head`): not an error.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaces stdout until exit
        except OSError:
            pass
        return 0
    except (DmThinError, OSError) as err:
        if args.debug:
            raise
        print(f"{command.prog}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_ERROR


def _undecodable_safe_streams() -> None:
    """Paths from argv may hold bytes that are not UTF-8 (decoded with
    surrogateescape): stdout gives them back as the same bytes, stderr
    escapes them, whatever the locale, instead of failing with
    UnicodeEncodeError."""
    for stream, errors in ((sys.stdout, "surrogateescape"), (sys.stderr, "backslashreplace")):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors=errors)
            except (ValueError, OSError):
                pass


def one_line(err: BaseException) -> str:
    """An error as one line: its message, with the errno name if it has one."""
    if isinstance(err, OSError) and not isinstance(err, DmThinError):
        name = errno.errorcode.get(err.errno or 0, "")
        where = f"{err.filename}: " if err.filename else ""
        text = f"{where}{err.strerror or err}" + (f" ({name})" if name else "")
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
