"""Notification subscriptions and their delivery workers (webhooks and email).

A subscription walks the event stream from its own ``cursor`` (the last event id it dealt
with, in the database): one worker task per subscription reads the next events it may see
(:func:`~mlsm.master.services.events.stream.visible_to`: a user's own jobs and public
events; everything for a lab-wide one) of the kinds it asked for, and delivers them one
after another, in id order. A failed delivery is retried after ``notify_retry_base`` x
2^(n-1) seconds (capped at :data:`RETRY_CAP_S`) up to ``notify_max_attempts``, then given
up; either way its outcome and the new cursor commit together, so a restart of the master
resumes where it stopped (a delivery cut short by the restart is sent again: receivers
dedupe on the event id).

Nothing here runs on a request path: the job service only writes event rows, the
workers wake when the :class:`~mlsm.master.services.events.record.EventHub` says events
were committed, and at most ``notify_concurrency`` deliveries are in flight at once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import Callable

from sqlalchemy import select, update

from mlsm.config import Settings
from mlsm.errors import Conflict, NotFound, PermissionDenied, ValidationError
from mlsm.master.db import Database
from mlsm.master.db.models import NotifyDeliveryRow, NotifySubscriptionRow, User
from mlsm.master.security import Principal
from mlsm.master.services.events import mail, webhook
from mlsm.master.services.events.secrets import SecretBox
from mlsm.master.services.events.stream import EventService, event_of
from mlsm.wire import api
from mlsm.wire.events import (
    Event,
    NotifyCreate,
    NotifyCreated,
    NotifyDelivery,
    NotifySubscription,
    WebhookPayload,
    encode_json,
    parse_event_types,
)

log = logging.getLogger("mlsm.master.notify")

RETRY_CAP_S = 600.0  # the longest wait between two attempts
IDLE_RECHECK_S = 30.0  # a worker with nothing to send looks again at least this often
BATCH = 100  # events a worker reads at a time
MAX_SUBSCRIPTIONS_PER_USER = 20
SECRET_BYTES = 32
LOG_LIMIT_MAX = 1000


def retry_delay(base: float, attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    return float(min(RETRY_CAP_S, base * 2 ** (attempt - 1)))


def text_of(ev: Event) -> str:
    """The one line a person reads (Slack/Mattermost ``text``, the email's subject)."""
    return f"[mlsm] {ev.message}"


def _view(r: NotifySubscriptionRow) -> NotifySubscription:
    return NotifySubscription(
        id=r.id,
        channel="email" if r.channel == "email" else "webhook",
        target=webhook.shown(r.target) if r.channel == "webhook" else r.target,
        on=[str(k) for k in r.kinds or ()],
        owner=r.owner,
        lab_wide=r.lab_wide,
        note=r.note,
        created_at=r.created_at,
        cursor=r.cursor,
    )


def _delivery(r: NotifyDeliveryRow) -> NotifyDelivery:
    return NotifyDelivery(
        id=r.id,
        subscription_id=r.subscription_id,
        event_id=r.event_id,
        kind=r.kind,
        state="delivered"
        if r.state == "delivered"
        else "failed"
        if r.state == "failed"
        else "retrying",
        attempts=r.attempts,
        ts=r.ts,
        status=r.status,
        error=r.error,
    )


class NotifyService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        events: EventService,
        lab_settings: Callable[[], api.LabSettings],
    ) -> None:
        self.db = db
        self.settings = settings
        self.events = events
        self.lab_settings = lab_settings
        self.box = SecretBox(settings.data_path)
        self._slots = asyncio.Semaphore(settings.notify_concurrency)
        self._workers: dict[int, asyncio.Task[None]] = {}

    # ---------------------------------------------------------------- subscriptions
    async def create(self, p: Principal, body: NotifyCreate) -> NotifyCreated:
        if (body.url is None) == (body.email is None):
            raise ValidationError("give either a webhook URL or an email address", path="url")
        if body.lab_wide and not p.is_admin:
            raise PermissionDenied("only admins add lab-wide notifications")
        kinds = parse_event_types(",".join(body.on))
        if not kinds:
            raise ValidationError("name the event types to send (--on job.failed,...)", path="on")
        secret = ""
        if body.url is not None:
            await webhook.check_url(body.url, self.lab_settings().webhook_allow_cidrs)
            channel, target = "webhook", body.url
            secret = "whsec_" + secrets.token_urlsafe(SECRET_BYTES)
        else:
            assert body.email is not None
            if not mail.enabled(self.settings):
                raise Conflict("email is not configured on this master: an admin sets smtp_host")
            channel, target = "email", body.email
        async with self.db.transaction() as s:
            mine = (
                await s.execute(
                    select(NotifySubscriptionRow.id).where(
                        NotifySubscriptionRow.owner == p.name,
                        NotifySubscriptionRow.removed.is_(False),
                    )
                )
            ).all()
            if len(mine) >= MAX_SUBSCRIPTIONS_PER_USER:
                raise Conflict(
                    f"{p.name} has {len(mine)} notifications, the most one user may have; "
                    "remove one first (mlsm notify remove ID)"
                )
            row = NotifySubscriptionRow(
                owner=p.name,
                lab_wide=body.lab_wide,
                channel=channel,
                target=target,
                kinds=kinds,
                secret=self.box.seal(secret) if secret else "",
                note=body.note,
                created_at=time.time(),
                cursor=await self.events.last_id(),
            )
            s.add(row)
            await s.flush()
        self._start(row.id)
        return NotifyCreated(subscription=_view(row), secret=secret)

    async def _owned(self, p: Principal, sub_id: int) -> NotifySubscriptionRow:
        async with self.db.session() as s:
            r = await s.get(NotifySubscriptionRow, sub_id)
        if r is None or r.removed:
            raise NotFound(f"no notification {sub_id}")
        if not p.is_admin and (r.owner != p.name or r.lab_wide):
            raise PermissionDenied(f"notification {sub_id} is not yours")
        return r

    async def listing(self, p: Principal, *, all: bool) -> list[NotifySubscription]:
        q = select(NotifySubscriptionRow).where(NotifySubscriptionRow.removed.is_(False))
        if not (all and p.is_admin):
            q = q.where(
                (NotifySubscriptionRow.owner == p.name) | NotifySubscriptionRow.lab_wide.is_(True)
                if p.is_admin
                else (NotifySubscriptionRow.owner == p.name)
                & NotifySubscriptionRow.lab_wide.is_(False)
            )
        async with self.db.session() as s:
            rows = (await s.execute(q.order_by(NotifySubscriptionRow.id))).scalars().all()
        return [_view(r) for r in rows]

    async def remove(self, p: Principal, sub_id: int) -> NotifySubscription:
        r = await self._owned(p, sub_id)
        async with self.db.transaction() as s:
            await s.execute(
                update(NotifySubscriptionRow)
                .where(NotifySubscriptionRow.id == sub_id)
                .values(removed=True)
            )
        task = self._workers.pop(sub_id, None)
        if task is not None:
            task.cancel()
        return _view(r)

    async def deliveries(
        self, p: Principal, *, subscription: int | None, limit: int
    ) -> list[NotifyDelivery]:
        """The newest deliveries of the caller's subscriptions (every one for admins)."""
        if subscription is not None:
            await self._owned(p, subscription)
        q = select(NotifyDeliveryRow)
        if subscription is not None:
            q = q.where(NotifyDeliveryRow.subscription_id == subscription)
        elif not p.is_admin:
            own = select(NotifySubscriptionRow.id).where(
                NotifySubscriptionRow.owner == p.name, NotifySubscriptionRow.lab_wide.is_(False)
            )
            q = q.where(NotifyDeliveryRow.subscription_id.in_(own))
        async with self.db.session() as s:
            rows = list(
                (await s.execute(q.order_by(NotifyDeliveryRow.id.desc()).limit(limit))).scalars()
            )
        rows.reverse()
        return [_delivery(r) for r in rows]

    # ---------------------------------------------------------------- workers
    async def start(self) -> None:
        async with self.db.session() as s:
            ids = (
                await s.execute(
                    select(NotifySubscriptionRow.id).where(NotifySubscriptionRow.removed.is_(False))
                )
            ).scalars()
            for sub_id in ids:
                self._start(sub_id)

    def stop(self) -> None:
        for task in self._workers.values():
            task.cancel()
        self._workers.clear()

    def _start(self, sub_id: int) -> None:
        if sub_id not in self._workers:
            task = asyncio.get_running_loop().create_task(self._work(sub_id))
            self._workers[sub_id] = task
            task.add_done_callback(functools.partial(self._ended, sub_id))

    def _ended(self, sub_id: int, task: asyncio.Task[None]) -> None:
        if self._workers.get(sub_id) is task:
            del self._workers[sub_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("notification %s stopped", sub_id, exc_info=task.exception())

    async def _work(self, sub_id: int) -> None:
        """Deliver this subscription's events in order, for as long as it exists."""
        while True:
            mark = self.events.hub.mark()
            try:
                more = await self._step(sub_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("notification %s: a delivery step failed; trying again", sub_id)
                more = False
            if more is None:
                return
            if not more:
                await self.events.hub.wait(mark, IDLE_RECHECK_S)

    async def _step(self, sub_id: int) -> bool | None:
        """Deliver the next batch; True when it sent something (there may be more), None
        when the subscription is gone."""
        async with self.db.session() as s:
            sub = await s.get(NotifySubscriptionRow, sub_id)
            if sub is None or sub.removed:
                return None
            owner = (
                await s.execute(select(User.disabled).where(User.username == sub.owner))
            ).scalar_one_or_none()
        if owner is None or owner:  # the owner is gone or disabled: nothing goes out
            return False
        rows = await self.events.page(
            user=sub.owner,
            is_admin=sub.lab_wide,
            after=sub.cursor,
            kinds=[str(k) for k in sub.kinds or ()],
            limit=BATCH,
        )
        for r in rows:
            if not await self._deliver(sub, event_of(r)):
                return None
        return bool(rows)  # read again before waiting: more may have come meanwhile

    async def _deliver(self, sub: NotifySubscriptionRow, ev: Event) -> bool:
        """Send ``ev`` until it is taken or given up; False when the subscription went."""
        delivery = NotifyDeliveryRow(
            subscription_id=sub.id, event_id=ev.id, kind=ev.kind, state="retrying", ts=time.time()
        )
        attempt = 0
        while True:
            attempt += 1
            async with self._slots:
                status, error = await self._send(sub, ev)
            delivery.attempts, delivery.status, delivery.error = attempt, status, error
            delivery.ts = time.time()
            final = not error or attempt >= self.settings.notify_max_attempts
            if final:
                delivery.state = "delivered" if not error else "failed"
            async with self.db.transaction() as s:
                current = await s.get(NotifySubscriptionRow, sub.id)
                if current is None or current.removed:
                    return False
                delivery = await s.merge(delivery)
                if final:
                    current.cursor = ev.id
                    sub.cursor = ev.id
                await s.flush()
            if final:
                if error:
                    log.warning(
                        "notification %s: gave up on event %s after %s attempts: %s",
                        sub.id,
                        ev.id,
                        attempt,
                        error,
                    )
                return True
            await asyncio.sleep(retry_delay(self.settings.notify_retry_base, attempt))

    async def _send(self, sub: NotifySubscriptionRow, ev: Event) -> tuple[int | None, str]:
        text = text_of(ev)
        if sub.channel == "email":
            body = "\n".join(
                [
                    ev.message,
                    "",
                    f"event:   {ev.kind} (id {ev.id})",
                    f"time:    {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(ev.ts))}",
                    *([f"job:     {ev.job_id} (owner {ev.user})"] if ev.job_id else []),
                    *([f"node:    {ev.node}"] if ev.node else []),
                ]
            )
            error = await mail.send(self.settings, sub.target, text, body + "\n")
            return None, error
        secret = self.box.open(sub.secret)
        if not secret:
            return (
                None,
                "the signing secret cannot be read (notify.key changed): add the webhook again",
            )
        payload = encode_json(WebhookPayload(text=text, event=ev))
        headers = {"X-Mlsm-Event": ev.kind, "X-Mlsm-Event-Id": str(ev.id)}
        return await webhook.post(
            sub.target, payload, headers, secret, self.lab_settings().webhook_allow_cidrs
        )
