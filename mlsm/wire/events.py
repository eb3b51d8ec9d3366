"""The lab's event stream and its notifications (``/api/v1/events``, ``/api/v1/notify``).

An :class:`Event` is one typed thing that happened (a job ended, a node went stale, a
GPU sat idle), recorded by the master in the same transaction as the change that caused
it, with an id that only grows: a follower that stopped at id N asks for ``after=N`` (or
sends ``Last-Event-ID: N``) and gets every later event once, in order, also across a
restart of the master.

Followed over server-sent events, one SSE event per :class:`Event`::

    id: <event id>    event: <kind, e.g. job.failed>    data: <the Event as JSON>

Kinds a client does not know are still valid events (new kinds may be added); a kind is
``<subject>.<what>``, and a filter may name a kind or a subject (``job`` or ``job.*``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

import msgspec
from msgspec import Meta, Struct

from mlsm.errors import ValidationError
from mlsm.wire.ints import DbId

EventKind = Literal[
    "job.submitted",
    "job.started",
    "job.succeeded",
    "job.failed",
    "job.cancelled",
    "job.interrupted",
    "job.requeued",
    "job.idle_warning",
    "node.online",
    "node.stale",
    "node.offline",
    "node.drained",
    "node.resumed",
    "node.disk_full",
    "node.unreserved_use",
    "dataset.transfer_done",
    "dataset.transfer_failed",
]
EVENT_KINDS: tuple[EventKind, ...] = get_args(EventKind)
SUBJECTS: frozenset[str] = frozenset(k.split(".", 1)[0] for k in EVENT_KINDS)

Channel = Literal["webhook", "email"]
DeliveryState = Literal["delivered", "retrying", "failed"]

EventFilter = Annotated[str, Meta(max_length=1024)]
WebhookUrl = Annotated[str, Meta(min_length=8, max_length=2048)]
EmailAddress = Annotated[
    str, Meta(min_length=3, max_length=254, pattern=r"^[^@\s<>,;:\"]+@[^@\s<>,;:\"]+$")
]
MAX_KINDS = 64


def parse_event_types(text: str) -> list[str]:
    """``"job.failed,node"`` -> the kinds it names (a subject, or ``subject.*``, names every
    kind of that subject). A word that names nothing is a :class:`ValidationError` listing
    the kinds, so a typo is never a silently empty stream."""
    out: list[str] = []
    for word in (w.strip().lower() for w in text.split(",")):
        if not word:
            continue
        subject = word.removesuffix(".*")
        if subject in SUBJECTS and "." not in subject:
            names = [k for k in EVENT_KINDS if k.startswith(subject + ".")]
        elif word in EVENT_KINDS:
            names = [word]
        else:
            raise ValidationError(
                f"event type {word!r} is unknown; use one of {', '.join(EVENT_KINDS)} "
                f"(or a subject: {', '.join(sorted(SUBJECTS))})",
                path="type",
            )
        out.extend(n for n in names if n not in out)
    return out


class Event(Struct, kw_only=True, frozen=True):
    """One thing that happened in the lab."""

    id: int
    ts: float
    kind: str  # one of EVENT_KINDS (a newer master may send kinds this one does not know)
    message: str  # one line for people: "job 12 (train) failed: exit code 1"
    user: str = ""  # the owner of the job it is about ("" for node events)
    job_id: int | None = None
    node: str = ""
    data: dict[str, Any] = {}  # kind-specific details (state, reason, exit code, ...)


class EventList(Struct, kw_only=True):
    events: list[Event]
    last_id: int  # the newest event id in the lab (a follower may start after it)


# ---------------------------------------------------------------- notifications
class NotifyCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    """Subscribe to events: a webhook (``url``) or an email address (``email``)."""

    on: Annotated[
        list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(max_length=MAX_KINDS)
    ]
    url: WebhookUrl | None = None
    email: EmailAddress | None = None
    lab_wide: bool = False  # admins: every event of the lab, not only their own
    note: Annotated[str, Meta(max_length=256)] = ""


class NotifySubscription(Struct, kw_only=True):
    id: int
    channel: Channel
    target: str  # the webhook URL (its secret parts redacted) or the email address
    on: list[str]
    owner: str
    lab_wide: bool = False
    note: str = ""
    created_at: float = 0.0
    cursor: int = 0  # the last event id this subscription has dealt with


class NotifyCreated(Struct, kw_only=True):
    subscription: NotifySubscription
    #: The webhook's signing secret: shown this once, never again ("" for email).
    secret: str = ""


class NotifyDelivery(Struct, kw_only=True):
    id: int
    subscription_id: int
    event_id: int
    kind: str
    state: DeliveryState
    attempts: int
    ts: float
    status: int | None = None  # the HTTP status a webhook answered
    error: str = ""


class JobIdleExempt(Struct, kw_only=True, forbid_unknown_fields=True):
    """Exempt a job from the idle-GPU policy (admins), or take the exemption back."""

    exempt: bool = True


class JobIdleState(Struct, kw_only=True):
    job_id: DbId
    exempt: bool
    warned_at: float | None = None


#: The JSON body a webhook receives (also what an email's text is made from).
class WebhookPayload(Struct, kw_only=True):
    text: str  # Slack/Mattermost incoming webhooks show this field as the message
    event: Event  # receivers dedupe on event.id (a delivery may be repeated after a restart)


encode_json = msgspec.json.Encoder().encode
decode_event = msgspec.json.Decoder(Event).decode
