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
    "delta": "what differs between two thin devices (like thin_delta)",
    "dm": "device-mapper diagnostics (kernel backend)",
    "dump": "dump thin metadata as XML or text (like thin_dump)",
    "graph": "Docker devicemapper graph driver roots",
    "ls": "list thin devices and their block usage (like thin_ls)",
    "metadata-pack": "compress thin metadata for a bug report (like thin_metadata_pack)",
    "metadata-size": "how much metadata a pool needs (like thin_metadata_size)",
    "metadata-unpack": "expand packed thin metadata (like thin_metadata_unpack)",
    "pool": "create a thin pool, show its status, send messages",
    "repair": "rebuild damaged thin metadata (like thin_repair)",
    "replay": "replay a recorded workload through the graph driver",
    "restore": "write thin metadata from XML (like thin_restore)",
    "rmap": "which thin device blocks map some data blocks (like thin_rmap)",
    "thin": "thin devices: create, snapshot, resize, delete, write, read, discard, status, "
            "list",
    "trim": "discard the data blocks no thin device maps (like thin_trim)",
}


def module_name(command: str) -> str:
    """The module (in this package) of *command*."""
    return "cmd_" + command.replace("-", "_")


def command_name(module: str) -> str:
    """The command of module *module* (``cmd_NAME``)."""
    return module.removeprefix("cmd_").replace("_", "-")
