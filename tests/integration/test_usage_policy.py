"""Fair and accountable GPUs, end to end: a real master, real agents on simulated GPUs, the
real CLI. Lab limits, backfill with a reservation, preemption, reservations and usage
reports (checked against figures computed by hand from a scripted history)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from mlsm.wire import api
from tests.integration.lab import Lab
from tests.support.wait import wait_until

JOB_WAIT_S = 60.0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("usage")) as lab:
        lab.start_master()
        for name in ("pa", "pb", "pc"):
            lab.start_agent(name, gpus="2xA100-80GB", labels=(f"rack={name}",))
        yield lab


@pytest.fixture(autouse=True)
def _idle_after(lab: Lab) -> Iterator[None]:
    """Each test leaves no job queued or running, no reservation and the default limits."""
    yield
    lab.end_all(JOB_WAIT_S)
    lab.admin.settings.update(
        api.LabSettingsUpdate(
            default_time_limit_s=0,
            max_time_limit_s=0,
            max_gpus_per_job=0,
            member_max_priority=1000,
            reservation_max_gpus=0,
        )
    )


def _member(lab: Lab, name: str) -> str:
    try:
        return lab.add_user(name)
    except Exception:
        from tests.integration.lab import PASSWORD

        return lab.login(name, PASSWORD)


def _submit(lab: Lab, *args: str, token: str | None = None) -> int:
    return lab.submit("--no-code", *args, token=token)


def _cli_error(res: Any) -> str:
    assert res.returncode != 0, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


# ---------------------------------------------------------------- lab limits
def test_a_member_cannot_exceed_the_lab_limits(lab: Lab) -> None:
    alice = _member(lab, "alice")
    res = lab.cli(
        "settings",
        "set",
        "--member-max-priority",
        "10",
        "--max-gpus-per-job",
        "1",
        "--max-time-limit",
        "2h",
        "--default-time-limit",
        "1h",
    )
    assert res.returncode == 0, res.stderr
    line = _cli_error(
        lab.cli("submit", "--no-code", "--priority", "100", "--", "true", token=alice)
    )
    assert "member_max_priority" in line and "10" in line
    line = _cli_error(lab.cli("submit", "--no-code", "--gpus", "2", "--", "true", token=alice))
    assert "max_gpus_per_job" in line
    line = _cli_error(lab.cli("submit", "--no-code", "--timeout", "3h", "--", "true", token=alice))
    assert "max_time_limit_s" in line
    # lower is always allowed, and the default time limit is stored with the job
    low = _submit(lab, "--priority", "-5", "--", "true", token=alice)
    j = lab.job(low)
    assert j.priority == -5 and j.timeout_s == 3600.0
    ok = _submit(lab, "--priority", "10", "--timeout", "2h", "--", "true", token=alice)
    assert lab.job(ok).timeout_s == 7200.0
    # admins are held to none of them
    big = _submit(lab, "--priority", "100", "--gpus", "2", "--", "true")
    assert lab.job(big).priority == 100
    audit = lab.admin.audit.list(action="settings.update")
    assert any(e.details.get("member_max_priority") == 10 for e in audit)


def test_limit_refusal_is_a_stable_error_code(lab: Lab) -> None:
    alice = _member(lab, "alice")
    lab.admin.settings.update(api.LabSettingsUpdate(member_max_priority=0))
    import httpx

    resp = httpx.post(
        f"{lab.url}/api/v1/jobs",
        json={"argv": ["true"], "priority": 1},
        headers={"Authorization": f"Bearer {alice}"},
    )
    assert resp.status_code == 403
    err = resp.json()["error"]
    assert err["code"] == "limit_exceeded"
    assert err["details"]["limit"] == "member_max_priority"


def test_default_longer_than_maximum_is_refused(lab: Lab) -> None:
    line = _cli_error(
        lab.cli("settings", "set", "--default-time-limit", "3h", "--max-time-limit", "1h")
    )
    assert "default time limit" in line


# ---------------------------------------------------------------- backfill with a reservation
def test_big_job_starts_at_its_reserved_time_while_small_ones_backfill(lab: Lab) -> None:
    # pa's GPU is held by a job whose time limit ends in 8 s
    first = _submit(lab, "--gpus", "1", "--node", "pa", "--timeout", "8s", "--", "sleep", "300")
    lab.wait_job(first, "running", JOB_WAIT_S)
    big = _submit(lab, "--gpus", "2", "--node", "pa", "--priority", "5", "--", "sleep", "300")
    j = wait_until(
        lambda: (x := lab.job(big)).expected_start and x, JOB_WAIT_S, "an expected start"
    )
    started = lab.job(first).started_at
    assert started is not None and j.expected_start is not None
    assert abs(j.expected_start - (started + 8)) < 1.0
    listing = lab.cli("jobs")
    assert "expected start" in listing.stdout
    # a small job that ends in time backfills; one that would not waits for the big one
    fits = _submit(lab, "--gpus", "1", "--node", "pa", "--timeout", "2s", "--", "sleep", "1")
    late = _submit(lab, "--gpus", "1", "--node", "pa", "--timeout", "60s", "--", "sleep", "300")
    assert lab.wait_job(fits, "succeeded", JOB_WAIT_S).started_at is not None
    b = lab.wait_job(big, "running", JOB_WAIT_S)
    assert b.started_at is not None and b.started_at >= j.expected_start - 1.0
    lj = lab.job(late)
    assert lj.state == "queued" and lj.started_at is None


# ---------------------------------------------------------------- preemption
TRAP = "trap 'echo checkpoint; exit 0' TERM; echo started; while true; do sleep 0.2; done"


def test_preemption_requeues_and_the_preemptor_starts(lab: Lab) -> None:
    victim = _submit(
        lab,
        "--gpus",
        "2",
        "--node",
        "pb",
        "--preemptible",
        "--preempt-grace",
        "30s",
        "--",
        "bash",
        "-c",
        TRAP,
    )
    lab.wait_job(victim, "running", JOB_WAIT_S)
    wait_until(lambda: b"started" in lab.log(victim), JOB_WAIT_S, "the victim to start")
    normal = _submit(lab, "--gpus", "1", "--node", "pb", "--", "sleep", "300")
    lab.wait_job(normal, "running", JOB_WAIT_S)
    v = lab.job(victim)
    assert v.state in ("queued", "assigned", "running")
    assert v.preemptions == 1 and v.attempt == 1 and v.retries == 0
    assert any(
        e.state == "interrupted" and e.message == f"preempted by job {normal}" for e in v.history
    )
    assert not any(e.state == "failed" for e in v.history)
    # it stopped by itself on SIGTERM within its grace (it could checkpoint)
    runs = lab.cli("job", "show", str(victim))
    assert "preempted 1 time" in runs.stdout
    # the preemptor's usage counts while it runs
    report = json.loads(lab.cli("usage", "--json", "--since", "1h").stdout)
    assert report["total"]["gpu_hours"] > 0


#: Checkpoints for longer than the default 10 s grace before it exits on SIGTERM.
SLOW_TRAP = (
    "trap 'echo checkpoint; sleep 12; echo saved; exit 0' TERM; echo started; "
    "while true; do sleep 0.2; done"
)


def test_a_preempted_job_gets_its_own_grace_to_checkpoint(lab: Lab) -> None:
    victim = _submit(
        lab,
        "--gpus",
        "1",
        "--node",
        "pb",
        "--preemptible",
        "--preempt-grace",
        "40s",
        "--",
        "bash",
        "-c",
        SLOW_TRAP,
    )
    lab.wait_job(victim, "running", JOB_WAIT_S)
    wait_until(lambda: b"started" in lab.log(victim), JOB_WAIT_S, "the victim to start")
    blocker = _submit(lab, "--gpus", "1", "--node", "pb", "--", "sleep", "300")
    lab.wait_job(blocker, "running", JOB_WAIT_S)
    normal = _submit(lab, "--gpus", "1", "--node", "pb", "--", "sleep", "300")
    lab.wait_job(normal, "running", JOB_WAIT_S)
    # SIGTERM reached it, and it was not killed at 10 s: its checkpoint finished
    log = lab.agents["pb"].job_log(victim)
    assert b"checkpoint" in log and b"saved" in log
    v = lab.job(victim)
    assert v.state == "queued" and v.preemptions == 1
    assert v.reason == f"preempted by job {normal}" or "GPU" in v.reason


# ---------------------------------------------------------------- reservations
def test_a_reservation_blocks_others_then_frees_itself(lab: Lab) -> None:
    alice, bob = _member(lab, "alice"), _member(lab, "bob")
    line = _cli_error(lab.cli("reserve", "--gpus", "1", "--for", "1h", token=alice))
    assert "reservation_max_gpus" in line  # members may not reserve until an admin allows
    lab.admin.settings.update(api.LabSettingsUpdate(reservation_max_gpus=2))
    line = _cli_error(lab.cli("reserve", "--gpus", "3", "--for", "1h", token=alice))
    assert "reservation_max_gpus" in line
    res = lab.cli("reserve", "--gpus", "2", "--node", "pc", "--for", "10s", "--json", token=alice)
    assert res.returncode == 0, res.stderr
    made = json.loads(res.stdout)
    assert made["node"] == "pc" and made["gpu_indices"] == [0, 1] and made["state"] == "active"
    other = _submit(lab, "--gpus", "1", "--node", "pc", "--", "sleep", "300", token=bob)
    mine = _submit(lab, "--gpus", "1", "--node", "pc", "--", "sleep", "300", token=alice)
    lab.wait_job(mine, "running", JOB_WAIT_S)
    o = lab.job(other)
    assert o.state == "queued" and f"alice's reservation {made['id']}" in o.reason
    listing = lab.cli("reserve", "list")
    assert "alice" in listing.stdout and "pc" in listing.stdout
    # it ends by itself, and bob's job gets the GPU it left free
    lab.wait_job(other, "running", JOB_WAIT_S)
    assert lab.cli("reserve", "list", "--json").json() == []


def test_gpus_used_without_reservation_are_flagged(lab: Lab) -> None:
    bob = _member(lab, "bob")
    _member(lab, "alice")
    squatter = _submit(lab, "--gpus", "1", "--node", "pc", "--", "sleep", "300", token=bob)
    job = lab.wait_job(squatter, "running", JOB_WAIT_S)
    res = lab.cli(
        "reserve", "--gpus", "2", "--node", "pc", "--for", "1h", "--user", "alice", "--json"
    )
    assert res.returncode == 0, res.stderr
    rid = json.loads(res.stdout)["id"]
    r = next(x for x in lab.admin.reservations.list() if x.id == rid)
    assert r.unreserved_jobs == [squatter] and r.unreserved_gpus == job.gpu_indices
    node = lab.node("pc")
    flagged = [g.sample.index for g in node.gpus if g.unreserved_use]
    assert flagged == job.gpu_indices
    assert all(g.reserved_for == "alice" for g in node.gpus)
    assert "USED WITHOUT RESERVATION" in lab.cli("reserve", "list").stdout

    def said() -> list[dict[str, object]]:
        res = lab.cli("events", "--json", "-n", "10000", "--type", "node.unreserved_use")
        assert res.returncode == 0, res.stderr
        return [e for line in res.stdout.splitlines() if (e := json.loads(line))]

    events = wait_until(said, JOB_WAIT_S, "the event of the GPU used without reservation")
    assert len(events) == len(job.gpu_indices)  # once per GPU, not once per pass
    assert f"job {squatter}" in str(events[0]["message"]) and "alice" in str(events[0]["message"])
    # a member cannot cancel someone else's reservation; the admin can
    line = _cli_error(lab.cli("reserve", "cancel", str(rid), token=bob))
    assert "not yours" in line
    assert lab.cli("reserve", "cancel", str(rid)).returncode == 0


# ---------------------------------------------------------------- usage reports
#: A minute boundary ten days ago: before any test's own jobs, within history retention.
T0 = float(int((time.time() - 10 * 86400) // 60) * 60)
HOUR = 3600.0


def _script_history(lab: Lab) -> None:
    """Three attempts on two nodes that are not in the lab, and their GPUs' telemetry."""
    runs = [
        # job, user, node, node_id, gpus, model, rack, queued, started, ended
        (
            101,
            "u1",
            "hist-a",
            9001,
            [0, 1],
            "Simulated A100",
            "r1",
            T0 - 2000,
            T0 - 1800,
            T0 + 1800,
        ),
        (102, "u1", "hist-a", 9001, [2], "Simulated A100", "r1", T0 + 1000, T0 + 1200, T0 + 4800),
        (103, "u2", "hist-b", 9002, [0], "Simulated H100", "r2", T0 + 3000, T0 + 3630, T0 + 9000),
    ]
    points: list[tuple[int, str, float, float]] = []
    for t in range(int(T0 - 1800), int(T0 + 1800), 60):
        points += [(9001, "gpu0.util", t, 50.0), (9001, "gpu0.power", t, 200.0)]
    for t in range(int(T0 + 1200), int(T0 + 4800), 60):
        points += [(9001, "gpu2.util", t, 80.0), (9001, "gpu2.power", t, 300.0)]
    for t in range(int(T0 + 3540), int(T0 + 7200), 60):  # the first minute is before the run
        points += [(9002, "gpu0.util", t, 100.0), (9002, "gpu0.power", t, 400.0)]

    async def write() -> None:
        url = lab.database_url or f"sqlite+aiosqlite:///{lab.master_data}/mlsm.db"
        engine = create_async_engine(url)
        async with engine.begin() as c:
            for job, user, node, nid, gpus, model, rack, q, s, e in runs:
                await c.execute(
                    text(
                        'INSERT INTO job_runs (job_id, attempt, "user", node, node_id, '
                        "gpu_indices, gpu_model, node_labels, queued_at, started_at, ended_at, "
                        "state) VALUES (:j, 0, :u, :n, :nid, :g, :m, :l, :q, :s, :e, 'succeeded')"
                    ),
                    {
                        "j": job,
                        "u": user,
                        "n": node,
                        "nid": nid,
                        "g": json.dumps(gpus),
                        "m": model,
                        "l": json.dumps({"rack": rack}),
                        "q": q,
                        "s": s,
                        "e": e,
                    },
                )
            await c.execute(
                text(
                    "INSERT INTO metric_points (node_id, series, ts, mean, max) "
                    "VALUES (:n, :s, :t, :a, :a)"
                ),
                [{"n": n, "s": s, "t": float(t), "a": a} for n, s, t, a in points],
            )
        await engine.dispose()

    asyncio.run(write())


# By hand (window T0 .. T0 + 2 h):
#  101: 1800 s inside x 2 GPUs = 1 GPU-h; util: GPU 0 at 50 % for 1800 s = 0.25 GPU-h (GPU 1
#       has no points); energy 200 W x 1800 s = 0.1 kWh; started before the window: no wait.
#  102: 3600 s x 1 GPU = 1 GPU-h; util 80 % -> 0.8; 300 W x 3600 s = 0.3 kWh; wait 200 s.
#  103: from T0+3630 to the window's end: 3570 s = 0.991667 GPU-h; util 100 % of 3570 s
#       (the minute at T0+3540 ends before it starts; the one at T0+3600 counts 30 s);
#       400 W x 3570 s = 0.396667 kWh; wait 630 s.
HAND = {
    "u1": {
        "gpu_hours": 2.0,
        "util_gpu_hours": 1.05,
        "jobs": 2,
        "wait_median_s": 200.0,
        "wait_p90_s": 200.0,
        "energy_kwh": 0.4,
    },
    "u2": {
        "gpu_hours": 3570 / 3600,
        "util_gpu_hours": 3570 / 3600,
        "jobs": 1,
        "wait_median_s": 630.0,
        "wait_p90_s": 630.0,
        "energy_kwh": 400 * 3570 / 3.6e6,
    },
}
HAND_TOTAL = {
    "gpu_hours": 2 + 3570 / 3600,
    "jobs": 3,
    "wait_median_s": 415.0,
    "wait_p90_s": 630.0,
    "energy_kwh": 0.4 + 400 * 3570 / 3.6e6,
}


def _window_args() -> tuple[str, ...]:
    from datetime import datetime

    fmt = "%Y-%m-%d %H:%M:%S"
    return (
        "--since",
        datetime.fromtimestamp(T0).strftime(fmt),
        "--until",
        datetime.fromtimestamp(T0 + 2 * HOUR).strftime(fmt),
    )


def _close(got: dict[str, Any], want: dict[str, Any]) -> None:
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-9), (k, got[k], v)


def test_usage_report_matches_hand_computed_figures(lab: Lab) -> None:
    _script_history(lab)
    res = lab.cli("usage", "--json", *_window_args())
    assert res.returncode == 0, res.stderr
    report = res.json()
    assert report["since"] == T0 and report["until"] == T0 + 2 * HOUR
    rows = {r["key"]: r for r in report["rows"]}
    assert set(rows) == {"u1", "u2"}
    for user, want in HAND.items():
        _close(rows[user], want)
    _close(report["total"], HAND_TOTAL)
    by_node = {
        r["key"]: r
        for r in lab.cli("usage", "--json", "--by", "node", *_window_args()).json()["rows"]
    }
    assert by_node["hist-a"]["gpu_hours"] == pytest.approx(2.0)
    by_label = {
        r["key"]: r
        for r in lab.cli("usage", "--json", "--by", "label", *_window_args()).json()["rows"]
    }
    assert set(by_label) == {"rack=r1", "rack=r2"}
    by_model = {
        r["key"]: r
        for r in lab.cli("usage", "--json", "--by", "gpu-model", *_window_args()).json()["rows"]
    }
    assert by_model["Simulated H100"]["energy_kwh"] == pytest.approx(400 * 3570 / 3.6e6)
    csv = lab.cli("usage", "--csv", *_window_args()).stdout.splitlines()
    assert csv[0].startswith("user,gpu_hours") and csv[-1].startswith("total,2.991667")
    table = lab.cli("usage", *_window_args()).stdout
    assert "u1" in table and "2.00" in table
    plot = lab.cli("usage", "--plot", *_window_args())
    assert plot.returncode == 0, plot.stderr
    assert "GPU-hours by user" in plot.stdout and "GPU utilisation" in plot.stdout
    # members see their own usage only
    u1 = _member(lab, "u1")
    mine = lab.cli("usage", "--json", *_window_args(), token=u1).json()
    assert [r["key"] for r in mine["rows"]] == ["u1"]
    _close(mine["total"], HAND["u1"])
    line = _cli_error(lab.cli("usage", "--user", "u2", *_window_args(), token=u1))
    assert "own usage" in line
    # stored facts: the same figures after a restart of the master
    lab.stop_master()
    lab.start_master()
    again = lab.cli("usage", "--json", *_window_args()).json()
    assert again == report


def test_usage_rejects_a_bad_window(lab: Lab) -> None:
    line = _cli_error(lab.cli("usage", "--since", "yesterday-ish"))
    assert "not a time" in line
    line = _cli_error(lab.cli("usage", "--since", "1d", "--until", "2d"))
    assert "since" in line


def test_finished_jobs_leave_usage_facts(lab: Lab) -> None:
    since = time.time() - 1
    jid = _submit(lab, "--gpus", "1", "--node", "pa", "--", "sleep", "1")
    lab.wait_job(jid, "succeeded", JOB_WAIT_S)
    report = lab.admin.usage.report(by="node", since=since)
    rows = {r.key: r for r in report.rows}
    assert rows["pa"].jobs >= 1 and rows["pa"].gpu_hours > 0
