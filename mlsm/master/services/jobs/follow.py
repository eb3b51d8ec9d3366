"""Job logs through the master: agents append them, people read and follow them.

The bytes live in the :class:`~mlsm.master.services.joblogs.LogStore`; this service decides
who may write (only the node the job runs on) and read (its owner and admins), and turns a
log into the follow stream: ``log`` events with new text, ``attempt`` when a retry starts
a new log, then ``end`` with the final state.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator

from mlsm.errors import NotFound, PermissionDenied
from mlsm.master.db import Database
from mlsm.master.db.models import Job as JobRow
from mlsm.master.security import Principal
from mlsm.master.services.joblogs import LogStore
from mlsm.master.services.jobs.table import JobTable
from mlsm.master.services.jobs.views import may_see_private
from mlsm.master.services.livenode import LiveNode
from mlsm.wire import agent as w
from mlsm.wire import api
from mlsm.wire.follow import AttemptStarted, LogEnded, LogEvent, LogText

FOLLOW_POLL_S = 5.0  # a follower re-checks the job's state at least this often


class JobLogs:
    def __init__(self, db: Database, table: JobTable, logs: LogStore) -> None:
        self.db = db
        self.table = table
        self.logs = logs

    async def append(self, node: LiveNode, chunk: w.LogChunk) -> int:
        """Append an agent's chunk (idempotent by offset); the new size."""
        a = self.table.active.get(chunk.job_id)
        if a is None or a.node_id != node.id:
            async with self.db.session() as s:
                r = await s.get(JobRow, chunk.job_id)
            if r is None or r.node != node.name:
                raise PermissionDenied(f"job {chunk.job_id} does not run on node {node.name}")
        return self.logs.append(chunk.job_id, chunk.attempt, chunk.offset, chunk.data)

    async def _readable(self, p: Principal, job_id: int) -> JobRow:
        async with self.db.session() as s:
            r = await s.get(JobRow, job_id)
        if r is None:
            raise NotFound(f"no job {job_id}")
        if not may_see_private(p, r):
            raise PermissionDenied(
                f"job {job_id} belongs to {r.user}: only its owner and admins read its log"
            )
        return r

    async def stream(
        self, p: Principal, job_id: int, offset: int, limit: int | None
    ) -> tuple[int, AsyncIterator[bytes]]:
        """The current attempt's log size, and its bytes from ``offset``."""
        r = await self._readable(p, job_id)
        return self.logs.size(job_id, r.attempt), self.logs.stream(job_id, r.attempt, offset, limit)

    async def follow(self, p: Principal, job_id: int, offset: int) -> AsyncIterator[LogEvent]:
        """The job's log as :mod:`mlsm.wire.follow` events: new output, a new attempt when a
        retry starts a new log, then the end with the final state.

        Bytes are decoded incrementally, so a UTF-8 character split between two blocks
        arrives whole; each event's offset lets a client resume exactly where it stopped.
        """
        r = await self._readable(p, job_id)
        attempt = r.attempt
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            async for block in self.logs.stream(job_id, attempt, offset):
                offset += len(block)
                text = decoder.decode(block)
                if text:
                    yield LogText(text=text, offset=offset)
            state, cur_attempt = await self._state_of(job_id)
            if cur_attempt != attempt:
                attempt, offset = cur_attempt, 0
                decoder.reset()
                yield AttemptStarted(attempt=cur_attempt)
                continue
            if state in api.FINAL_STATES and offset >= self.logs.size(job_id, attempt):
                tail = decoder.decode(b"", final=True)
                if tail:
                    yield LogText(text=tail, offset=offset)
                yield LogEnded(state=state, offset=offset)
                return
            await self.logs.wait(job_id, FOLLOW_POLL_S)

    async def _state_of(self, job_id: int) -> tuple[str, int]:
        a = self.table.active.get(job_id) if job_id not in self.table.final_states else None
        if a is not None:
            return a.state, a.attempt
        async with self.db.session() as s:
            r = await s.get(JobRow, job_id)
        return (r.state, r.attempt) if r else ("cancelled", 0)
