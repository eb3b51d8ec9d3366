"""The idle-GPU policy on simulated GPUs, with real master and agent processes: the
simulated probe's control file holds a job's GPU at 1 % utilisation; the policy warns
(event, a line in the job's log, the job's mark, audit), waits out the grace, then cancels
or requeues it with the reason; an exempt job is left alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from mlsm.cli.interactive import KEEPER_ARGV
from mlsm.wire import api
from tests.integration.lab import Lab
from tests.support.wait import wait_until

THRESHOLD = "20"  # %: the pinned 1 % (plus the probe's noise) stays far below it
WINDOW = "2s"
GRACE = "2s"
DEADLINE_S = 40.0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("idle")) as lab:
        lab.start_master()
        agent = lab.start_agent("idle1", gpus="4xA100-80GB")
        # Every GPU of this node settles at 1 %, job or no job: work that holds GPUs idle.
        control = agent.data_dir / "simulated-gpus.json"
        control.write_text(json.dumps({"util": {str(i): 1 for i in range(4)}}))
        res = lab.cli(
            "settings", "set", "--idle-gpu", "--idle-pct", THRESHOLD, "--idle-window", WINDOW,
            "--idle-grace", GRACE, "--idle-action", "cancel",
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        yield lab


def _events_of(lab: Lab, job: int) -> list[dict[str, Any]]:
    res = lab.cli("events", "--json", "-n", "10000", "--type", "job")
    assert res.returncode == 0, res.stderr
    return [e for line in res.stdout.splitlines() if (e := json.loads(line))["job_id"] == job]


def test_an_idle_job_is_warned_then_cancelled_and_an_exempt_one_is_left_alone(lab: Lab) -> None:
    exempt = lab.submit("--gpus", "1", "--hold", "--", "sleep", "300")
    res = lab.cli("job", "set", str(exempt), "--idle-exempt")
    assert res.returncode == 0, res.stderr
    assert lab.cli("job", "release", str(exempt)).returncode == 0
    idle = lab.submit("--gpus", "1", "--", "sleep", "300")
    lab.wait_job(exempt, "running")
    lab.wait_job(idle, "running")

    warned = wait_until(
        lambda: lab.job(idle).idle_warned_at, DEADLINE_S, "the idle job to be warned"
    )
    kinds = [e["kind"] for e in _events_of(lab, idle)]
    assert "job.idle_warning" in kinds
    wait_until(
        lambda: b"[mlsm] warning: its GPUs stayed below 20%" in lab.agents["idle1"].job_log(idle),
        DEADLINE_S,
        "the warning line in the job's log",
    )
    ended = lab.wait_job(idle, "cancelled", DEADLINE_S)
    assert ended.reason == "idle GPUs: below 20% for 2 s"
    assert ended.ended_at is not None and ended.ended_at - warned >= 2.0  # the grace was kept
    kinds = [e["kind"] for e in _events_of(lab, idle)]
    assert kinds.index("job.idle_warning") < kinds.index("job.cancelled")

    # The exempt job ran the whole time on the same idle GPUs and was never touched.
    still = lab.job(exempt)
    assert still.state == "running" and still.idle_exempt and still.idle_warned_at is None
    assert "job.idle_warning" not in [e["kind"] for e in _events_of(lab, exempt)]

    audit = lab.cli("audit", "--json", "--action", "job.idle*")
    assert audit.returncode == 0, audit.stderr
    actions = {(r["action"], r["target"]) for r in audit.json()}
    assert ("job.idle_warning", f"job:{idle}") in actions
    assert ("job.idle_cancel", f"job:{idle}") in actions
    assert ("job.idle_exempt", f"job:{exempt}") in actions
    assert lab.cli("cancel", str(exempt)).returncode == 0


def test_the_requeue_action_starts_a_new_attempt(lab: Lab) -> None:
    assert lab.cli("settings", "set", "--idle-action", "requeue").returncode == 0
    try:
        job = lab.submit("--gpus", "1", "--", "sleep", "300")
        requeued = wait_until(
            lambda: (j := lab.job(job)).attempt >= 1 and j,
            DEADLINE_S,
            "the idle job to be requeued",
        )
        assert "job.requeued" in [e["kind"] for e in _events_of(lab, job)]
        assert "idle GPUs: below 20% for 2 s" in " ".join(h.message for h in requeued.history)
    finally:
        assert lab.cli("settings", "set", "--no-idle-gpu").returncode == 0
        lab.cli("cancel", str(job))


def test_only_admins_exempt_jobs(lab: Lab) -> None:
    token = lab.add_user("dora")
    job = lab.submit("--hold", "--", "true", token=token)
    res = lab.cli("job", "set", str(job), "--idle-exempt", token=token)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_an_idle_session_is_stopped_like_any_job(lab: Lab) -> None:
    """A session (mlsm session) holds its GPUs with a keeper process while people work in
    its shell; left idle, the policy warns it and then cancels it like any other job."""
    res = lab.cli("settings", "set", "--idle-gpu", "--idle-action", "cancel")
    assert res.returncode == 0, res.stderr
    spec = api.JobSubmit(
        argv=KEEPER_ARGV, name="idle-session", gpus=1, kind="session", session_keep=True
    )
    sid = lab.admin.jobs.submit(spec).job.id
    job = lab.wait_job(sid, "running", DEADLINE_S)
    assert job.kind == "session" and job.timeout_s > 0  # the lab's session time limit
    wait_until(lambda: lab.job(sid).idle_warned_at, DEADLINE_S, "the idle session's warning")
    ended = lab.wait_job(sid, "cancelled", DEADLINE_S)
    assert ended.reason.startswith("idle GPUs: below 20%")
    assert "job.idle_warning" in [e["kind"] for e in _events_of(lab, sid)]
