"""Recording events: in the transaction of the change they report, in commit order.

:func:`record` adds an :class:`~mlsm.master.db.models.EventRow` to the session that makes
the change (a job row's own session through :func:`record_for`), so the event commits or
rolls back with it: no event for a change that did not happen, no change without its
event.

Ids are the stream's order, so they must be allocated in commit order: a follower reads
``id > N`` and must never find a smaller id committed later. On SQLite the master's
writers are one at a time (``Database.transaction``) and AUTOINCREMENT never reuses an id.
On PostgreSQL a sequence hands ids out at insert time, so two transactions could commit
out of id order; a flush that inserts events first takes a transaction-scoped advisory
lock (:data:`PG_EVENTS_LOCK`), held until commit, so event-writing transactions commit one
after another in the order their ids were drawn.

After a commit that wrote events the session's :class:`EventHub` is woken, so followers
(SSE readers, the notification workers) read the new rows at once instead of polling.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, object_session

from mlsm.master.db.models import EventRow
from mlsm.master.db.models import Job as JobRow
from mlsm.wire.events import EventKind

#: The advisory lock key of event-writing transactions on PostgreSQL ("mlsm.ev" in ASCII).
PG_EVENTS_LOCK = 0x6D6C736D2E6576
_LOCK_SQL = text("SELECT pg_advisory_xact_lock(:k)")
_HUB_KEY = "mlsm.events.hub"
_LOCKED_KEY = "mlsm.events.locked"
MESSAGE_MAX = 1000


class EventHub:
    """Wakes everyone waiting for new events (one per master, bound to its engine).

    A reader takes a :meth:`mark` *before* it reads, then waits on that mark: a commit
    that lands between the read and the wait has already set the mark, so the wait ends
    at once and no event waits for the next timeout (no lost wake-up)."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def mark(self) -> asyncio.Event:
        return self._changed

    async def wait(self, mark: asyncio.Event, timeout: float) -> None:
        """Until a commit that wrote events after ``mark`` was taken, or ``timeout`` s."""
        try:
            await asyncio.wait_for(mark.wait(), timeout)
        except TimeoutError:
            pass


_HUBS: weakref.WeakKeyDictionary[Engine, EventHub] = weakref.WeakKeyDictionary()


def bind_hub(engine: Engine, hub: EventHub) -> None:
    """Sessions on ``engine`` wake ``hub`` after committing events."""
    _HUBS[engine] = hub


def record(
    s: Session,
    kind: EventKind,
    message: str,
    *,
    user: str = "",
    public: bool = False,
    job_id: int | None = None,
    node: str = "",
    **data: Any,
) -> None:
    """Add one event to the transaction ``s`` is in. ``public``: every member may see it
    (node events); otherwise its ``user`` and admins do."""
    s.add(
        EventRow(
            ts=time.time(),
            kind=kind,
            user=user,
            public=public,
            job_id=job_id,
            node=node,
            message=message[:MESSAGE_MAX],
            data=data,
        )
    )
    bind = s.get_bind()
    hub = _HUBS.get(bind) if isinstance(bind, Engine) else None
    if hub is not None:
        s.info[_HUB_KEY] = hub


def record_for(r: JobRow, kind: EventKind, message: str, **data: Any) -> None:
    """An event about job ``r``, in the transaction that changes ``r``."""
    s = object_session(r)
    if s is None:  # every transition happens on a row of an open transaction
        raise RuntimeError(f"job {r.id}: {kind} outside a transaction")
    name = f" ({r.name})" if r.name else ""
    record(
        s,
        kind,
        f"job {r.id}{name} {message}",
        user=r.user,
        job_id=r.id,
        node=r.node or "",
        **data,
    )


@event.listens_for(Session, "before_flush")
def _lock_event_order(s: Session, _ctx: Any, _instances: Any) -> None:
    if s.info.get(_LOCKED_KEY) or not any(isinstance(o, EventRow) for o in s.new):
        return
    bind = s.get_bind()
    if bind.dialect.name == "postgresql":
        s.execute(_LOCK_SQL, {"k": PG_EVENTS_LOCK})
    s.info[_LOCKED_KEY] = True


@event.listens_for(Session, "after_commit")
def _wake_followers(s: Session) -> None:
    s.info.pop(_LOCKED_KEY, None)
    hub = s.info.pop(_HUB_KEY, None)
    if isinstance(hub, EventHub):
        hub.notify()


@event.listens_for(Session, "after_rollback")
def _forget(s: Session) -> None:
    s.info.pop(_LOCKED_KEY, None)
    s.info.pop(_HUB_KEY, None)
