"""The event stream's pieces: commit-ordered ids (a real PostgreSQL), events that roll back
with their change, the signature, type filters, node transitions and full disks, the
webhook URL guard and the retry schedule."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from pathlib import Path

import pytest
from sqlalchemy import select, text

from mlsm.errors import ValidationError
from mlsm.master.db import Database
from mlsm.master.db.models import EventRow
from mlsm.master.services.events import webhook
from mlsm.master.services.events.notify import RETRY_CAP_S, retry_delay
from mlsm.master.services.events.record import record
from mlsm.master.services.events.stream import EventService
from mlsm.master.services.events.watch import NodeWatch, full_disk, transition
from mlsm.master.services.livenode import LiveNode
from mlsm.wire.agent import DiskUsage, HostSample
from mlsm.wire.events import EVENT_KINDS, parse_event_types
from tests.support.wait import wait_until_async

WAITING_FOR_LOCK = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")


@pytest.mark.postgres
async def test_event_ids_are_in_commit_order_on_postgresql(fresh_postgres_url: str) -> None:
    """Two transactions write events at once: the one that drew the smaller id commits
    first, because the second waits for the first before it may draw one. (Two engines,
    as two processes would have: one master's writers already take turns.)"""
    db = Database(fresh_postgres_url)
    await db.migrate()
    other = Database(fresh_postgres_url)
    committed: list[int] = []
    first_flushed = asyncio.Event()
    try:

        async def first() -> None:
            async with db.transaction() as s:
                record(s.sync_session, "node.online", "first", public=True)
                await s.flush()
                first_flushed.set()
                async with db.session() as probe:  # the second now waits for this one
                    await wait_until_async(
                        lambda: _waiting(probe), 20.0, "the second writer to wait for the lock"
                    )
            committed.append(1)

        async def second() -> None:
            await first_flushed.wait()
            async with other.transaction() as s:
                record(s.sync_session, "node.online", "second", public=True)
            committed.append(2)

        await asyncio.gather(first(), second())
        async with db.session() as s:
            rows = (await s.execute(select(EventRow).order_by(EventRow.id))).scalars().all()
        assert [r.message for r in rows] == ["first", "second"]
        assert committed == [1, 2]
    finally:
        await other.close()
        await db.close()


async def _waiting(s: object) -> bool:
    from sqlalchemy.ext.asyncio import AsyncSession

    assert isinstance(s, AsyncSession)
    return bool((await s.execute(WAITING_FOR_LOCK)).scalar_one())


async def test_an_event_rolls_back_with_its_change(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    await db.migrate()
    events = EventService(db, retention_days=1)
    try:
        with pytest.raises(RuntimeError):
            async with db.transaction() as s:
                record(s.sync_session, "node.stale", "never happened", public=True)
                await s.flush()
                raise RuntimeError("the change failed")
        async with db.transaction() as s:
            record(s.sync_session, "node.offline", "happened", public=True)
        rows = await events.page(user="x", is_admin=True, after=0)
        assert [r.message for r in rows] == ["happened"]
        assert await events.last_id() == rows[0].id
    finally:
        await db.close()


async def test_members_read_their_own_and_public_events(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    await db.migrate()
    events = EventService(db, retention_days=1)
    try:
        async with db.transaction() as s:
            record(s.sync_session, "job.failed", "alice's", user="alice", job_id=1)
            record(s.sync_session, "job.failed", "bob's", user="bob", job_id=2)
            record(s.sync_session, "node.offline", "a node", public=True)
            record(s.sync_session, "dataset.transfer_done", "an admin's", user="root")
        seen = await events.page(user="alice", is_admin=False, after=0)
        assert [r.message for r in seen] == ["alice's", "a node"]
        every = await events.page(user="root", is_admin=True, after=0)
        assert len(every) == 4
        only = await events.page(user="root", is_admin=True, after=0, kinds=["node.offline"])
        assert [r.message for r in only] == ["a node"]
    finally:
        await db.close()


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"text":"x"}'
    want = hmac.new(b"whsec_k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert webhook.sign("whsec_k", 1_700_000_000, body) == "sha256=" + want
    assert webhook.sign("whsec_k", 1_700_000_001, body) != "sha256=" + want


def test_event_types_name_kinds_or_subjects() -> None:
    assert parse_event_types("job.failed, job.failed") == ["job.failed"]
    assert parse_event_types("node") == [k for k in EVENT_KINDS if k.startswith("node.")]
    assert parse_event_types("dataset.*") == ["dataset.transfer_done", "dataset.transfer_failed"]
    for bad in ("job.exploded", "jobs", "node.*.x"):
        with pytest.raises(ValidationError):
            parse_event_types(bad)


@pytest.mark.parametrize(
    ("before", "after", "kind"),
    [
        ("offline", "online", "node.online"),
        ("stale", "online", "node.online"),
        ("online", "stale", "node.stale"),
        ("stale", "offline", "node.offline"),
        ("online", "draining", "node.drained"),
        ("draining", "online", "node.resumed"),
        ("online", "online", None),
        ("offline", "offline", None),
    ],
)
def test_node_transitions(before: str, after: str, kind: str | None) -> None:
    assert transition(before, after) == kind


def test_a_disk_is_full_above_the_threshold_on_watched_disks_only() -> None:
    n = LiveNode(id=1, name="n", secret_hash="h", labels={}, registered_at=0.0)
    assert full_disk(n, 90.0) is None  # no report yet
    n.host = HostSample(
        disks=[
            DiskUsage(path="/", total=100, used=99, role="other"),
            DiskUsage(path="/data", total=100, used=91, role="data"),
        ]
    )
    assert full_disk(n, 90.0) == ("/data", 91.0)
    assert full_disk(n, 95.0) is None
    assert full_disk(n, 0.0) is None  # 0: no threshold


async def test_webhook_urls_pass_the_address_guard() -> None:
    for url in (
        "http://127.0.0.1/x",
        "http://10.0.0.5/x",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x",
        "http://[::ffff:10.0.0.1]/x",
        "http://100.64.0.1/x",
    ):
        with pytest.raises(ValidationError, match="internal address"):
            await webhook.check_url(url, [])
    await webhook.check_url("http://10.0.0.5/x", ["10.0.0.0/8"])
    for url in ("ftp://example.com/x", "file:///etc/passwd", "http:///x", "http://h:0/x"):
        with pytest.raises(ValidationError):
            await webhook.check_url(url, [])

    async def rebinding(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]  # a public-looking name that resolves inward

    with pytest.raises(ValidationError, match="internal address"):
        await webhook.check_url("https://hooks.example.com/x", [], rebinding)


async def test_a_delivery_goes_to_the_checked_address_only() -> None:
    async def inward(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    status, error = await webhook.post("http://hooks.example.com/x", b"{}", {}, "s", [], inward)
    assert status is None and "address guard" in error


def test_retries_back_off_exponentially_up_to_a_cap() -> None:
    assert [retry_delay(2.0, n) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]
    assert retry_delay(2.0, 30) == RETRY_CAP_S


async def test_the_node_watch_records_changes_and_a_disk_going_full_once(tmp_path: Path) -> None:
    from mlsm.config import Settings
    from mlsm.master.services.nodes import NodeRegistry
    from mlsm.master.services.telemetry import History
    from mlsm.wire import api

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    await db.migrate()
    events = EventService(db, retention_days=1)
    settings = Settings(stale_after=5.0, node_lease=10.0)
    nodes = NodeRegistry(db, settings, History(db, 1.0, 1.0))
    lab = api.LabSettings(node_disk_high_pct=90.0)
    watch = NodeWatch(db, nodes, lambda: lab)
    try:
        now = time.time()
        n = LiveNode(id=7, name="n7", secret_hash="h", labels={}, registered_at=now)
        nodes.nodes[7] = n  # joined after the master started: starts as offline
        n.last_seen = now
        n.host = HostSample(disks=[DiskUsage(path="/data", total=100, used=50, role="data")])
        await watch.check()
        n.host = HostSample(disks=[DiskUsage(path="/data", total=100, used=95, role="data")])
        await watch.check()
        await watch.check()  # still full: said once
        n.last_seen = now - 6.0
        await watch.check()
        n.last_seen = now - 11.0
        await watch.check()
        rows = await events.page(user="anyone", is_admin=False, after=0)
        assert [r.kind for r in rows] == [
            "node.online",
            "node.disk_full",
            "node.stale",
            "node.offline",
        ]
        assert all(r.public and r.node == "n7" for r in rows)
        assert rows[1].data["path"] == "/data" and rows[1].data["used_pct"] == 95.0
    finally:
        await db.close()


async def test_a_transfer_end_is_an_event_of_its_creator(tmp_path: Path) -> None:
    from mlsm.master.db.models import Transfer as TransferRow
    from mlsm.master.services.datasets.transfers import _record_end

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    await db.migrate()
    events = EventService(db, retention_days=1)
    try:
        async with db.transaction() as s:
            for kind, state in (("copy", "succeeded"), ("import", "failed"), ("delete", "failed")):
                row = TransferRow(
                    kind=kind, dataset="coco", node="n2", src_node="n1", state=state,
                    created_by="root", created_at=time.time(), message="m",
                )  # fmt: skip
                s.add(row)
                await s.flush()
                _record_end(s.sync_session, row)
        rows = await events.page(user="root", is_admin=True, after=0)
        assert [r.kind for r in rows] == ["dataset.transfer_done", "dataset.transfer_failed"]
        assert all(r.user == "root" and not r.public for r in rows)
        assert await events.page(user="alice", is_admin=False, after=0) == []
    finally:
        await db.close()
