"""Job logs on the master: one file per job attempt, appended idempotently by offset.

The agent is the writer and the master the source of truth for what it holds: a chunk
whose offset is past the end is refused with the current size (the agent resends from
there), bytes the master already has are skipped, so retries after a network fault neither
lose nor repeat a byte. Reading and following stream from the file in fixed blocks, so a
100 MB log costs the master no more memory than a small one, and what it keeps per job is
bounded too: file sizes are a cache of the most recently used :data:`MAX_SIZES_CACHED`
attempts (an attempt not in it is measured again), and a job's wake-up event lives only
while someone follows it.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

READ_BLOCK = 64 * 1024
MAX_SIZES_CACHED = 4096  # attempts whose log size is kept (far more than run at once)


@dataclass
class _Followers:
    """A job's wake-up event and how many are waiting on it now."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    count: int = 0


class LogStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._waiters: dict[int, _Followers] = {}
        self._sizes: OrderedDict[tuple[int, int], int] = OrderedDict()

    def path(self, job_id: int, attempt: int) -> Path:
        return self.root / f"{job_id}.{attempt}.log"

    def size(self, job_id: int, attempt: int) -> int:
        key = (job_id, attempt)
        size = self._sizes.get(key)
        if size is None:
            p = self.path(job_id, attempt)
            size = p.stat().st_size if p.exists() else 0
            self._remember(key, size)
        else:
            self._sizes.move_to_end(key)
        return size

    def _remember(self, key: tuple[int, int], size: int) -> None:
        self._sizes[key] = size
        self._sizes.move_to_end(key)
        while len(self._sizes) > MAX_SIZES_CACHED:
            self._sizes.popitem(last=False)

    def append(self, job_id: int, attempt: int, offset: int, data: bytes) -> int:
        """Append what lies past the current end; returns the new size."""
        size = self.size(job_id, attempt)
        if offset > size:
            return size  # a gap: the agent resends from `size`
        skip = size - offset
        if skip < len(data):
            with open(self.path(job_id, attempt), "ab") as fh:
                fh.write(data[skip:])
            size += len(data) - skip
            self._remember((job_id, attempt), size)
            self.notify(job_id)
        return size

    def notify(self, job_id: int) -> None:
        followers = self._waiters.get(job_id)
        if followers is not None:
            followers.event.set()

    def read(self, job_id: int, attempt: int, offset: int, limit: int) -> bytes:
        p = self.path(job_id, attempt)
        if not p.exists():
            return b""
        with open(p, "rb") as fh:
            fh.seek(offset)
            return fh.read(limit)

    async def stream(
        self, job_id: int, attempt: int, offset: int = 0, limit: int | None = None
    ) -> AsyncIterator[bytes]:
        p = self.path(job_id, attempt)
        if not p.exists():
            return
        remaining = limit if limit is not None else -1
        with open(p, "rb") as fh:
            fh.seek(offset)
            while remaining != 0:
                n = READ_BLOCK if remaining < 0 else min(READ_BLOCK, remaining)
                block = fh.read(n)
                if not block:
                    break
                if remaining > 0:
                    remaining -= len(block)
                yield block

    async def wait(self, job_id: int, timeout: float) -> None:
        followers = self._waiters.setdefault(job_id, _Followers())
        followers.count += 1
        followers.event.clear()
        try:
            await asyncio.wait_for(followers.event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            followers.count -= 1
            if followers.count == 0:
                del self._waiters[job_id]

    def remove(self, job_id: int, attempts: int) -> None:
        """Remove the log files of every attempt up to ``attempts`` (retention)."""
        for a in range(attempts + 1):
            self._sizes.pop((job_id, a), None)
            try:
                os.unlink(self.path(job_id, a))
            except FileNotFoundError:
                pass
