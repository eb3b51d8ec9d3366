"""The event stream and notifications against a real master, real agents and the real CLI:
events in order with ids, who sees which, ``events -f`` across a master restart, signed
webhooks (receiver down, then up), a member's subscription that never carries another
user's job, email through a real SMTP server on loopback, and the address guard.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlsm.wire.events import NotifyCreate
from tests.integration.lab import Lab
from tests.support.receivers import SmtpSink, WebhookReceiver
from tests.support.wait import wait_until

RETRY_BASE_S = "0.2"  # deliveries retry after 0.2, 0.4, 0.8 ... s here
DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


def _master_env(smtp: SmtpSink) -> dict[str, str]:
    return {
        "MLSM_NOTIFY_RETRY_BASE": RETRY_BASE_S,
        "MLSM_NOTIFY_MAX_ATTEMPTS": "30",
        "MLSM_SMTP_HOST": "127.0.0.1",
        "MLSM_SMTP_PORT": str(smtp.port),
        "MLSM_SMTP_STARTTLS": "false",
        "MLSM_SMTP_FROM": "mlsm@lab.example",
    }


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, smtp: SmtpSink) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("events")) as lab:
        lab.start_master(**_master_env(smtp))
        lab.start_agent("ev1", gpus="2xA100-80GB")
        yield lab


@pytest.fixture(scope="module")
def alice(lab: Lab) -> str:
    return lab.add_user("alice")


@pytest.fixture(scope="module")
def bob(lab: Lab) -> str:
    return lab.add_user("bob")


def _allow_loopback(lab: Lab) -> None:
    res = lab.cli("settings", "set", "--webhook-allow-cidr", "127.0.0.0/8")
    assert res.returncode == 0, res.stderr


def _events(lab: Lab, token: str | None = None, *args: str) -> list[dict[str, Any]]:
    res = lab.cli("events", "--json", "-n", "10000", *args, token=token)
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]


def _job_kinds(events: list[dict[str, Any]], job_id: int) -> list[str]:
    return [e["kind"] for e in events if e.get("job_id") == job_id]


def test_a_job_leaves_its_events_in_order_with_growing_ids(lab: Lab) -> None:
    job = lab.submit("--", "true")
    lab.wait_job(job, "succeeded")

    def ended() -> list[dict[str, Any]] | None:
        evs = _events(lab)
        return evs if "job.succeeded" in _job_kinds(evs, job) else None

    events = wait_until(ended, DEADLINE_S, "the job's end event")
    assert _job_kinds(events, job) == ["job.submitted", "job.started", "job.succeeded"]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    ended = next(e for e in events if e.get("job_id") == job and e["kind"] == "job.succeeded")
    assert ended["user"] == "root" and ended["node"] == "ev1"


def test_events_type_filter_names_subjects_and_refuses_unknown_types(lab: Lab) -> None:
    # The node watch records a node's arrival at its next pass (once a second).
    kinds = wait_until(
        lambda: {e["kind"] for e in _events(lab, None, "--type", "node")},
        DEADLINE_S,
        "the node's events",
    )
    assert all(k.startswith("node.") for k in kinds)
    res = lab.cli("events", "--type", "job.exploded")
    assert res.returncode == 2
    assert "job.exploded" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.stderr


def test_members_see_their_own_jobs_and_nodes_only(lab: Lab, alice: str, bob: str) -> None:
    a = lab.submit("--", "true", token=alice)
    b = lab.submit("--", "true", token=bob)
    lab.wait_job(a, "succeeded")
    lab.wait_job(b, "succeeded")
    wait_until(lambda: "job.succeeded" in _job_kinds(_events(lab), b), DEADLINE_S, "b's end")
    seen_by_alice = _events(lab, alice)
    assert _job_kinds(seen_by_alice, a)
    assert not _job_kinds(seen_by_alice, b)
    assert all(e["user"] in ("alice", "") for e in seen_by_alice)
    assert any(e["kind"] == "node.online" for e in seen_by_alice)  # nodes are everyone's
    # The SSE stream says the same: from the first event on, bob's job is not in it.
    with lab.client(alice) as c:
        streamed = list(c.events.follow(after=0, wait=0))
    assert a in {e.job_id for e in streamed}
    assert b not in {e.job_id for e in streamed}
    assert {e.user for e in streamed} <= {"alice", ""}


def _reader(proc: subprocess.Popen[bytes], into: list[dict[str, Any]]) -> threading.Thread:
    def run() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                into.append(json.loads(line))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_events_follow_resumes_after_a_master_restart_without_gap_or_duplicate(
    lab: Lab, smtp: SmtpSink
) -> None:
    seen: list[dict[str, Any]] = []
    proc = lab.cli_popen("events", "-f", "--json", "-n", "1")
    _reader(proc, seen)
    first = lab.submit("--", "true")
    lab.wait_job(first, "succeeded")
    wait_until(lambda: "job.succeeded" in _job_kinds(seen, first), DEADLINE_S, "first job's end")
    lab.stop_master()
    lab.start_master(**_master_env(smtp))
    lab.wait_node_state("ev1", "online")
    second = lab.submit("--", "true")
    lab.wait_job(second, "succeeded")
    wait_until(lambda: "job.succeeded" in _job_kinds(seen, second), DEADLINE_S, "second job's end")
    proc.kill()
    proc.wait()
    ids = [e["id"] for e in seen]
    assert len(ids) == len(set(ids)), "an event was printed twice"
    assert ids == sorted(ids)
    # Every event the lab recorded from the first one printed on is there: no gap.
    everything = [e["id"] for e in _events(lab) if ids[0] <= e["id"] <= ids[-1]]
    assert ids == everything


def test_webhook_is_signed_ordered_and_retried_until_the_receiver_is_up(lab: Lab) -> None:
    _allow_loopback(lab)
    hook = WebhookReceiver()  # not listening yet: every delivery fails at first
    created = lab.admin.notify.add(
        NotifyCreate(on=["job.submitted", "job.started", "job.succeeded"], url=hook.url)
    )
    assert created.secret.startswith("whsec_")
    sub = created.subscription.id
    jobs = [lab.submit("--", "true") for _ in range(3)]
    for j in jobs:
        lab.wait_job(j, "succeeded")
    wait_until(
        lambda: any(d.state == "retrying" for d in lab.admin.notify.log(subscription=sub)),
        DEADLINE_S,
        "a failed delivery waiting for its retry",
    )
    with hook:
        want = [(j, k) for j in jobs for k in ("job.submitted", "job.started", "job.succeeded")]

        def all_arrived() -> list[dict[str, Any]] | None:
            evs = hook.events()
            return evs if sorted((e["job_id"], e["kind"]) for e in evs) == sorted(want) else None

        got = wait_until(all_arrived, DEADLINE_S, "every event at the receiver")
    ids = [e["id"] for e in got]
    assert ids == sorted(ids) and len(ids) == len(set(ids)), "delivered out of order or twice"
    assert all(r.signed_by(created.secret) for r in hook.received)
    assert not any(r.signed_by("whsec_wrong") for r in hook.received)
    body = hook.received[-1].json()
    assert body["text"].startswith("[mlsm] job ")  # what Slack and Mattermost show
    log = lab.admin.notify.log(subscription=sub)
    assert {d.state for d in log} == {"delivered"}
    assert max(d.attempts for d in log) > 1
    text = lab.cli("notify", "log", str(sub))
    assert text.returncode == 0 and "delivered" in text.stdout


def test_a_members_webhook_never_carries_another_users_job(lab: Lab, alice: str, bob: str) -> None:
    _allow_loopback(lab)
    with WebhookReceiver() as hook:
        res = lab.cli("notify", "add", "--webhook", hook.url, "--on", "job", "--json", token=alice)
        assert res.returncode == 0, res.stderr
        b = lab.submit("--", "true", token=bob)
        a = lab.submit("--", "true", token=alice)
        lab.wait_job(b, "succeeded")
        lab.wait_job(a, "succeeded")
        wait_until(
            lambda: "job.succeeded" in [e["kind"] for e in hook.events() if e["job_id"] == a],
            DEADLINE_S,
            "alice's job at her webhook",
        )
        # bob's job ended before alice's: had it been sent, it would be here by now.
        assert {e["user"] for e in hook.events()} == {"alice"}
        assert b not in {e["job_id"] for e in hook.events()}


def test_members_cannot_add_lab_wide_notifications(lab: Lab, alice: str) -> None:
    res = lab.cli(
        "notify", "add", "--webhook", "https://example.com/x", "--on", "job", "--lab-wide",
        token=alice,
    )  # fmt: skip
    assert res.returncode != 0 and "admins" in res.stderr


def test_webhook_to_an_internal_address_is_refused_unless_its_range_is_allowed(
    lab: Lab,
) -> None:
    res = lab.cli("settings", "set", "--no-webhook-cidrs")
    assert res.returncode == 0, res.stderr
    for url in ("http://127.0.0.1:9/x", "http://10.1.2.3/x", "http://[::ffff:127.0.0.1]/x"):
        res = lab.cli("notify", "add", "--webhook", url, "--on", "job.failed")
        assert res.returncode == 2, (url, res.stdout, res.stderr)
        assert "internal address" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = lab.cli("notify", "add", "--webhook", "ftp://example.com/x", "--on", "job.failed")
    assert res.returncode == 2 and "scheme" in res.stderr
    _allow_loopback(lab)
    res = lab.cli("notify", "add", "--webhook", "http://127.0.0.1:9/x", "--on", "job.failed")
    assert res.returncode == 0, res.stderr


def test_email_arrives_at_a_real_smtp_server(lab: Lab, smtp: SmtpSink, alice: str) -> None:
    res = lab.cli(
        "notify", "add", "--email", "alice@lab.example", "--on", "job.failed", token=alice
    )
    assert res.returncode == 0, res.stderr
    theirs = lab.submit("--", "false", token=lab.add_user("erin"))
    lab.wait_job(theirs, "failed")
    job = lab.submit("--", "false", token=alice)
    lab.wait_job(job, "failed")
    msg = wait_until(
        lambda: next((m for m in smtp.messages if f"job {job} " in str(m["Subject"])), None),
        DEADLINE_S,
        "the email about the failed job",
    )
    assert msg["To"] == "alice@lab.example"
    assert msg["From"] == "mlsm@lab.example"
    assert "failed" in str(msg["Subject"])
    body = msg.get_content()
    assert "job.failed" in body and f"job:     {job}" in body
    # erin's job failed first: alice's address never hears of it.
    assert not any(f"job {theirs} " in str(m["Subject"]) for m in smtp.messages)


def test_notify_list_and_remove(lab: Lab, bob: str) -> None:
    _allow_loopback(lab)
    res = lab.cli(
        "notify", "add", "--webhook", "http://127.0.0.1:9/b", "--on", "job", "--json", token=bob
    )
    assert res.returncode == 0, res.stderr
    sub = res.json()["subscription"]["id"]
    listed = lab.cli("notify", "list", "--json", token=bob).json()
    assert [s["id"] for s in listed] == [sub]
    assert "secret" not in json.dumps(listed)
    other = lab.cli("notify", "remove", str(sub), token=lab.add_user("carol"))
    assert other.returncode != 0 and "not yours" in other.stderr
    assert lab.cli("notify", "rm", str(sub), token=bob).returncode == 0
    assert lab.cli("notify", "list", "--json", token=bob).json() == []


def test_the_signing_secret_is_not_stored_in_the_clear(lab: Lab) -> None:
    _allow_loopback(lab)
    created = lab.admin.notify.add(NotifyCreate(on=["job.failed"], url="http://127.0.0.1:9/s"))
    assert lab.master_data is not None
    db = Path(lab.master_data) / "mlsm.db"
    if db.exists():  # SQLite: the file must not hold the secret
        assert created.secret.encode() not in db.read_bytes()
        wal = db.with_name(db.name + "-wal")
        assert not wal.exists() or created.secret.encode() not in wal.read_bytes()
