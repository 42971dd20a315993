"""The top-level commands and their one-line summaries.

Command ``NAME`` lives in module ``cmd_NAME`` (``-`` spelled ``_``), which
defines ``register(subparsers)``.  ``dmthin --help`` lists the commands
from this table, and a run imports only the module of the command it names
(as pip's ``commands_dict``), so no command pays for another's imports.
A ``cmd_*`` module missing from the table is imported on every run.
"""
from __future__ import annotations

SUMMARIES: dict[str, str] = {
    "check": "check thin metadata (like thin_check)",
    "dm": "device-mapper diagnostics (kernel backend)",
    "dump": "dump thin metadata as XML or text (like thin_dump)",
    "graph": "Docker devicemapper graph driver roots",
    "ls": "list thin devices and their block usage (like thin_ls)",
    "pool": "create a thin pool, show its status, send messages",
    "repair": "rebuild damaged thin metadata (like thin_repair)",
    "replay": "replay a recorded workload through the graph driver",
    "restore": "write thin metadata from XML (like thin_restore)",
    "thin": "thin devices: create, snapshot, resize, delete, write, read, discard, status, "
            "list",
}


def module_name(command: str) -> str:
    """The module (in this package) of *command*."""
    return "cmd_" + command.replace("-", "_")


def command_name(module: str) -> str:
    """The command of module *module* (``cmd_NAME``)."""
    return module.removeprefix("cmd_").replace("_", "-")
