"""Ships each job's ``output.log`` to the master, chunk by chunk, resumable by offset.

The master is the source of truth: every chunk says at which byte offset it starts, the
master appends it idempotently and answers the offset it now holds, and the shipper goes on
from that answer (seeking back or forward when it differs from what it sent). A failed send
keeps the offset and is retried after a growing backoff, so a retry neither loses nor
duplicates a byte. Memory stays bounded: at most one chunk (``MAX_LOG_CHUNK``) per job is
read at a time, in a worker thread.

One log file per job spans its attempts (each attempt appends), so offsets only grow.
A log the master refuses for good (it no longer takes the job's log from this node, since
the attempt was moved elsewhere) counts as sent: it stays in ``output.log`` here and is not
resent forever (:func:`send_through`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agent.runtimes import jobfs
from agent.state import AgentState
from mlsm import errors
from mlsm.wire.agent import MAX_LOG_CHUNK, LogAck, LogChunk

log = logging.getLogger(__name__)
agent_log = logging.getLogger("mlsm.agent")  # what the agent's operator reads

# send(job_id, attempt, offset, data) -> the master's next_offset
SendFn = Callable[[int, int, int, bytes], Awaitable[int]]


class LogLink(Protocol):
    """Where log chunks go: the agent's link to the master."""

    async def send_log(self, chunk: LogChunk) -> LogAck: ...


def send_through(link: LogLink) -> SendFn:
    """The shipper's send over ``link``; a refusal for good (403) counts as sent."""

    async def send(job_id: int, attempt: int, offset: int, data: bytes) -> int:
        chunk = LogChunk(job_id=job_id, attempt=attempt, offset=offset, data=data)
        try:
            ack = await link.send_log(chunk)
        except errors.PermissionDenied as exc:
            agent_log.warning(
                "job %s: the master refuses its log (%s); kept on this node only",
                job_id,
                exc.message,
            )
            return offset + len(data)
        return int(ack.next_offset)

    return send


BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
FLUSH_TIMEOUT_S = 60.0
_EOF, _SENT, _FAILED = "eof", "sent", "failed"


@dataclass
class _Tail:
    job_id: int
    attempt: int
    path: Path
    offset: int
    owner: int | None = None  # the job's account: a log owned by anyone else is not read
    failures: int = 0
    retry_at: float = 0.0
    refused: bool = False  # the log is not a regular file: said once
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class LogShipper:
    """Tails the logs of the jobs it is told to :meth:`watch` and sends what is new."""

    def __init__(
        self,
        send: SendFn,
        *,
        state: AgentState | None = None,
        chunk_size: int = MAX_LOG_CHUNK,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        if not 0 < chunk_size <= MAX_LOG_CHUNK:
            raise ValueError(f"chunk_size must be in 1..{MAX_LOG_CHUNK}")
        self._send = send
        self._state = state
        self._chunk = chunk_size
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        self._tails: dict[int, _Tail] = {}
        #: Set by :meth:`watch`: a loop that waits while no log is watched wakes on it.
        self.watched = asyncio.Event()

    def watch(
        self,
        job_id: int,
        attempt: int,
        path: Path,
        offset: int | None = None,
        *,
        owner: int | None = None,
    ) -> None:
        """Ship ``path`` for ``job_id`` from ``offset`` (default: what the state file acked);
        ``owner``: the uid the log must belong to (the job's account)."""
        if offset is None:
            offset = self._state.log_acked.get(job_id, 0) if self._state else 0
        tail = self._tails.get(job_id)
        self.watched.set()
        if tail is None:
            self._tails[job_id] = _Tail(job_id, attempt, Path(path), offset, owner)
        else:  # a new attempt of the same job appends to the same file
            tail.attempt, tail.path, tail.owner = attempt, Path(path), owner
            tail.refused = False

    def forget(self, job_id: int) -> None:
        self._tails.pop(job_id, None)

    def offset(self, job_id: int) -> int | None:
        tail = self._tails.get(job_id)
        return tail.offset if tail else None

    def jobs(self) -> list[int]:
        return list(self._tails)

    async def pump_once(self) -> int:
        """Send at most one chunk per job whose backoff has passed; returns bytes accepted."""
        sent = 0
        now = time.monotonic()
        for tail in list(self._tails.values()):
            if tail.retry_at > now or tail.lock.locked():
                continue
            async with tail.lock:
                _, n = await self._ship_chunk(tail)
            sent += n
        return sent

    async def flush(self, job_id: int, *, timeout_s: float = FLUSH_TIMEOUT_S) -> bool:
        """Ship ``job_id``'s log to its end (call once the job has ended, before its report).

        Returns ``True`` at end of file, ``False`` when the master stayed unreachable for
        ``timeout_s`` (the rest goes later with :meth:`pump_once`).
        """
        tail = self._tails.get(job_id)
        if tail is None:
            return True
        deadline = time.monotonic() + timeout_s
        async with tail.lock:
            while True:
                status, _ = await self._ship_chunk(tail)
                if status == _EOF:
                    return True
                if status == _FAILED:
                    wait = max(0.0, tail.retry_at - time.monotonic())
                    if time.monotonic() + wait > deadline:
                        return False
                    await asyncio.sleep(wait)

    async def _ship_chunk(self, tail: _Tail) -> tuple[str, int]:
        """One read + send: (status, bytes the master accepted)."""
        try:
            data = await asyncio.to_thread(
                _read_chunk, tail.path, tail.offset, self._chunk, tail.owner
            )
        except OSError as e:
            if not tail.refused:
                log.warning("job %s: not shipping its log %s: %s", tail.job_id, tail.path, e)
                tail.refused = True
            return _EOF, 0
        if not data:
            return _EOF, 0
        try:
            next_offset = await self._send(tail.job_id, tail.attempt, tail.offset, data)
            if next_offset == tail.offset:
                raise RuntimeError(f"master accepted nothing at offset {next_offset}")
        except Exception as e:  # any transport/master failure: keep the offset, retry later
            tail.failures += 1
            delay = min(self._backoff_max, self._backoff_initial * 2 ** (tail.failures - 1))
            tail.retry_at = time.monotonic() + delay
            log.debug("log chunk of job %s at %s failed: %s", tail.job_id, tail.offset, e)
            return _FAILED, 0
        tail.failures, tail.retry_at = 0, 0.0
        if next_offset != tail.offset + len(data):
            log.debug(
                "master holds job %s log up to %s; resending from there", tail.job_id, next_offset
            )
        accepted = max(0, next_offset - tail.offset)
        tail.offset = max(0, next_offset)
        if self._state is not None:
            self._state.set_log_offset(tail.job_id, tail.offset)
        return _SENT, accepted


def _read_chunk(path: Path, offset: int, size: int, owner: int | None) -> bytes:
    """The next bytes of a job's log, which lies in the job's own directory. Never follows
    a link, opens a FIFO or device, or reads a hard link or another account's file that the
    job put in its place (see agent.runtimes.jobfs): such a log raises OSError."""
    return jobfs.read_regular(path, size, offset, owner)
