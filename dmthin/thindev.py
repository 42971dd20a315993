""":class:`ThinDevice`: one thin device of a :class:`dmthin.Pool`.

A handle that stays valid across deactivation: :meth:`ThinDevice.activate`
and :meth:`ThinDevice.deactivate` go through the pool, which keeps the
register of active devices.  Every argument is checked here (types with
``operator.index``, ranges against the size) before the backend sees it,
so a bad call never reaches -- or damages -- the pool.
"""
from __future__ import annotations

import operator
from typing import TYPE_CHECKING

from .backend import ThinBackend
from .errors import InvalidArgument, NoSpace, ReadOnly
from .target import ThinStatus, ThinTable
from .units import SECTOR_SIZE, format_size

if TYPE_CHECKING:
    from .pool import Pool


def check_index(value: object, what: str) -> int:
    """*value* as a non-negative int (``operator.index``: no floats, no
    None, no bools).  Raises :class:`~dmthin.errors.InvalidArgument`."""
    if isinstance(value, bool):
        raise InvalidArgument(f"invalid {what} {value!r}: give a whole number of bytes")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgument(f"invalid {what} {value!r}: give a whole number of bytes, "
                              f"not {type(value).__name__}") from None
    if number < 0:
        raise InvalidArgument(f"invalid {what} {number}: it must not be negative")
    return number


def check_bytes(data: object) -> memoryview:
    """*data* as a byte view.  Raises InvalidArgument for anything that is
    not bytes-like."""
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgument(f"invalid data of type {type(data).__name__}: give bytes") \
            from None
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


class ThinDevice:
    """A thin device of a :class:`~dmthin.Pool`, active or not.

    Byte offsets and lengths; reads of unprovisioned space return zeros.
    Errors carry the kernel's errno: ENOSPC past the end of the device or
    when the pool is out of space, EINVAL for a bad argument, EROFS on a
    read-only pool.  Get one from :meth:`Pool.thin`,
    :meth:`Pool.create_thin` or :meth:`Pool.create_snap`.
    """

    def __init__(self, pool: Pool, dev_id: int, size: int, name: str | None = None):
        self.pool = pool
        self.dev_id = dev_id
        self._size = size
        self._name = name
        self._impl: ThinBackend | None = None

    def __repr__(self) -> str:
        state = "active" if self._impl is not None else "inactive"
        return f"<ThinDevice {self.dev_id} {format_size(self.size)} {state}>"

    def _bind(self, impl: ThinBackend | None) -> None:
        """Set by the pool only, when it activates or deactivates us."""
        if impl is None and self._impl is not None:
            self._size = self._impl.size
        self._impl = impl

    @property
    def active(self) -> bool:
        return self._impl is not None

    @property
    def size(self) -> int:
        """The device's size in bytes."""
        return self._impl.size if self._impl is not None else self._size

    @property
    def path(self) -> str | None:
        """The block device node (kernel backend, active), else None."""
        return self._impl.path if self._impl is not None else None

    @property
    def name(self) -> str | None:
        """The device-mapper name (kernel backend), or None (simulator)."""
        return self._impl.name if self._impl is not None else self._name

    @property
    def activated(self) -> bool:
        """True if this process activated the device (False: it was already
        active in the kernel, and ``Pool.close`` leaves it so)."""
        return self._impl is not None and self._impl.activated

    def in_use(self) -> bool:
        """True if something outside this object holds the device open,
        mounted, or stacked on it (always False in the simulator and when
        inactive here)."""
        return self._impl.in_use() if self._impl is not None else False

    def _live(self) -> ThinBackend:
        if self._impl is None:
            raise InvalidArgument(f"thin device {self.dev_id} is not active; call activate()")
        return self._impl

    def _range(self, offset: object, length: object, what: str) -> tuple[int, int]:
        off = check_index(offset, f"{what} offset")
        n = check_index(length, f"{what} length")
        if off + n > self.size:
            raise NoSpace(f"{what} of {n} bytes at offset {off} goes past the end of thin "
                          f"device {self.dev_id} ({format_size(self.size)}, {self.size} bytes)")
        return off, n

    def _writable(self, what: str) -> None:
        if self.pool.readonly:
            raise ReadOnly(f"{what} on thin device {self.dev_id}: the pool is open read-only; "
                           "open it without readonly")

    def read(self, offset: int, length: int) -> bytes:
        """Read *length* bytes at *offset*; a read past the end is short."""
        impl = self._impl
        if type(offset) is int and type(length) is int and offset >= 0 and length >= 0 \
                and impl is not None:
            # the checks below, for the common case in one test
            n = min(length, impl.size - offset)
            return impl.read(offset, n) if n > 0 else b""
        off = check_index(offset, "read offset")
        n = check_index(length, "read length")
        impl = self._live()
        n = max(0, min(n, self.size - off))
        return impl.read(off, n) if n else b""

    def write(self, offset: int, data: bytes) -> int:
        """Write *data* at *offset*; returns the number of bytes written."""
        impl = self._impl
        if type(data) is bytes and type(offset) is int and impl is not None and offset >= 0 \
                and offset + len(data) <= impl.size and not self.pool.readonly:
            # the checks below, for the common case in one test
            return impl.write(offset, data) if data else 0
        view = check_bytes(data)
        off, n = self._range(offset, len(view), "write")
        impl = self._live()
        self._writable("write")
        payload = data if isinstance(data, bytes) else bytes(view)
        return impl.write(off, payload) if n else 0

    def discard(self, offset: int, length: int) -> None:
        """Discard a byte range: whole data blocks inside it are unmapped."""
        off, n = self._range(offset, length, "discard")
        impl = self._live()
        self._writable("discard")
        if n:
            impl.discard(off, n)

    def flush(self) -> None:
        """Flush: the pool commits its metadata, as on a REQ_PREFLUSH."""
        impl = self._live()
        if not self.pool.readonly:
            impl.flush()

    def status(self) -> ThinStatus:
        return self._live().status()

    def status_line(self) -> str:
        """The kernel's thin status text: ``<mapped sectors> <highest|->``."""
        return self.status().to_line()

    def table_line(self) -> str:
        """The thin table as ``dmsetup table`` echoes it (the simulator
        names the pool ``pool``)."""
        pool_dev = self.pool.info().pool_dev or "pool"
        return ThinTable(self.size // SECTOR_SIZE, pool_dev, self.dev_id).to_line()

    def activate(self) -> ThinDevice:
        """Activate the device (the kernel backend makes a dm device);
        return the active handle (this one)."""
        return self.pool.thin(self.dev_id, size=self.size, name=self._name)

    def deactivate(self) -> None:
        """Deactivate the device, whoever activated it.  Raises EBUSY (and
        stays active) if it is open or mounted elsewhere."""
        if self._impl is not None:
            self.pool.deactivate_thin(self.dev_id)
