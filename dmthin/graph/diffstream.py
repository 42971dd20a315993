"""A layer diff streamed through a pipe, as Docker's ``Diff`` returns an
``io.ReadCloser``: a thread writes the tar into the pipe while the caller
reads (e.g. applies it to another layer), so no scratch file holds it.
"""
from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Callable
from typing import IO, Any


class DiffStream(io.RawIOBase):
    """The read end of a pipe filled by ``produce(out)`` in a thread.

    Reading to the end, or :meth:`close`, waits for the thread and raises
    the error it hit (the tar would be truncated); closing early stops it
    (it sees a broken pipe).  Not seekable."""

    def __init__(self, produce: Callable[[IO[bytes]], None], name: str = "dmthin-diff"):
        super().__init__()
        self._rfd, wfd = os.pipe()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(produce, wfd), name=name,
                                        daemon=True)
        self._thread.start()

    def _run(self, produce: Callable[[IO[bytes]], None], wfd: int) -> None:
        try:
            with os.fdopen(wfd, "wb", buffering=1 << 20) as out:
                produce(out)
        except BrokenPipeError:
            pass                                   # the reader closed early
        except BaseException as err:  # noqa: BLE001 - handed to the reader
            self._error = err

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = os.readv(self._rfd, [b])
        if n == 0:
            self._finish()
        return n

    def _finish(self) -> None:
        self._thread.join()
        err, self._error = self._error, None
        if err is not None:
            raise err

    def close(self) -> None:
        if self.closed:
            return
        with contextlib.suppress(OSError):
            os.close(self._rfd)
        super().close()
        self._finish()
