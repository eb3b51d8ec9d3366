"""Reading the event stream: a page after an id, or followed live.

Who sees what: admins every event; a member the events of their own jobs and public ones
(node events). The same rule serves the SSE stream, the list and every notification
channel (:func:`visible_to`), so a member's webhook can never carry another user's job.

Followers do not poll: they read ``id > last`` whenever the :class:`EventHub` says a
commit wrote events, and at least every :data:`FOLLOW_RECHECK_S` (a keep-alive for the
connection too). Old events are pruned after ``event_retention_days``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence

from sqlalchemy import delete, func, or_, select
from sqlalchemy.sql.elements import ColumnElement

from mlsm.master.db import Database
from mlsm.master.db.models import EventRow
from mlsm.master.security import Principal
from mlsm.master.services.events.record import EventHub, bind_hub
from mlsm.wire.events import Event, EventList

log = logging.getLogger("mlsm.master.events")

FOLLOW_RECHECK_S = 15.0  # a follower re-reads (and the stream sends a keep-alive) this often
PAGE = 500  # events read per query
PRUNE_INTERVAL_S = 3600.0
DAY_S = 86400.0


def visible_to(user: str, is_admin: bool) -> ColumnElement[bool] | None:
    """The condition on event rows a reader may see (``None``: everything)."""
    if is_admin:
        return None
    return or_(EventRow.public.is_(True), EventRow.user == user)


def event_of(r: EventRow) -> Event:
    return Event(
        id=r.id,
        ts=r.ts,
        kind=r.kind,
        message=r.message,
        user=r.user,
        job_id=r.job_id,
        node=r.node,
        data=dict(r.data or {}),
    )


class EventService:
    def __init__(self, db: Database, retention_days: float) -> None:
        self.db = db
        self.hub = EventHub()
        self.retention_s = retention_days * DAY_S
        bind_hub(db.engine.sync_engine, self.hub)

    async def page(
        self,
        *,
        user: str,
        is_admin: bool,
        after: int,
        kinds: Sequence[str] = (),
        limit: int = PAGE,
    ) -> list[EventRow]:
        """Events after ``after`` that this reader may see, oldest first."""
        q = select(EventRow).where(EventRow.id > after)
        cond = visible_to(user, is_admin)
        if cond is not None:
            q = q.where(cond)
        if kinds:
            q = q.where(EventRow.kind.in_(list(kinds)))
        async with self.db.session() as s:
            return list((await s.execute(q.order_by(EventRow.id).limit(limit))).scalars())

    async def last_id(self) -> int:
        async with self.db.session() as s:
            return int((await s.execute(select(func.max(EventRow.id)))).scalar() or 0)

    async def recent(
        self, p: Principal, *, after: int | None, kinds: Sequence[str], limit: int
    ) -> EventList:
        """The newest ``limit`` visible events (or the first ``limit`` after ``after``)."""
        last = await self.last_id()
        if after is None:
            q = select(EventRow)
            cond = visible_to(p.name, p.is_admin)
            if cond is not None:
                q = q.where(cond)
            if kinds:
                q = q.where(EventRow.kind.in_(list(kinds)))
            async with self.db.session() as s:
                rows = list(
                    (await s.execute(q.order_by(EventRow.id.desc()).limit(limit))).scalars()
                )
            rows.reverse()
        else:
            rows = await self.page(
                user=p.name, is_admin=p.is_admin, after=after, kinds=kinds, limit=limit
            )
        return EventList(events=[event_of(r) for r in rows], last_id=last)

    async def follow(
        self,
        p: Principal,
        *,
        after: int | None,
        kinds: Sequence[str],
        idle_s: float | None = None,
    ) -> AsyncIterator[Event | None]:
        """Every visible event after ``after`` (from now when ``None``), live; ``None`` is
        a keep-alive when nothing happened for :data:`FOLLOW_RECHECK_S`. With ``idle_s``
        the stream ends once nothing new came for that long (0: what is there now)."""
        last = await self.last_id() if after is None else after
        quiet_since = time.monotonic()
        while True:
            mark = self.hub.mark()
            rows = await self.page(user=p.name, is_admin=p.is_admin, after=last, kinds=kinds)
            for r in rows:
                last = r.id
                yield event_of(r)
            if rows:
                quiet_since = time.monotonic()
                continue  # read again before waiting: more may have come meanwhile
            wait = FOLLOW_RECHECK_S
            if idle_s is not None:
                left = idle_s - (time.monotonic() - quiet_since)
                if left <= 0:
                    return
                wait = min(wait, left)
            waited = time.monotonic()
            await self.hub.wait(mark, wait)
            if time.monotonic() - waited >= FOLLOW_RECHECK_S:
                yield None

    # ---------------------------------------------------------------- retention
    async def run_pruner(self) -> None:
        """Drop events older than the retention, hourly, for the master's lifetime."""
        while True:
            try:
                await self.prune()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("pruning old events failed; trying again later")
            await asyncio.sleep(PRUNE_INTERVAL_S)

    async def prune(self, now: float | None = None) -> None:
        if self.retention_s <= 0:
            return
        cutoff = (now or time.time()) - self.retention_s
        async with self.db.transaction() as s:
            await s.execute(delete(EventRow).where(EventRow.ts < cutoff))
