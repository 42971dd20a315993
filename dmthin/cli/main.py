"""Entry point of the ``dmthin`` command: discovers ``cmd_*`` modules,
parses arguments, runs the command and turns errors into one line on
stderr with a non-zero exit (never a traceback)."""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import pkgutil
import sys

from .. import __version__
from ..errors import DmThinError

EXIT_ERROR = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmthin",
        description="Device-mapper thin provisioning: simulated and real thin pools, and "
                    "tools for the kernel's thin metadata (dump, restore, check, ls).")
    parser.add_argument("--version", action="version", version=f"dmthin {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks and library log messages")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    subs.required = True
    package = importlib.import_module(__package__)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"{__package__}.{info.name}").register(subs)
    _name_commands(parser)
    return parser


def _name_commands(parser: argparse.ArgumentParser) -> None:
    """Record each (sub)command's full name, e.g. ``dmthin pool create``, for
    error messages."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.set_defaults(_prog=sub.prog)
                _name_commands(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.debug:
        import logging
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("dmthin: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `dmthin dump ... | head`): not an error.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except (DmThinError, OSError) as err:
        if args.debug:
            raise
        prog = getattr(args, "_prog", None) or f"dmthin {args.command}"
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        code = getattr(err, "exit_code", None)
        return code if isinstance(code, int) else EXIT_ERROR


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
