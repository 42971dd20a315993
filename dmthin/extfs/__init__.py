"""Files inside a thin device without mounting it: the ext4 filesystem read
and written in place, block by block, through e2fsprogs' libext2fs with an
io_manager on the device's public I/O API (:class:`Filesystem`), and
formatting with Docker's mkfs options (:func:`mkfs`).

Needs dmthin built with libext2fs (Debian ``libext2fs-dev``); without it
every entry point raises :class:`~dmthin.errors.BackendUnavailable` saying
how to get it (:func:`have_binding` tells beforehand).
"""
from ._binding import INSTALL_HINT, have_binding
from .errors import (
                     Corrupted,
                     EntryExists,
                     FsError,
                     FsNoSpace,
                     IsADir,
                     NoAttr,
                     NoEntry,
                     NotADir,
                     NotEmpty,
                     ReadOnlyFs,
)
from .filesystem import FileReader, Filesystem
from .mkfs import XFS_REFUSAL, mkfs, probe_fs_type, read_uuid
from .stat import Stat

__all__ = [
                     "INSTALL_HINT",
                     "XFS_REFUSAL",
                     "Corrupted",
                     "EntryExists",
                     "FileReader",
                     "Filesystem",
                     "FsError",
                     "FsNoSpace",
                     "IsADir",
                     "NoAttr",
                     "NoEntry",
                     "NotADir",
                     "NotEmpty",
                     "ReadOnlyFs",
                     "Stat",
                     "have_binding",
                     "mkfs",
                     "probe_fs_type",
                     "read_uuid",
]
