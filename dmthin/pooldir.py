"""A pool directory on disk: ``data`` and ``metadata`` sparse files, the
``pool.json`` sidecar for what the kernel keeps outside its metadata, and
the writer lock.  Shared by both backends.

Layout (like Docker's ``devicemapper/`` directory)::

    POOLDIR/            mode 0700
      data              sparse, 0600: data block N at byte N * block size
      metadata          sparse, 0600: the kernel's thin metadata format
      pool.json         0600: backend, block size, low water mark, features,
                        thin device sizes (written atomically)
      .lock             advisory writer lock (flock), holds the writer's pid
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import PoolLocked, UsageError

CONFIG_NAME = "pool.json"
LOCK_NAME = ".lock"
CONFIG_VERSION = 1


@dataclass
class PoolConfig:
    """What the kernel keeps in its tables rather than in the metadata."""
    backend: str
    data_block_sectors: int
    low_water_mark: int
    features: tuple[str, ...] = ()
    thins: dict[int, int] = field(default_factory=dict)   # dev_id -> size in bytes
    version: int = CONFIG_VERSION

    def to_json(self) -> str:
        d = asdict(self)
        d["features"] = list(self.features)
        d["thins"] = {str(k): v for k, v in sorted(self.thins.items())}
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> "PoolConfig":
        try:
            d = json.loads(text)
            return cls(backend=str(d["backend"]), data_block_sectors=int(d["data_block_sectors"]),
                       low_water_mark=int(d["low_water_mark"]),
                       features=tuple(d.get("features", ())),
                       thins={int(k): int(v) for k, v in d.get("thins", {}).items()},
                       version=int(d.get("version", CONFIG_VERSION)))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise UsageError(f"{where}: not a valid dmthin pool config ({err}); "
                             "restore it or recreate the pool") from None


def write_atomic(path: Path, text: str) -> None:
    """Write *text* to *path* atomically: a dot-named temp file (0600) in the
    same directory, fsync, rename over *path*, fsync the directory.  On any
    failure the temp file is removed and *path* is untouched."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp", dir=path.parent)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class PoolDir:
    """Paths and files of one pool directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.data_path = self.path / "data"
        self.metadata_path = self.path / "metadata"
        self.config_path = self.path / CONFIG_NAME
        self.lock_path = self.path / LOCK_NAME
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"PoolDir({str(self.path)!r})"

    # -- creation ---------------------------------------------------------
    def create_files(self, data_size: int, metadata_size: int) -> None:
        """Make the directory (0700) and the sparse files (0600).

        Refuses a directory that already holds a pool.  Existing ``data`` or
        ``metadata`` files are kept only if they are regular files of at
        least the requested size (they are never shrunk).
        """
        if self.config_path.exists():
            raise UsageError(f"{self.path} already holds a pool; open it, or remove it first")
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        for p, size in ((self.data_path, data_size), (self.metadata_path, metadata_size)):
            fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)
                if os.fstat(fd).st_size < size:
                    os.ftruncate(fd, size)
            finally:
                os.close(fd)

    def exists(self) -> bool:
        return self.config_path.exists()

    # -- config -------------------------------------------------------------
    def load_config(self) -> PoolConfig:
        try:
            text = self.config_path.read_text()
        except FileNotFoundError:
            raise UsageError(f"{self.path} is not a dmthin pool (no {CONFIG_NAME}); "
                             "create one with 'dmthin pool create'") from None
        return PoolConfig.from_json(text, str(self.config_path))

    def save_config(self, config: PoolConfig) -> None:
        write_atomic(self.config_path, config.to_json())

    # -- writer lock ----------------------------------------------------------
    def lock(self) -> None:
        """Take the pool's exclusive writer lock, or raise :class:`PoolLocked`
        naming the pid that holds it."""
        if self._lock_fd is not None:
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise
            try:
                pid = os.pread(fd, 32, 0).decode().strip() or "unknown"
            finally:
                os.close(fd)
            raise PoolLocked(f"pool {self.path} is in use by pid {pid}; "
                             "wait for it to finish or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)   # closing drops the flock
