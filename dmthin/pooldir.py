"""A pool directory on disk, handled as hostile input: its files, the
``pool.json`` cache and the pool lock.  Shared by both backends.

Layout (like Docker's ``devicemapper/`` directory)::

    POOLDIR/            mode 0700
      data              sparse, 0600: data block N at byte N * block size
      metadata          sparse, 0600: the kernel's thin metadata format
      pool.json         0600: what the kernel keeps outside its metadata
                        (block size, low water mark, features, names, thin
                        device sizes); written atomically
      .lock             the pid of the process writing the pool (a note for
                        error messages; never truncated)

An adopted pool (:meth:`dmthin.Pool.adopt`) may keep its data and metadata
elsewhere (Docker's ``devicemapper/devicemapper/``, LVM's tdata/tmeta
devices): ``pool.json`` then records their paths, and is written only when
the user changes something.

Rules, because a pool directory may belong to someone else:

* every file in it is opened ``O_NOFOLLOW`` (a symlink is refused with a
  one-line error), new files ``O_EXCL``, modes 0600 and 0700;
* a directory that is a symlink, or owned by another user, is refused
  (the latter unless ``allow_other_owner``);
* the pool lock is ``flock`` on the metadata file itself (exclusive for a
  writer, shared for a reader), so reading never creates or writes a file;
* a failed creation removes exactly the files it made, identified by
  inode, never by name.
"""
from __future__ import annotations

import errno
import fcntl
import json
import operator
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PoolLocked, UsageError
from .target.table import normalise_features
from .units import MAX_DEV_ID, SECTOR_SIZE, check_name

CONFIG_NAME = "pool.json"
LOCK_NAME = ".lock"
DATA_NAME = "data"
METADATA_NAME = "metadata"
CONFIG_VERSION = 1
CONFIG_MAX_BYTES = 64 << 20        # a pool.json larger than this is not ours
_PID_WIDTH = 20                    # the pid note: fixed width, so never truncated


def device_prefix(path: str | os.PathLike[str], head: str = "dmthin") -> str:
    """``<head>-<major>:<minor>-<inode>`` of a directory: Docker's
    ``devicePrefix`` (``head="docker"``), with the kernel's split of
    ``st_dev`` into major and minor."""
    st = os.stat(path)
    dev = st.st_dev
    major = (dev >> 8) & 0xfff
    minor = (dev & 0xff) | ((dev >> 12) & 0xfff00)
    return f"{head}-{major}:{minor}-{st.st_ino}"


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, not {value!r}")
    return operator.index(value)


@dataclass
class PoolConfig:
    """The ``pool.json`` cache: what the kernel keeps in its tables rather
    than in the metadata.  Which thin devices exist is *not* in it: that is
    the metadata's to say (``Pool.thin_ids()``)."""
    backend: str
    data_block_sectors: int
    low_water_mark: int
    features: tuple[str, ...] = ()
    thins: dict[int, int] = field(default_factory=dict)     # dev_id -> size in bytes
    names: dict[int, str] = field(default_factory=dict)     # dev_id -> dm name given
    pool_name: str | None = None        # the pool's dm name, when not the default
    data_path: str | None = None        # adopted: the data file/device, if not POOLDIR/data
    metadata_path: str | None = None    # adopted: the metadata, if not POOLDIR/metadata
    version: int = CONFIG_VERSION

    def to_json(self) -> str:
        d: dict[str, object] = {
            "backend": self.backend, "data_block_sectors": self.data_block_sectors,
            "low_water_mark": self.low_water_mark, "features": list(self.features),
            "thins": {str(k): v for k, v in sorted(self.thins.items())},
            "version": self.version}
        if self.names:
            d["names"] = {str(k): v for k, v in sorted(self.names.items())}
        for key in ("pool_name", "data_path", "metadata_path"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, raw: bytes | str, where: str) -> PoolConfig:
        """Parse and validate ``pool.json``.  Raises :class:`UsageError`
        naming the file for anything malformed (bad UTF-8, wrong types,
        values the kernel would refuse)."""
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            d = json.loads(text)
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
            backend = d["backend"]
            if not isinstance(backend, str):
                raise ValueError("backend must be a string")
            bs = _int(d["data_block_sectors"], "data_block_sectors")
            if not (128 <= bs <= 2097152 and bs % 128 == 0):
                raise ValueError(f"data_block_sectors {bs} is not a multiple of 128 "
                                 "from 128 to 2097152")
            lwm = _int(d["low_water_mark"], "low_water_mark")
            if not 0 <= lwm < 1 << 64:
                raise ValueError(f"low_water_mark {lwm} is out of range")
            feats = d.get("features", [])
            if not isinstance(feats, list) or not all(isinstance(f, str) for f in feats):
                raise ValueError("features must be a list of strings")
            thins = {_thin_key(k): _thin_size(v) for k, v in _obj(d, "thins").items()}
            names = {_thin_key(k): _name(v) for k, v in _obj(d, "names").items()}
            opt = {}
            for key in ("pool_name", "data_path", "metadata_path"):
                v = d.get(key)
                if v is not None and not isinstance(v, str):
                    raise ValueError(f"{key} must be a string")
                opt[key] = v
            if opt["pool_name"] is not None:
                _name(opt["pool_name"])
            return cls(backend=backend, data_block_sectors=bs, low_water_mark=lwm,
                       features=normalise_features(feats), thins=thins, names=names,
                       version=_int(d.get("version", CONFIG_VERSION), "version"), **opt)
        except (ValueError, KeyError, TypeError, RecursionError) as err:
            reason = f"missing {err}" if isinstance(err, KeyError) else str(err).split("\n")[0]
            raise UsageError(f"{where}: not a valid dmthin pool config ({reason}); "
                             "restore it or recreate the pool") from None


def _obj(d: dict[str, object], key: str) -> dict[str, object]:
    v = d.get(key, {})
    if not isinstance(v, dict):
        raise ValueError(f"{key} must be an object")
    return v


def _thin_key(k: str) -> int:
    if not (k.isascii() and k.isdigit()) or int(k) > MAX_DEV_ID:
        raise ValueError(f"thin device id {k!r} is not a number from 0 to {MAX_DEV_ID}")
    return int(k)


def _thin_size(v: object) -> int:
    n = _int(v, "a thin device size")
    if n <= 0 or n % SECTOR_SIZE or n >= 1 << 72:
        raise ValueError(f"thin device size {n} is not a positive multiple of 512")
    return n


def _name(v: object) -> str:
    if not isinstance(v, str):
        raise ValueError(f"device name {v!r} is not a string")
    try:
        return check_name(v)
    except UsageError as err:
        raise ValueError(str(err)) from None


def write_atomic(path: Path, text: str) -> None:
    """Write *text* to *path* atomically: a dot-named temp file (0600,
    ``mkstemp``: O_EXCL) in the same directory, fsync, rename over *path*
    (a symlink at *path* is replaced, never followed), fsync the directory.
    On any failure the temp file is removed and *path* is untouched."""
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
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _nofollow_error(path: Path, err: OSError) -> UsageError:
    if err.errno == errno.ELOOP:
        return UsageError(f"{path} is a symbolic link: dmthin does not follow links in a pool "
                          "directory; replace it with the file itself")
    if err.errno in (errno.EACCES, errno.EPERM):
        return UsageError(f"{path}: permission denied; run as the pool's owner or fix its "
                          "permissions")
    return UsageError(f"{path}: {os.strerror(err.errno or errno.EIO)}")


@dataclass(frozen=True)
class Created:
    """A file or directory this process created, identified by inode."""
    path: Path
    dev: int
    ino: int
    is_dir: bool = False


class PoolDir:
    """Paths, files and the lock of one pool directory.

    *data* / *metadata* override ``POOLDIR/data`` / ``POOLDIR/metadata``
    (adopted pools).  Raises :class:`UsageError` for an empty path.
    """

    def __init__(self, path: str | os.PathLike[str], data: str | os.PathLike[str] | None = None,
                 metadata: str | os.PathLike[str] | None = None):
        if not isinstance(path, (str, os.PathLike)) or os.fspath(path) in ("", b""):
            raise UsageError(f"invalid pool directory {path!r}: give a directory path "
                             "(an empty path would turn the current directory into a pool)")
        self.path = Path(path)
        self.data_path = Path(data) if data is not None else self.path / DATA_NAME
        self.metadata_path = Path(metadata) if metadata is not None \
            else self.path / METADATA_NAME
        self.config_path = self.path / CONFIG_NAME
        self.lock_path = self.path / LOCK_NAME
        self._lock_fd: int | None = None
        self._note_fd: int | None = None
        #: the pid note file, if this object's lock created it
        self.note_created: Created | None = None

    def __repr__(self) -> str:
        return f"PoolDir({str(self.path)!r})"

    @property
    def files_inside(self) -> bool:
        """True if data and metadata are ``POOLDIR/data`` and ``POOLDIR/metadata``."""
        return self.data_path == self.path / DATA_NAME and \
            self.metadata_path == self.path / METADATA_NAME

    # -- checks -----------------------------------------------------------------
    def check_dir(self, allow_other_owner: bool = False, must_exist: bool = True) -> bool:
        """Check the directory itself; return whether it exists.

        Raises :class:`UsageError` if it is a symlink, not a directory, not
        readable, or owned by another user (unless *allow_other_owner*).
        """
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            if must_exist:
                raise UsageError(f"{self.path} is not a dmthin pool (no such directory); "
                                 "create one with 'dmthin pool create'") from None
            return False
        except OSError as err:
            raise _nofollow_error(self.path, err) from None
        if stat.S_ISLNK(st.st_mode):
            real = os.path.realpath(self.path)
            raise UsageError(f"pool directory {self.path} is a symbolic link (to {real}); "
                             "give the real directory")
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{self.path} is not a directory: give a pool directory")
        if st.st_uid != os.geteuid() and not allow_other_owner:
            raise UsageError(f"pool directory {self.path} is owned by uid {st.st_uid}, not by "
                             f"you (uid {os.geteuid()}); if you trust it, allow it "
                             "(allow_other_owner=True / --allow-other-owner)")
        if not os.access(self.path, os.R_OK | os.X_OK):
            raise UsageError(f"pool directory {self.path}: permission denied (mode "
                             f"{stat.S_IMODE(st.st_mode):o}, owner uid {st.st_uid}); run as "
                             "its owner or fix its permissions")
        return True

    def exists(self) -> bool:
        """True if ``pool.json`` exists (a dmthin pool directory)."""
        return os.path.lexists(self.config_path)

    def open_file(self, path: Path, writable: bool = False) -> int:
        """Open a data or metadata file or device, without following a
        symlink when it lies in the pool directory.  Raises UsageError."""
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
        if path.parent == self.path:
            flags |= os.O_NOFOLLOW
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise UsageError(f"{path}: no such file; the pool's "
                             f"{'data' if path == self.data_path else 'metadata'} is missing"
                             ) from None
        except OSError as err:
            raise _nofollow_error(path, err) from None
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            os.close(fd)
            raise UsageError(f"{path} is neither a regular file nor a block device")
        return fd

    def check_files(self) -> None:
        """Check that data and metadata exist and are regular files or block
        devices (a symlink inside the pool directory is refused)."""
        for p in (self.metadata_path, self.data_path):
            os.close(self.open_file(p))

    # -- creation -------------------------------------------------------------
    def make_dir(self, allow_other_owner: bool = False) -> list[Created]:
        """Create the directory (0700, parents as needed) unless it exists;
        return what was created.  An existing directory is checked
        (:meth:`check_dir`) and left as it is."""
        if self.check_dir(allow_other_owner, must_exist=False):
            return []
        missing: list[Path] = []
        p = self.path
        while not os.path.lexists(p) and p != p.parent:
            missing.append(p)
            p = p.parent
        made: list[Created] = []
        for d in reversed(missing):
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                continue
            except OSError as err:
                raise _nofollow_error(d, err) from None
            st = os.lstat(d)
            made.append(Created(d, st.st_dev, st.st_ino, is_dir=True))
        os.chmod(self.path, 0o700, follow_symlinks=False)
        self.check_dir()
        return made

    def create_file(self, path: Path, size: int) -> tuple[int, Created | None]:
        """Open *path* read-write, creating it (``O_EXCL``, 0600, sparse,
        *size* bytes) if absent.  An existing regular file is kept and grown
        to *size* if smaller (never shrunk).  Returns ``(fd, created)``.
        Raises UsageError for a symlink or anything but a regular file or
        block device."""
        nofollow = os.O_NOFOLLOW if path.parent == self.path else 0
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | nofollow | os.O_CLOEXEC,
                         0o600)
        except FileExistsError:
            fd = self.open_file(path, writable=True)
            created = None
        except OSError as err:
            raise _nofollow_error(path, err) from None
        else:
            st = os.fstat(fd)
            created = Created(path, st.st_dev, st.st_ino)
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_size < size:
                os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            raise
        return fd, created

    def write_config_new(self, config: PoolConfig) -> Created:
        """Write ``pool.json`` only if it does not exist (a concurrent
        creator's is never replaced).  Raises UsageError if it exists."""
        fd, tmp = tempfile.mkstemp(prefix=".tmp", dir=self.path)
        try:
            os.write(fd, config.to_json().encode())
            os.fsync(fd)
            st = os.fstat(fd)
            os.close(fd)
            fd = -1
            try:
                os.link(tmp, self.config_path)
            except FileExistsError:
                raise UsageError(f"{self.path} already holds a pool ({CONFIG_NAME} appeared "
                                 "meanwhile); open it instead") from None
        finally:
            if fd >= 0:
                os.close(fd)
            os.unlink(tmp)
        _fsync_dir(self.path)
        return Created(self.config_path, st.st_dev, st.st_ino)

    @staticmethod
    def remove_created(made: list[Created]) -> None:
        """Remove what :meth:`make_dir`/:meth:`create_file` created, newest
        first, each only if its name still refers to the same inode."""
        for c in reversed(made):
            try:
                st = os.lstat(c.path)
                if (st.st_dev, st.st_ino) != (c.dev, c.ino):
                    continue
                os.rmdir(c.path) if c.is_dir else os.unlink(c.path)
            except OSError:
                continue

    # -- config -------------------------------------------------------------
    def load_config(self) -> PoolConfig:
        """Read ``pool.json`` (O_NOFOLLOW).  Raises UsageError naming
        :meth:`dmthin.Pool.adopt` when it is absent but the directory holds
        metadata, and for a malformed file."""
        try:
            fd = os.open(self.config_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if os.path.lexists(self.metadata_path):
                raise UsageError(f"{self.path} has no {CONFIG_NAME}: if it holds a pool made "
                                 "elsewhere (Docker, LVM, thin tools), adopt it "
                                 "(Pool.adopt / 'dmthin pool adopt')") from None
            raise UsageError(f"{self.path} is not a dmthin pool (no {CONFIG_NAME}); "
                             "create one with 'dmthin pool create'") from None
        except OSError as err:
            raise _nofollow_error(self.config_path, err) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UsageError(f"{self.config_path} is not a regular file")
            raw = os.read(fd, CONFIG_MAX_BYTES + 1)
        finally:
            os.close(fd)
        if len(raw) > CONFIG_MAX_BYTES:
            raise UsageError(f"{self.config_path}: larger than {CONFIG_MAX_BYTES} bytes, not a "
                             "dmthin pool config")
        return PoolConfig.from_json(raw, str(self.config_path))

    def save_config(self, config: PoolConfig) -> None:
        """Replace ``pool.json`` atomically."""
        write_atomic(self.config_path, config.to_json())

    # -- the pool lock -------------------------------------------------------------
    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    def lock(self, exclusive: bool = True, note_pid: bool = False) -> None:
        """Take the pool lock: ``flock`` on the metadata file (exclusive
        for a writer, shared for a reader).  With *note_pid*, a writer
        records its pid in ``.lock`` for others' error messages (O_NOFOLLOW,
        overwritten in place, never truncated).  Raises :class:`PoolLocked`
        naming the holder, UsageError if the metadata cannot be opened."""
        if self._lock_fd is not None:
            return
        fd = self.open_file(self.metadata_path)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = self._noted_pid()
            by = f"by pid {holder}" if holder else "by another process"
            raise PoolLocked(f"pool {self.path} is in use {by}; wait for it to finish or "
                             "stop it") from None
        self._lock_fd = fd
        if exclusive and note_pid:
            self._note(f"{os.getpid()}")

    def _noted_pid(self) -> str:
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return ""
        try:
            text = os.pread(fd, _PID_WIDTH + 1, 0).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
        return text if text.isdigit() else ""

    def _note(self, text: str) -> None:
        try:
            fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
        except OSError:
            return          # a note only: a symlink or a read-only directory is left alone
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            os.close(fd)
            return
        if st.st_size == 0:
            self.note_created = Created(self.lock_path, st.st_dev, st.st_ino)
        try:
            os.pwrite(fd, text.ljust(_PID_WIDTH).encode() + b"\n", 0)
        except OSError:
            os.close(fd)
            return
        self._note_fd = fd

    def unlock(self) -> None:
        """Release the pool lock (and blank the pid note)."""
        if self._note_fd is not None:
            fd, self._note_fd = self._note_fd, None
            try:
                os.pwrite(fd, b" " * _PID_WIDTH + b"\n", 0)
            except OSError:
                pass
            finally:
                os.close(fd)
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)   # closing drops the flock
