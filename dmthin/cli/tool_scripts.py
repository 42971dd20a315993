"""Console scripts named like thin-provisioning-tools' programs.

``dmthin-thin_check ARGS`` runs ``dmthin check ARGS``, and so on: each takes
the tool's own argv, so LVM's ``thin_check_executable``,
``thin_repair_executable`` and ``thin_dump_executable`` can name the script
directly (``lvconvert --repair`` runs ``THIN_REPAIR '' -i META -o SPARE``;
the empty argument is accepted).  Bad options exit 1, as the tools do.
"""
from __future__ import annotations

import sys

from .main import main


def _run(command: str) -> None:
    sys.exit(main([command, *sys.argv[1:]]))


def thin_check() -> None:
    """``thin_check``: :mod:`dmthin.cli.cmd_check`."""
    _run("check")


def thin_repair() -> None:
    """``thin_repair``: :mod:`dmthin.cli.cmd_repair`."""
    _run("repair")


def thin_dump() -> None:
    """``thin_dump``: :mod:`dmthin.cli.cmd_dump`."""
    _run("dump")


def thin_restore() -> None:
    """``thin_restore``: :mod:`dmthin.cli.cmd_restore`."""
    _run("restore")


def thin_ls() -> None:
    """``thin_ls``: :mod:`dmthin.cli.cmd_ls`."""
    _run("ls")


def thin_delta() -> None:
    """``thin_delta``: :mod:`dmthin.cli.cmd_delta`."""
    _run("delta")


def thin_rmap() -> None:
    """``thin_rmap``: :mod:`dmthin.cli.cmd_rmap`."""
    _run("rmap")


def thin_metadata_size() -> None:
    """``thin_metadata_size``: :mod:`dmthin.cli.cmd_metadata_size`."""
    _run("metadata-size")


def thin_trim() -> None:
    """``thin_trim``: :mod:`dmthin.cli.cmd_trim`."""
    _run("trim")


def thin_metadata_pack() -> None:
    """``thin_metadata_pack`` (1.x): :mod:`dmthin.cli.cmd_metadata_pack`."""
    _run("metadata-pack")


def thin_metadata_unpack() -> None:
    """``thin_metadata_unpack`` (1.x): :mod:`dmthin.cli.cmd_metadata_unpack`."""
    _run("metadata-unpack")
