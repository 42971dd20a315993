"""The device set's own metadata, kept beside the pool as Docker keeps it.

Layout under ``<root>/metadata/`` (moby ``deviceset.go``)::

    <hash>                 {"device_id","size","transaction_id","initialized","deleted"}
    base                   the same for the base device (hash "")
    deviceset-metadata     {"next_device_id","BaseDeviceUUID","BaseDeviceFilesystem"}
    transaction-metadata   {"open_transaction_id","device_hash","device_id"}

Every file is written atomically (dot-named temp file, fsync, rename, fsync
of the directory); loading skips dot files, ``*.migrated`` and the two
special files, as Docker's startup walk does.  Device ids come from a
24-bit space walked from ``next_device_id`` (:class:`IdAllocator`).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import NoSpace, UsageError
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
    if not isinstance(hash_, str) or not hash_ or hash_.startswith(".") or "/" in hash_ or "\0" in hash_ \
            or hash_ in (BASE_FILE, DEVICESET_FILE, TRANSACTION_FILE) \
            or hash_.endswith(".migrated") or len(hash_.encode()) > 200:
        raise UsageError(f"devmapper: invalid device hash {hash_!r}: use a layer id "
                         "(letters, digits, '-', no '/', not starting with '.')")
    return hash_


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
        return json.dumps({"device_id": self.device_id, "size": self.size,
                           "transaction_id": self.transaction_id,
                           "initialized": self.initialized, "deleted": self.deleted})

    @classmethod
    def from_json(cls, hash_: str, text: str) -> "DevInfo":
        d = json.loads(text)
        return cls(hash_, int(d["device_id"]), int(d["size"]), int(d.get("transaction_id", 0)),
                   bool(d.get("initialized", False)), bool(d.get("deleted", False)))


@dataclass
class Transaction:
    """An open transaction (Docker's ``transaction`` struct)."""
    open_transaction_id: int
    device_hash: str
    device_id: int


class MetadataStore:
    """Reads and writes ``<root>/metadata``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def device_path(self, hash_: str) -> Path:
        return self.path / (hash_ or BASE_FILE)

    # -- devices ---------------------------------------------------------
    def save_device(self, info: DevInfo) -> None:
        """Write ``metadata/<hash>`` atomically."""
        write_atomic(self.device_path(info.hash), info.to_json())

    def remove_device(self, hash_: str) -> None:
        """Remove ``metadata/<hash>`` (missing is fine)."""
        try:
            self.device_path(hash_).unlink()
        except FileNotFoundError:
            pass

    def load_devices(self) -> dict[str, DevInfo]:
        """Every device record; ids above 2^24-1 are ignored, as Docker does.

        Raises :class:`~dmthin.errors.UsageError` naming an unreadable file.
        """
        devices = {}
        for entry in sorted(os.scandir(self.path), key=lambda e: e.name):
            name = entry.name
            if name.startswith(".") or name.endswith(".migrated") \
                    or name in (DEVICESET_FILE, TRANSACTION_FILE) or not entry.is_file():
                continue
            hash_ = "" if name == BASE_FILE else name
            try:
                info = DevInfo.from_json(hash_, Path(entry.path).read_text())
            except (ValueError, KeyError, TypeError) as err:
                raise UsageError(f"devmapper: Error loading device metadata file {entry.path}: "
                                 f"{err}; restore or remove the file") from None
            if not 0 <= info.device_id <= MAX_DEVICE_ID:
                log.error("devmapper: Ignoring Invalid DeviceId=%d", info.device_id)
                continue
            devices[hash_] = info
        return devices

    # -- deviceset-metadata ---------------------------------------------
    def load_deviceset(self) -> dict:
        p = self.path / DEVICESET_FILE
        try:
            return json.loads(p.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as err:
            raise UsageError(f"devmapper: Error decoding {p}: {err}; restore or remove it") \
                from None

    def save_deviceset(self, next_device_id: int, base_uuid: str, base_fs: str) -> None:
        write_atomic(self.path / DEVICESET_FILE, json.dumps(
            {"next_device_id": next_device_id, "BaseDeviceUUID": base_uuid,
             "BaseDeviceFilesystem": base_fs}))

    # -- transaction-metadata --------------------------------------------
    def load_transaction(self) -> Transaction | None:
        p = self.path / TRANSACTION_FILE
        try:
            d = json.loads(p.read_text())
            return Transaction(int(d["open_transaction_id"]), str(d["device_hash"]),
                               int(d["device_id"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as err:
            raise UsageError(f"devmapper: Error decoding {p}: {err}; restore or remove it") \
                from None

    def save_transaction(self, t: Transaction) -> None:
        write_atomic(self.path / TRANSACTION_FILE, json.dumps(
            {"open_transaction_id": t.open_transaction_id, "device_hash": t.device_hash,
             "device_id": t.device_id}))

    def remove_transaction(self) -> None:
        try:
            (self.path / TRANSACTION_FILE).unlink()
        except FileNotFoundError:
            pass


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
