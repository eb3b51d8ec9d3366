"""Pins on job directories: a directory something reads (a fetch of its outputs being
served, a listing) is never removed meanwhile, whatever retention says.

A running attempt needs no pin: the sweeper asks the job supervisor too. Pins are counted
(two fetches of one job hold two) and live in memory only: an agent that restarts serves
nothing until asked again. Pinning and removing exclude each other under one lock: a
removal claims the directory only while nothing pins it, and a pin asked for meanwhile is
refused (:class:`DirBeingRemoved`) instead of reading a tree that is going away.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


class DirBeingRemoved(Exception):
    """The job's directory is being removed (retention or a purge)."""


class JobDirPins:
    """Counted pins by job id; safe to use from the event loop and from threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pins: Counter[int] = Counter()
        self._removing: set[int] = set()

    @contextmanager
    def hold(self, job_id: int) -> Iterator[None]:
        """Keep ``job_id``'s directory while the ``with`` block runs."""
        with self._lock:
            if job_id in self._removing:
                raise DirBeingRemoved(f"job {job_id}'s directory is being removed")
            self._pins[job_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._pins[job_id] -= 1
                if self._pins[job_id] <= 0:
                    del self._pins[job_id]

    def pinned(self, job_id: int) -> bool:
        with self._lock:
            return self._pins.get(job_id, 0) > 0

    @contextmanager
    def removal(self, job_id: int) -> Iterator[bool]:
        """Claim ``job_id``'s directory for removal: yields False (and claims nothing) when
        it is pinned, else True, and refuses pins until the block ends."""
        with self._lock:
            claimed = self._pins.get(job_id, 0) == 0 and job_id not in self._removing
            if claimed:
                self._removing.add(job_id)
        try:
            yield claimed
        finally:
            if claimed:
                with self._lock:
                    self._removing.discard(job_id)
