"""Two threads over a few reused buffers: one fills them, the other works on what it filled.

A direct receive used to decrypt a TLS record, write it and hand it to the hashing in one
thread, one step after the other. With a :class:`Handoff` the receiving thread fills a
buffer (``recv_into``: decryption) and hands it over with what it parsed from it; a worker
thread writes and hashes it (a sink's ``feed``) while the next buffer is filled. Both
steps let go of the GIL for large buffers, so on two cores a receive costs about the
slower of the two instead of their sum.

Memory is bounded: ``buffers`` buffers of ``size`` bytes, allocated once and reused; a
buffer goes back to the pool only when the worker is done with it, so :meth:`buffer`
blocks while every buffer is filled or being worked on (the socket then waits in the
kernel, and TCP holds the sender back). Nothing is copied between the threads: the item
handed over may hold views of its buffer.

Errors: the worker's first exception stops it (what is queued after it is not worked on)
and is raised to the filling thread by its next :meth:`buffer`, :meth:`hand`,
:meth:`check` or :meth:`finish`. :meth:`finish` waits until everything handed over was
worked on. :meth:`close` (always, in a ``finally``) lets the worker finish what was
handed over — bytes received before a cut are written and count towards the resume —
and joins it, so nothing the worker uses (a sink) is touched after ``close`` returns.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["HANDOFF_BUFFERS", "HANDOFF_BYTES", "Handoff"]

T = TypeVar("T")

HANDOFF_BUFFERS = 4  # buffers per handoff: one filling, one worked on, two queued
HANDOFF_BYTES = 1 << 20  # each buffer's size


class Handoff(Generic[T]):
    """See the module docstring. ``work(item)`` runs in the worker thread, in the order the
    items were handed over; the item's buffer is reused once it returns."""

    def __init__(
        self,
        work: Callable[[T], None],
        *,
        buffers: int = HANDOFF_BUFFERS,
        size: int = HANDOFF_BYTES,
        name: str = "mlsm-bulk-handoff",
    ) -> None:
        if buffers < 2:
            raise ValueError("a handoff needs at least two buffers")
        self._work = work
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(buffers):
            self._free.put(bytearray(size))
        self._full: queue.SimpleQueue[tuple[bytearray, T] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._failed = threading.Event()
        self._lock = threading.Lock()
        self.in_flight = 0  # buffers handed over and not yet worked on
        self.most_in_flight = 0  # the most there ever were (bounded by ``buffers``)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ the filling thread
    def buffer(self, poll_s: float = 0.5) -> bytearray:
        """A free buffer, waiting while all are in use (raises the worker's error)."""
        while True:
            self.check()
            try:
                return self._free.get(timeout=poll_s)
            except queue.Empty:
                continue

    def hand(self, buf: bytearray, item: T) -> None:
        """Give ``buf`` (from :meth:`buffer`) and what to do with it to the worker."""
        self.check()
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self._full.put((buf, item))

    @property
    def free(self) -> int:
        """Buffers in the pool now (none while every one is filled or worked on)."""
        return self._free.qsize()

    @property
    def failed(self) -> bool:
        """The worker stopped on an error (:meth:`check` raises it)."""
        return self._failed.is_set()

    def check(self) -> None:
        """Raise the worker's error, if it had one."""
        if self._failed.is_set():
            assert self._error is not None
            raise self._error

    def finish(self) -> None:
        """Wait until everything handed over was worked on; raise the worker's error."""
        self.close()
        self.check()

    def close(self) -> None:
        """Let the worker end after what was handed over, and join it (idempotent)."""
        if not self._closed:
            self._closed = True
            self._full.put(None)
        self._thread.join()

    # ------------------------------------------------------------ the worker thread
    def _run(self) -> None:
        while (got := self._full.get()) is not None:
            buf, item = got
            try:
                if not self._failed.is_set():
                    self._work(item)
            except BaseException as exc:  # handed to the filling thread
                self._error = exc
                self._failed.set()
            finally:
                with self._lock:
                    self.in_flight -= 1
                self._free.put(buf)
