"""The event stream and notifications: ``/api/v1/events``, ``/api/v1/notify``, and the
idle-GPU exemption of a job.

Everyone reads the events they may see (their own jobs' and nodes'; admins all) and
manages their own notifications; lab-wide notifications and exemptions are admins'.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, delete, get, post
from litestar.params import Parameter
from litestar.response import ServerSentEvent

from mlsm.errors import ValidationError
from mlsm.master.http import audit_target
from mlsm.master.routes.common import DbId, ServicesDep, principal
from mlsm.master.services.events.webhook import shown
from mlsm.wire.events import (
    EventList,
    JobIdleExempt,
    JobIdleState,
    NotifyCreate,
    NotifyCreated,
    NotifyDelivery,
    NotifySubscription,
    encode_json,
    parse_event_types,
)
from mlsm.wire.ints import INT64_MAX

MAX_EVENTS = 10_000
MAX_WAIT_S = 86_400.0
KEEPALIVE = {"comment": "keep-alive", "data": None}


def _after(after: int | None, last_event_id: str | None) -> int | None:
    """``?after=`` wins; else the SSE reconnect header ``Last-Event-ID``."""
    if after is not None:
        return after
    if not last_event_id:
        return None
    text = last_event_id.strip()
    if not text.isascii() or not text.isdigit() or int(text) > INT64_MAX:
        raise ValidationError("Last-Event-ID: expected an event id", path="Last-Event-ID")
    return int(text)


@get("/api/v1/events", opt={"role": "member"}, tags=["events"])
async def list_events(
    request: Request[Any, Any, Any],
    services: ServicesDep,
    after: int | None = Parameter(default=None, ge=0, le=INT64_MAX),
    type_filter: str | None = Parameter(query="type", default=None, max_length=1024),
    limit: int = Parameter(default=100, ge=1, le=MAX_EVENTS),
) -> EventList:
    """The newest events you may see (or the first ``limit`` after ``after``)."""
    kinds = parse_event_types(type_filter) if type_filter else []
    return await services.events.recent(principal(request), after=after, kinds=kinds, limit=limit)


@get(
    "/api/v1/events/follow",
    opt={"role": "member"},
    tags=["events"],
    media_type="text/event-stream",
    response_description="Server-sent events: id = event id, event = kind, data = the Event as JSON",
)
async def follow_events(
    request: Request[Any, Any, Any],
    services: ServicesDep,
    after: int | None = Parameter(default=None, ge=0, le=INT64_MAX),
    type_filter: str | None = Parameter(query="type", default=None, max_length=1024),
    last_event_id: str | None = Parameter(header="Last-Event-ID", default=None, max_length=32),
    wait: float | None = Parameter(default=None, ge=0, le=MAX_WAIT_S),
) -> ServerSentEvent:
    """Every event you may see after ``after`` (or ``Last-Event-ID``; from now when
    neither), live, in order; with ``wait`` the stream ends once nothing new came for
    that many seconds (0: the events there are now)."""
    kinds = parse_event_types(type_filter) if type_filter else []
    start = _after(after, last_event_id)
    events = services.events.follow(principal(request), after=start, kinds=kinds, idle_s=wait)

    async def gen() -> AsyncIterator[dict[str, Any]]:
        yield KEEPALIVE  # the stream is open: a client knows it is following from here
        async for ev in events:
            if ev is None:
                yield KEEPALIVE
            else:
                yield {"id": ev.id, "event": ev.kind, "data": encode_json(ev).decode()}

    return ServerSentEvent(gen())


@get("/api/v1/notify", opt={"role": "member"}, tags=["events"])
async def list_notify(
    request: Request[Any, Any, Any], services: ServicesDep, all: bool = False
) -> list[NotifySubscription]:
    """Your notifications (admins: and the lab-wide ones; ``all``: everyone's)."""
    return await services.notify.listing(principal(request), all=all)


@post("/api/v1/notify", opt={"role": "member", "audit": "notify.add"}, tags=["events"])
async def add_notify(
    request: Request[Any, Any, Any], services: ServicesDep, data: NotifyCreate
) -> NotifyCreated:
    """Send events to a webhook (signed; its secret is in this answer only) or an email."""
    target = shown(data.url) if data.url else (data.email or "")
    audit_target(request, "notify:new", to=target[:512], on=data.on[:16], lab_wide=data.lab_wide)
    created = await services.notify.create(principal(request), data)
    audit_target(request, f"notify:{created.subscription.id}")
    return created


@delete(
    "/api/v1/notify/{sub_id:int}",
    opt={"role": "member", "audit": "notify.remove"},
    status_code=200,
    tags=["events"],
)
async def remove_notify(
    request: Request[Any, Any, Any], services: ServicesDep, sub_id: DbId
) -> NotifySubscription:
    audit_target(request, f"notify:{sub_id}")
    return await services.notify.remove(principal(request), sub_id)


@get("/api/v1/notify/log", opt={"role": "member"}, tags=["events"])
async def notify_log(
    request: Request[Any, Any, Any],
    services: ServicesDep,
    subscription: int | None = Parameter(default=None, ge=1, le=INT64_MAX),
    limit: int = Parameter(default=100, ge=1, le=1000),
) -> list[NotifyDelivery]:
    """Deliveries of your notifications, newest last (admins: every one)."""
    return await services.notify.deliveries(
        principal(request), subscription=subscription, limit=limit
    )


@post(
    "/api/v1/jobs/{job_id:int}/idle-exempt",
    opt={"role": "admin", "audit": "job.idle_exempt"},
    status_code=200,
    tags=["jobs"],
)
async def set_idle_exempt(
    request: Request[Any, Any, Any], services: ServicesDep, job_id: DbId, data: JobIdleExempt
) -> JobIdleState:
    """Exempt a job from the idle-GPU policy, or take its exemption back (admins)."""
    audit_target(request, f"job:{job_id}", exempt=data.exempt)
    return await services.idle.set_exempt(principal(request).name, job_id, data.exempt)


ROUTES = [
    list_events,
    follow_events,
    list_notify,
    add_notify,
    remove_notify,
    notify_log,
    set_idle_exempt,
]
