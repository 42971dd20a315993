"""Device events of the simulated pool: the dm device's event counter.

The kernel calls ``dm_table_event`` when the data low water mark is reached,
when the metadata threshold is crossed and on every pool mode change;
userspace sees the counter rise (``dmsetup info``) and ``dmsetup wait``
returns.  :class:`EventSource` gives the simulator the same: a counter,
listeners, and a blocking wait.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from ..errors import TimedOut


class EventSource:
    """An event counter guarded by a pool's condition variable."""

    def __init__(self, cond: threading.Condition) -> None:
        self._event_cond = cond
        self._event_nr = 0
        #: every event so far: ``(event number, reason)``
        self.events: list[tuple[int, str]] = []
        self._listeners: list[Callable[[str], None]] = []

    @property
    def event_nr(self) -> int:
        """The device's event counter (``dmsetup info``'s "Events")."""
        return self._event_nr

    def add_event_listener(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` on each event; reasons: ``"low_water_mark"``,
        ``"metadata_low_water_mark"``, ``"mode:rw"``, ``"mode:ro"``,
        ``"mode:out_of_data_space"``, ``"error_if_no_space"`` (the no-space
        timeout passed).  Callbacks run with the pool locked: they must not
        wait for another thread that uses the pool."""
        self._listeners.append(callback)

    def wait_event(self, event_nr: int, timeout: float | None = None) -> int:
        """Wait until :attr:`event_nr` exceeds *event_nr* (like ``dmsetup
        wait``); return it.  Raises :class:`~dmthin.errors.TimedOut`."""
        with self._event_cond:
            if not self._event_cond.wait_for(lambda: self._event_nr > event_nr, timeout):
                raise TimedOut(f"no pool event after event {event_nr} within {timeout} s")
            return self._event_nr

    def _event(self, reason: str) -> None:
        """Raise an event (call with the pool locked)."""
        self._event_nr += 1
        self.events.append((self._event_nr, reason))
        for cb in list(self._listeners):
            cb(reason)
        self._event_cond.notify_all()
