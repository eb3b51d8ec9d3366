"""The lab's events (read and followed) and notifications (webhooks, email), and the
idle-GPU exemption of a job.

A followed stream arrives as :class:`~mlsm.wire.events.Event` structs, decoded by the one
SSE parser (:mod:`mlsm.client.sse`); it says where it is with ``after`` (an event id), so
a caller that lost the connection asks again after the last id it got and misses nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence

import msgspec

from mlsm.client.call import Call
from mlsm.client.resource import AsyncResource, SyncResource, async_method, sync_method
from mlsm.client.sse import SseDecoder
from mlsm.errors import MlsmError
from mlsm.wire.events import (
    Event,
    EventList,
    JobIdleExempt,
    JobIdleState,
    NotifyCreate,
    NotifyCreated,
    NotifyDelivery,
    NotifySubscription,
    decode_event,
)

EVENTS = "/api/v1/events"
NOTIFY = "/api/v1/notify"


class EventStreamDecoder:
    """Bytes of ``GET /api/v1/events/follow`` in, :class:`Event` structs out (keep-alive
    comments are skipped)."""

    def __init__(self) -> None:
        self._sse = SseDecoder()

    def feed(self, chunk: bytes) -> list[Event]:
        out: list[Event] = []
        for m in self._sse.feed(chunk):
            try:
                out.append(decode_event(m.data))
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                raise MlsmError(f"the master sent an event that cannot be read: {e}") from None
        return out


def _types(types: Sequence[str]) -> str | None:
    return ",".join(types) or None


def _list(
    *, after: int | None = None, types: Sequence[str] = (), limit: int | None = None
) -> Call[EventList]:
    """The newest events you may see, or the first ``limit`` after id ``after``."""
    params = {"after": after, "type": _types(types), "limit": limit}
    return Call("GET", EVENTS, EventList, params=params)


def _follow(after: int | None, types: Sequence[str], wait: float | None) -> Call[bytes]:
    params = {"after": after, "type": _types(types), "wait": wait}
    return Call("GET", f"{EVENTS}/follow", bytes, params=params)


def _notify_list(*, all: bool = False) -> Call[list[NotifySubscription]]:
    return Call("GET", NOTIFY, list[NotifySubscription], params={"all": all or None})


def _notify_add(body: NotifyCreate) -> Call[NotifyCreated]:
    """Subscribe a webhook (the answer holds its signing secret, this once) or an email."""
    return Call("POST", NOTIFY, NotifyCreated, body=body)


def _notify_remove(sub_id: int) -> Call[NotifySubscription]:
    return Call("DELETE", f"{NOTIFY}/{int(sub_id)}", NotifySubscription)


def _notify_log(
    *, subscription: int | None = None, limit: int | None = None
) -> Call[list[NotifyDelivery]]:
    params = {"subscription": subscription, "limit": limit}
    return Call("GET", f"{NOTIFY}/log", list[NotifyDelivery], params=params)


def _idle_exempt(job_id: int, exempt: bool = True) -> Call[JobIdleState]:
    """Exempt a job from the idle-GPU policy, or take the exemption back (admins)."""
    return Call(
        "POST",
        f"/api/v1/jobs/{int(job_id)}/idle-exempt",
        JobIdleState,
        body=JobIdleExempt(exempt=exempt),
    )


class Events(SyncResource):
    list = sync_method(_list)
    idle_exempt = sync_method(_idle_exempt)

    def follow(
        self, *, after: int | None = None, types: Sequence[str] = (), wait: float | None = None
    ) -> Iterator[Event]:
        """Events after ``after`` (from now when None), live, until the connection ends
        (or, with ``wait``, until nothing new came for that many seconds)."""
        decoder = EventStreamDecoder()
        for chunk in self._http.stream(_follow(after, types, wait)):
            yield from decoder.feed(chunk)


class AsyncEvents(AsyncResource):
    list = async_method(_list)
    idle_exempt = async_method(_idle_exempt)

    async def follow(
        self, *, after: int | None = None, types: Sequence[str] = (), wait: float | None = None
    ) -> AsyncIterator[Event]:
        decoder = EventStreamDecoder()
        async for chunk in self._http.stream(_follow(after, types, wait)):
            for ev in decoder.feed(chunk):
                yield ev


class Notify(SyncResource):
    list = sync_method(_notify_list)
    add = sync_method(_notify_add)
    remove = sync_method(_notify_remove)
    log = sync_method(_notify_log)


class AsyncNotify(AsyncResource):
    list = async_method(_notify_list)
    add = async_method(_notify_add)
    remove = async_method(_notify_remove)
    log = async_method(_notify_log)
