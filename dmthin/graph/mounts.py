"""Reference-counted mounts of thin devices (moby's ``MountDevice`` /
``UnmountDevice`` bookkeeping).

One mount per device: mounting it again at the same place takes another
reference, at another place is EBUSY.  The last reference detach-unmounts
(``MNT_DETACH``) and removes the mount point, as moby does since 17.12.
Options are Docker's: ``nouuid`` for xfs, then ``dm.mountopt``, then an
SELinux context; a read-only set mounts ``ro`` without journal replay
(ext4 ``noload``, xfs ``norecovery``), so not a byte of the device changes.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from ..errors import Busy
from . import blockfs
from .options import join_mount_options


@dataclass
class _Mount:
    """A device mounted at *path*, held *count* times."""
    path: str
    count: int = 1


def mount_options(fstype: str, readonly: bool, extra: str, label: str) -> str:
    """The option string moby's ``MountDevice`` builds (plus read-only)."""
    if readonly:
        opts = join_mount_options("ro", "norecovery,nouuid" if fstype == "xfs" else "noload")
    else:
        opts = "nouuid" if fstype == "xfs" else ""
    opts = join_mount_options(opts, extra)
    if label:
        opts = join_mount_options(opts, f'context="{label}"')
    return opts


class MountTable:
    """The mounts of one device set, by device hash."""

    def __init__(self, readonly: bool, extra_options: str):
        self.readonly = readonly
        self.extra_options = extra_options
        self._mounts: dict[str, _Mount] = {}

    def __contains__(self, hash_: str) -> bool:
        return hash_ in self._mounts

    def where(self, hash_: str) -> str | None:
        """The mount point of *hash*, or None."""
        m = self._mounts.get(hash_)
        return None if m is None else m.path

    def add_ref(self, hash_: str, path: str) -> bool:
        """Take another reference if *hash* is mounted at *path* (True);
        False if it is not mounted.  Raises :class:`~dmthin.errors.Busy` if
        it is mounted elsewhere."""
        m = self._mounts.get(hash_)
        if m is None:
            return False
        if m.path != path:
            raise Busy(f"devmapper: Trying to mount devmapper device in multiple places "
                       f"({m.path}, {path})")
        m.count += 1
        return True

    def mount(self, hash_: str, device: str, path: str, label: str = "") -> None:
        """Mount block device *device* at *path* with Docker's options (one
        reference).  Raises ``NotSupported`` (unknown filesystem),
        ``IOFailure`` (mount failed)."""
        fstype = blockfs.probe_fs_type(device)
        opts = mount_options(fstype, self.readonly, self.extra_options, label)
        blockfs.mount(device, path, fstype, opts)
        self._mounts[hash_] = _Mount(path)

    def drop_ref(self, hash_: str) -> bool:
        """Drop one reference; at the last, detach-unmount and remove the
        mount point.  True if the device is no longer mounted.  Raises
        ``IOFailure`` (umount failed)."""
        m = self._mounts.get(hash_)
        if m is None:
            return True
        m.count -= 1
        if m.count > 0:
            return False
        del self._mounts[hash_]
        blockfs.umount(m.path)
        with contextlib.suppress(OSError):
            os.rmdir(m.path)
        return True

    def unmount_all(self) -> None:
        """Detach-unmount everything (shutdown; errors ignored)."""
        for hash_, m in list(self._mounts.items()):
            with contextlib.suppress(OSError):
                blockfs.umount(m.path)
                os.rmdir(m.path)
            del self._mounts[hash_]
