"""The pool modes of dm-thin.c (``enum pool_mode``) and the no-space policy.

:class:`PoolModes` holds a pool's mode as ``set_pool_mode`` changes it, with
the ``error_if_no_space`` policy that out_of_data_space applies: with it, a
write needing a new block fails at once (ENOSPC); without it the write is
queued until space appears or the no-space timeout passes, after which the
pool behaves as ``error_if_no_space`` until it returns to write mode
(``do_no_space_timeout``).  Every mode change raises an event.
"""
from __future__ import annotations

import enum
import threading
import time

from ..errors import InvalidArgument, IOFailure
from ..target import PoolMode
from .engine import MetadataEngine
from .events import EventSource


class Mode(enum.IntEnum):
    """``enum pool_mode``, in the kernel's degradation order."""
    WRITE = 0
    OUT_OF_DATA_SPACE = 1
    OUT_OF_METADATA_SPACE = 2
    READ_ONLY = 3
    FAIL = 4

    @property
    def status(self) -> PoolMode:
        """The mode as the pool status shows it (both read-only modes as ``ro``)."""
        if self == Mode.OUT_OF_DATA_SPACE:
            return PoolMode.OUT_OF_DATA_SPACE
        if self in (Mode.OUT_OF_METADATA_SPACE, Mode.READ_ONLY):
            return PoolMode.RO
        return PoolMode.RW


class PoolModes(EventSource):
    """A pool's mode, its no-space policy and its events (lock held).

    *name* names the pool in errors; *md* says whether needs_check is set;
    *error_if_no_space* is the table's feature; *no_space_timeout* is in
    seconds (0 or None: queue for ever).
    """

    def __init__(self, name: str, cond: threading.Condition, md: MetadataEngine,
                 error_if_no_space: bool, no_space_timeout: float | None):
        EventSource.__init__(self, cond)
        self.name = name
        self.metadata = md
        self._requested_error_if_no_space = error_if_no_space
        self.error_if_no_space = error_if_no_space
        self.no_space_timeout = no_space_timeout
        self._no_space_deadline: float | None = None
        self._mode = Mode.WRITE
        self._closed = False

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def read_only(self) -> bool:
        """Out of metadata space, read-only or failed: no metadata changes."""
        return self._mode >= Mode.OUT_OF_METADATA_SPACE

    @property
    def closed(self) -> bool:
        return self._closed

    def set_mode(self, new: Mode, quiet: bool = False) -> None:
        """``set_pool_mode``: a pool with needs_check set does not return to
        write mode, a failed pool stays failed; raises a mode event unless
        *quiet*, and wakes waiters."""
        old = self._mode
        if new == Mode.WRITE and self.metadata.needs_check:
            new = old if old != Mode.WRITE else Mode.READ_ONLY
        if old == Mode.FAIL:
            new = old
        if new == Mode.OUT_OF_DATA_SPACE:
            if not self.error_if_no_space and self.no_space_timeout and old != new:
                self._no_space_deadline = time.monotonic() + self.no_space_timeout
        elif new == Mode.WRITE:
            self._no_space_deadline = None
            self.error_if_no_space = self._requested_error_if_no_space
        self._mode = new
        if old != new and not quiet:
            self._event(f"mode:{new.status.value}")
        self._event_cond.notify_all()

    def no_space_wait(self, most: float) -> float | None:
        """Seconds (at most *most*) a queued writer may wait before the
        no-space timeout; None once it has passed (the pool then switches to
        ``error_if_no_space``, with an event)."""
        deadline = self._no_space_deadline
        if deadline is None:
            return most
        now = time.monotonic()
        if now >= deadline:
            self.error_if_no_space = True          # do_no_space_timeout
            self._event("error_if_no_space")
            return None
        return min(most, deadline - now)

    def check_open(self) -> None:
        """Raise InvalidArgument if the pool is closed."""
        if self._closed:
            raise InvalidArgument(f"pool {self.name} is closed")

    def check_not_failed(self) -> None:
        """Raise InvalidArgument (closed) or IOFailure (failed pool)."""
        self.check_open()
        if self._mode == Mode.FAIL:
            raise IOFailure(f"pool {self.name} has failed (its metadata could not be "
                            "rolled back): run 'dmthin check', then thin_repair")

    def ro_error(self, what: str) -> IOFailure:
        """The EIO error for *what* refused by a read-only pool."""
        reason = {Mode.OUT_OF_METADATA_SPACE: "out of metadata space",
                  Mode.READ_ONLY: "read-only"}.get(self._mode, self._mode.name.lower())
        return IOFailure(f"{what}: pool {self.name} is {reason}"
                         + ("; it needs 'dmthin check' (needs_check is set)"
                            if self.metadata.needs_check else
                            "; grow its metadata or reopen it writable"))


__all__ = ["Mode", "PoolModes"]
