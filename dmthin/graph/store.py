"""The device set's own metadata, kept beside the pool as Docker keeps it.

Layout under ``<root>/metadata/`` (moby ``deviceset.go``)::

    <hash>                 {"device_id","size","transaction_id","initialized","deleted"}
    base                   the same for the base device (hash "")
    deviceset-metadata     {"next_device_id","BaseDeviceUUID","BaseDeviceFilesystem"}
    transaction-metadata   {"open_transaction_id","device_hash","device_id"}

The bytes are Go's ``encoding/json`` output for moby's structs (compact,
fields in declaration order, ``<``, ``>``, ``&`` escaped), so a record
dmthin writes is byte-identical to the one dockerd would write.  Every file
is written atomically (dot-named temp file, fsync, rename, fsync of the
directory); loading skips dot files, ``*.migrated`` and the two special
files, as Docker's startup walk does.  Device ids come from a 24-bit space
walked from ``next_device_id`` (:class:`IdAllocator`).

A store opened with ``readonly=True`` never creates, writes or removes a
file (reading a root dockerd made changes nothing of it).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import NoSpace, ReadOnly, UsageError
from ..pooldir import write_atomic

log = logging.getLogger(__name__)

MAX_DEVICE_ID = 0xFFFFFF
DEVICESET_FILE = "deviceset-metadata"
TRANSACTION_FILE = "transaction-metadata"
BASE_FILE = "base"


def check_hash(hash_: str) -> str:
    """Validate a device hash (a layer id) as a metadata file name.

    Raises :class:`~dmthin.errors.UsageError`.
    """
    if not isinstance(hash_, str) or not hash_ or hash_.startswith(".") or "/" in hash_ \
            or "\0" in hash_ \
            or hash_ in (BASE_FILE, DEVICESET_FILE, TRANSACTION_FILE) \
            or hash_.endswith(".migrated") or len(hash_.encode()) > 200:
        raise UsageError(f"devmapper: invalid device hash {hash_!r}: use a layer id "
                         "(letters, digits, '-', no '/', not starting with '.')")
    return hash_


def go_json(fields: list[tuple[str, object]]) -> str:
    """Go's ``json.Marshal`` of a struct: compact, fields in order, strings
    UTF-8 with ``<``, ``>``, ``&``, U+2028 and U+2029 escaped."""
    parts = []
    for key, value in fields:
        text = json.dumps(value, ensure_ascii=False)
        if isinstance(value, str):
            for ch, esc in _GO_ESCAPES:
                text = text.replace(ch, esc)
        parts.append(f"{json.dumps(key)}:{text}")
    return "{" + ",".join(parts) + "}"


_GO_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
               ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def _json_object(text: str, where: Path) -> dict[str, Any]:
    d = json.loads(text)
    if not isinstance(d, dict):
        raise TypeError(f"expected a JSON object in {where}")
    return d


@dataclass
class DevInfo:
    """One device's record (Docker's ``devInfo``)."""
    hash: str
    device_id: int
    size: int
    transaction_id: int
    initialized: bool = False
    deleted: bool = False

    def to_json(self) -> str:
        """moby's bytes: ``{"device_id":1,"size":...,"deleted":false}``."""
        return go_json([("device_id", self.device_id), ("size", self.size),
                        ("transaction_id", self.transaction_id),
                        ("initialized", self.initialized), ("deleted", self.deleted)])

    @classmethod
    def from_json(cls, hash_: str, text: str) -> DevInfo:
        """Parse a record; raises ``ValueError``/``KeyError``/``TypeError``."""
        d = json.loads(text)
        return cls(hash_, int(d["device_id"]), int(d["size"]), int(d.get("transaction_id", 0)),
                   bool(d.get("initialized", False)), bool(d.get("deleted", False)))


@dataclass
class Transaction:
    """An open transaction (Docker's ``transaction`` struct)."""
    open_transaction_id: int
    device_hash: str
    device_id: int

    def to_json(self) -> str:
        return go_json([("open_transaction_id", self.open_transaction_id),
                        ("device_hash", self.device_hash), ("device_id", self.device_id)])


@dataclass
class DeviceSetMeta:
    """``deviceset-metadata`` (the exported fields of moby's ``DeviceSet``)."""
    next_device_id: int = 0
    base_uuid: str = ""
    base_fs: str = ""

    def to_json(self) -> str:
        return go_json([("next_device_id", self.next_device_id),
                        ("BaseDeviceUUID", self.base_uuid),
                        ("BaseDeviceFilesystem", self.base_fs)])


class MetadataStore:
    """Reads and writes ``<root>/metadata``.

    ``readonly=True``: the directory must exist; every writing method raises
    :class:`~dmthin.errors.ReadOnly`.
    """

    def __init__(self, path: str | os.PathLike[str], readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        if not readonly:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def device_path(self, hash_: str) -> Path:
        return self.path / (hash_ or BASE_FILE)

    def _write(self, path: Path, text: str) -> None:
        if self.readonly:
            raise ReadOnly(f"devmapper: {self.path} is open read-only; not writing {path.name}")
        write_atomic(path, text)

    def _remove(self, path: Path) -> None:
        if self.readonly:
            raise ReadOnly(f"devmapper: {self.path} is open read-only; not removing {path.name}")
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    # -- devices ---------------------------------------------------------
    def save_device(self, info: DevInfo) -> None:
        """Write ``metadata/<hash>`` atomically.  Raises ``ReadOnly``."""
        self._write(self.device_path(info.hash), info.to_json())

    def remove_device(self, hash_: str) -> None:
        """Remove ``metadata/<hash>`` (missing is fine).  Raises ``ReadOnly``."""
        self._remove(self.device_path(hash_))

    def load_devices(self) -> dict[str, DevInfo]:
        """Every device record; ids above 2^24-1 are ignored, as Docker does.

        Raises :class:`~dmthin.errors.UsageError` naming an unreadable file.
        """
        devices = {}
        try:
            entries = sorted(os.scandir(self.path), key=lambda e: e.name)
        except FileNotFoundError:
            return {}
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name.endswith(".migrated") \
                    or name in (DEVICESET_FILE, TRANSACTION_FILE) \
                    or not entry.is_file(follow_symlinks=False):
                continue
            hash_ = "" if name == BASE_FILE else name
            try:
                info = DevInfo.from_json(hash_, _read(Path(entry.path)))
            except (ValueError, KeyError, TypeError) as err:
                raise UsageError(f"devmapper: Error loading device metadata file {entry.path}: "
                                 f"{err}; restore or remove the file") from None
            if not 0 <= info.device_id <= MAX_DEVICE_ID:
                log.error("devmapper: Ignoring Invalid DeviceId=%d", info.device_id)
                continue
            devices[hash_] = info
        return devices

    # -- deviceset-metadata ---------------------------------------------
    def load_deviceset(self) -> DeviceSetMeta:
        """The saved ``deviceset-metadata`` (defaults when absent, as Docker).

        Raises :class:`~dmthin.errors.UsageError` for undecodable JSON.
        """
        p = self.path / DEVICESET_FILE
        try:
            d = _json_object(_read(p), p)
            return DeviceSetMeta(int(d.get("next_device_id", 0)),
                                 str(d.get("BaseDeviceUUID", "")),
                                 str(d.get("BaseDeviceFilesystem", "")))
        except FileNotFoundError:
            return DeviceSetMeta()
        except (ValueError, TypeError) as err:
            raise UsageError(f"devmapper: Error decoding {p}: {err}; restore or remove it") \
                from None

    def save_deviceset(self, meta: DeviceSetMeta) -> None:
        """Raises ``ReadOnly``."""
        self._write(self.path / DEVICESET_FILE, meta.to_json())

    # -- transaction-metadata --------------------------------------------
    def load_transaction(self) -> Transaction | None:
        """The open transaction, or None when the file is absent.  Like
        moby, undecodable content leaves the fields at zero."""
        p = self.path / TRANSACTION_FILE
        try:
            text = _read(p)
        except FileNotFoundError:
            return None
        t = Transaction(0, "", 0)
        try:
            d = _json_object(text, p)
            t = Transaction(int(d.get("open_transaction_id", 0)), str(d.get("device_hash", "")),
                            int(d.get("device_id", 0)))
        except (ValueError, TypeError) as err:
            log.error("devmapper: Error decoding %s: %s", p, err)
        return t

    def save_transaction(self, t: Transaction) -> None:
        """Raises ``ReadOnly``."""
        self._write(self.path / TRANSACTION_FILE, t.to_json())

    def remove_transaction(self) -> None:
        """Raises ``ReadOnly``."""
        self._remove(self.path / TRANSACTION_FILE)


def _read(path: Path) -> str:
    """A metadata file's text, not following a symlink (O_NOFOLLOW)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return f.read().decode("utf-8", "replace")


class IdAllocator:
    """Docker's 24-bit device id bitmap with ``next_device_id`` stepping.

    :meth:`next_free` first steps ``next_id`` by one (mod 2^24), then scans
    for a free id, so a fresh set hands out 1, 2, 3...
    """

    def __init__(self, next_id: int = 0):
        self.next_id = next_id & MAX_DEVICE_ID
        self.used: set[int] = set()

    def mark_used(self, dev_id: int) -> None:
        self.used.add(dev_id)

    def mark_free(self, dev_id: int) -> None:
        self.used.discard(dev_id)

    def is_free(self, dev_id: int) -> bool:
        return dev_id not in self.used

    def next_free(self) -> int:
        """Reserve and return the next free id.

        Raises :class:`~dmthin.errors.NoSpace` ("Unable to find a free
        device ID") when all 2^24 ids are taken.
        """
        if len(self.used) > MAX_DEVICE_ID:
            raise NoSpace("devmapper: Unable to find a free device ID; delete unused images "
                          "or containers")
        for _ in range(MAX_DEVICE_ID + 1):
            self.next_id = (self.next_id + 1) & MAX_DEVICE_ID
            if self.next_id not in self.used:
                self.used.add(self.next_id)
                return self.next_id
        raise NoSpace("devmapper: Unable to find a free device ID; delete unused images "
                      "or containers")
