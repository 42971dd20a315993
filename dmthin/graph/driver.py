"""Docker's devicemapper graph ``Driver`` on a :class:`DeviceSet`.

Layers and containers are thin snapshots; ``get`` mounts one at
``<root>/mnt/<id>`` and returns ``<root>/mnt/<id>/rootfs`` (per-id
reference counts, an ``id`` file beside ``rootfs``); ``put`` drops a
reference and unmounts at zero.  ``diff``/``apply_diff``/``changes``/
``diff_size`` are Docker's naive tar differ (:mod:`dmthin.graph.differ`).

A layer's files live under ``rootfs/`` of its device's filesystem on both
backends, as in Docker, so a root moves between dmthin (either backend) and
dockerd.  Kernel backend: ``get``/``put`` mount for real and the differ
works on the mounted directories.  Simulator backend: there is nothing to
mount, so ``get`` raises EOPNOTSUPP; :meth:`Driver.open_fs` gives the same
differ (and the replay workload) the layer's ext4 ``rootfs/`` through
debugfs on an image mirror of the thin device, whose changed blocks go back
to the pool.

``Driver(root, readonly=True)`` inspects a root without writing to it:
mounts are read-only, in a private temporary directory.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Self

from ..errors import UsageError
from . import differ
from .deviceset import CLEANUP_INTERVAL, DeviceSet
from .diffstream import DiffStream
from .exttree import ExtTree
from .options import DeviceSetOptions, ram_in_bytes
from .store import check_hash
from .tree import DirTree, Entry

#: the directory of a device's filesystem holding the layer (moby's Get)
ROOTFS = "rootfs"


class Driver:
    """``Driver(root, options=(), backend=None, readonly=False)``: Docker's
    devicemapper graph driver.  Raises what :class:`DeviceSet` raises."""

    def __init__(self, root: str | os.PathLike[str],
                 options: DeviceSetOptions | Iterable[str] = (), backend: str | None = None,
                 cleanup_interval: float | None = CLEANUP_INTERVAL, readonly: bool = False):
        self.home = Path(root)
        self.deviceset = DeviceSet(root, options, backend, cleanup_interval=cleanup_interval,
                                   readonly=readonly)
        self.readonly = readonly
        self._refs: dict[str, int] = {}
        self._lock = threading.RLock()

    def __str__(self) -> str:
        return "devicemapper"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- layers ------------------------------------------------------------
    def create(self, id: str, parent: str = "",
               storage_opt: dict[str, str] | None = None) -> None:
        """Create layer *id* as a snapshot of *parent* (or of the base).

        ``storage_opt`` may hold ``size`` (e.g. ``"50M"``).  Raises
        ``DeviceExists``, ``DeviceNotFound``, ``NoSpace``, ``UsageError``.
        """
        size = None
        for key, val in (storage_opt or {}).items():
            if key.lower() != "size":
                raise UsageError(f"Unknown option {key}")
            size = ram_in_bytes(val)
        self.deviceset.add_device(id, parent or "", size)

    def create_read_write(self, id: str, parent: str = "",
                          storage_opt: dict[str, str] | None = None) -> None:
        """A container's read-write layer: the same as :meth:`create`."""
        self.create(id, parent, storage_opt)

    def remove(self, id: str) -> None:
        """Delete layer *id* (a no-op if absent).  Raises ``Busy``, ``ReadOnly``."""
        if not self.deviceset.has_device(id):
            return
        self.deviceset.delete_device(id, sync_delete=False)
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(self.deviceset.mnt_dir / id)

    def exists(self, id: str) -> bool:
        return self.deviceset.has_device(id)

    # -- mounting -------------------------------------------------------------
    def get(self, id: str, mount_label: str = "") -> str:
        """Mount *id* (reference counted) and return its rootfs path.

        Raises ``NotSupported`` with the simulator, ``DeviceNotFound``,
        ``IOFailure`` when mount fails."""
        check_hash(id)
        mp = self.deviceset.mnt_dir / id
        rootfs = mp / ROOTFS
        with self._lock:
            if self._refs.get(id, 0) > 0:
                self._refs[id] += 1
                return str(rootfs)
            mp.mkdir(mode=0o755, parents=True, exist_ok=True)
            try:
                self.deviceset.mount_device(id, mp, mount_label)
            except BaseException:
                with contextlib.suppress(OSError):
                    mp.rmdir()
                raise
            if not self.readonly:
                try:
                    _make_rootfs(mp, id)
                except BaseException:
                    self.deviceset.unmount_device(id, mp)
                    raise
            self._refs[id] = 1
            return str(rootfs)

    def put(self, id: str) -> None:
        """Drop a reference from :meth:`get`; unmount at zero."""
        with self._lock:
            count = self._refs.get(id, 0) - 1
            if count > 0:
                self._refs[id] = count
                return
            self._refs.pop(id, None)
            self.deviceset.unmount_device(id, self.deviceset.mnt_dir / id)

    @contextlib.contextmanager
    def open_fs(self, id: str, write: bool = False) -> Iterator[DirTree | ExtTree]:
        """Yield layer *id*'s file tree, rooted at its ``rootfs/``: the
        mounted rootfs (:class:`DirTree`, kernel) or its ext4 read and
        written in place through libext2fs (:class:`ExtTree`, simulator;
        with *write*, creating ``rootfs/`` and ``id`` as ``get`` does).
        Raises ``DeviceNotFound``, ``NotSupported`` (xfs in the simulator),
        ``ReadOnly`` (*write* on a read-only driver), ``BackendUnavailable``
        (simulator, dmthin built without libext2fs)."""
        ds = self.deviceset
        was_active = ds.is_active(id)
        thin = ds.activate_device(id)
        if thin.path is not None:
            rootfs = self.get(id)
            try:
                yield DirTree(rootfs)
            finally:
                self.put(id)
            return
        try:
            with ds.open_filesystem(id, write=write) as fs:
                tree = ExtTree(fs, base=ROOTFS)
                if write:
                    tree.ensure_base(id)
                yield tree
        finally:
            if not was_active:
                ds.deactivate_device(id)

    # -- differ -------------------------------------------------------------------
    def changes(self, id: str, parent: str = "") -> list[differ.Change]:
        """Docker's ``Changes(id, parent)``, sorted by path."""
        new_entries = self._walk(id)
        return differ.changes(new_entries, self._walk(parent) if parent else {})

    def _walk(self, id: str) -> dict[str, Entry]:
        with self.open_fs(id) as tree:
            return tree.walk()

    def diff(self, id: str, parent: str = "", stream: bool = False) -> IO[bytes]:
        """A tar of *id*'s changes against *parent*: a temporary file at 0,
        or with *stream* a pipe a thread fills while the caller reads, as
        Docker's ``Diff`` streams (no scratch space; not seekable; reading
        to the end or closing raises the writer's error)."""
        if stream:
            def produce(out: IO[bytes]) -> None:
                old = self._walk(parent) if parent else {}
                with self.open_fs(id) as new:
                    entries = new.walk()
                    differ.export_changes(new, entries, differ.changes(entries, old), out)
            return DiffStream(produce)  # type: ignore[return-value]
        old_entries = self._walk(parent) if parent else {}
        out = tempfile.TemporaryFile(dir=self.deviceset.work_dir)  # noqa: SIM115 (returned)
        with self.open_fs(id) as new:
            new_entries = new.walk()
            differ.export_changes(new, new_entries,
                                  differ.changes(new_entries, old_entries), out)
        out.seek(0)
        return out

    def diff_size(self, id: str, parent: str = "") -> int:
        """Bytes of added or modified regular files (``ChangesSize``)."""
        new_entries = self._walk(id)
        old_entries = self._walk(parent) if parent else {}
        return differ.changes_size(new_entries, differ.changes(new_entries, old_entries))

    def apply_diff(self, id: str, parent: str, diff: bytes | IO[bytes]) -> int:
        """Apply tar *diff* (bytes or a file object) to layer *id*; return
        its size.  Raises ``InvalidArgument`` for a malformed layer."""
        if isinstance(diff, (bytes, bytearray)):
            diff = io.BytesIO(diff)
        with self.open_fs(id, write=True) as tree:
            return differ.apply_layer(tree, diff)

    # -- driver info -------------------------------------------------------------------
    def status(self) -> list[tuple[str, str]]:
        """Docker's ``Status()`` pairs."""
        return self.deviceset.status()

    def get_metadata(self, id: str) -> dict[str, str]:
        """``DeviceId``, ``DeviceSize``, ``DeviceName`` (as ``docker inspect``)."""
        info = self.deviceset.device_info(id)
        return {"DeviceId": str(info.device_id), "DeviceSize": str(info.size),
                "DeviceName": self.deviceset.device_name(id)}

    def cleanup(self) -> None:
        """Unmount everything and shut the device set down."""
        with self._lock:
            self._refs.clear()
        self.deviceset.shutdown()


def _make_rootfs(mp: Path, id: str) -> None:
    """moby's Get after mounting: ``rootfs/`` (0755) and an ``id`` file."""
    rootfs = mp / ROOTFS
    if not rootfs.is_dir():
        rootfs.mkdir(mode=0o755)
        os.chmod(rootfs, 0o755)          # whatever the umask, as the graph tests expect
    id_file = mp / "id"
    if not id_file.exists():
        fd = os.open(id_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        with os.fdopen(fd, "w") as f:
            f.write(id)
