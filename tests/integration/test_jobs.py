"""Jobs end to end: the real CLI submits to a real master, real agents (two nodes with two
simulated GPUs each) run the jobs as processes, and the tests read what the jobs wrote."""

from __future__ import annotations

import itertools
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import psutil
import pytest

from mlsm import errors
from mlsm.wire import api
from tests.integration.lab import Lab
from tests.support.wait import wait_until

# A job that records its GPUs and when it ran: "S <start> <CUDA_VISIBLE_DEVICES>" / "E <end>".
STAMPED = 'echo "S $(date +%s.%N) $CUDA_VISIBLE_DEVICES $MLSM_ARRAY_INDEX"; sleep {s}; echo "E $(date +%s.%N)"'
LONG_S = 60


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("jobs")) as lab:
        lab.start_master()
        lab.start_agent("j1")
        lab.start_agent("j2")
        yield lab


@pytest.fixture(autouse=True)
def _no_leftovers(lab: Lab) -> Iterator[None]:
    """Each test leaves the lab idle: whatever it left queued or running is cancelled."""
    yield
    res = lab.admin.call("GET", "/api/v1/jobs", type=api.JobList)
    ids = [j.id for j in res.jobs]
    if ids:
        lab.admin.call("POST", "/api/v1/jobs/cancel", json=api.CancelRequest(ids=ids))
        for jid in ids:
            lab.wait_job(jid, timeout=30)


def api_submit(lab: Lab, argv: list[str], token: str | None = None, **spec: object) -> list[int]:
    client = lab.client(token) if token else lab.admin
    body = msgspec.convert({"argv": argv, **spec}, api.JobSubmit)
    reply = client.call("POST", "/api/v1/jobs", json=body, type=api.SubmitReply)
    return reply.ids


def api_log(lab: Lab, job_id: int) -> bytes:
    return b"".join(lab.admin.stream_lines(f"/api/v1/jobs/{job_id}/log"))


def stamps(log: bytes) -> tuple[float, float, str, str]:
    """(start, end, CUDA_VISIBLE_DEVICES, MLSM_ARRAY_INDEX) from a STAMPED job's log."""
    start = end = None
    cvd = idx = ""
    for line in log.decode().splitlines():
        parts = line.split(" ")
        if parts[0] == "S":
            start, cvd, idx = float(parts[1]), parts[2], parts[3]
        elif parts[0] == "E":
            end = float(parts[1])
    assert start is not None and end is not None, log
    return start, end, cvd, idx


def wait_all(lab: Lab, ids: list[int], timeout: float = 60) -> list[api.Job]:
    return [lab.wait_job(i, timeout=timeout) for i in ids]


# ---------------------------------------------------------------- submit and environment
def test_submit_returns_the_id_at_once(lab: Lab) -> None:
    res = lab.cli("submit", "--", "sleep", str(LONG_S))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("submitted job ")
    job_id = int(res.stdout.split()[-1])
    assert lab.job(job_id).state in ("queued", "assigned", "running")
    lab.wait_job(job_id, "running")


def test_the_job_sees_its_gpus_id_node_and_output_dir(lab: Lab) -> None:
    script = 'echo "CVD=$CUDA_VISIBLE_DEVICES"; echo "ID=$MLSM_JOB_ID"; echo "NODE=$MLSM_NODE"; echo "OUT=$MLSM_OUTPUT_DIR"'
    ids = [lab.submit("--gpus", str(g), "--", "sh", "-c", script) for g in (2, 1, 0)]
    for job_id, job in zip(ids, wait_all(lab, ids), strict=True):
        assert job.state == "succeeded", job
        env = dict(
            ln.split("=", 1) for ln in api_log(lab, job_id).decode().splitlines() if "=" in ln
        )
        assert env["CVD"] == ",".join(map(str, job.gpu_indices))
        assert len(job.gpu_indices) == job.gpus
        assert env["ID"] == str(job_id)
        assert env["NODE"] == job.node
        agent = lab.agents[job.node or ""]
        assert env["OUT"] == str(agent.data_dir / "jobs" / str(job_id))
        assert os.path.isfile(os.path.join(env["OUT"], "output.log"))


def test_gpus_are_exclusive_under_contention(lab: Lab) -> None:
    ids: list[int] = []
    for i in range(20):
        gpus = 1 + (i * 7 % 3 == 0)  # a mix of 1- and 2-GPU jobs
        ids += api_submit(lab, ["sh", "-c", STAMPED.format(s=0.2)], gpus=gpus)
    jobs = wait_all(lab, ids, timeout=90)
    held: dict[tuple[str, int], list[tuple[float, float, int]]] = {}
    for job in jobs:
        assert job.state == "succeeded", job
        start, end, cvd, _ = stamps(api_log(lab, job.id))
        assert cvd == ",".join(map(str, job.gpu_indices)), (job.id, cvd, job.gpu_indices)
        assert len(job.gpu_indices) == job.gpus
        for g in job.gpu_indices:
            held.setdefault((job.node or "", g), []).append((start, end, job.id))
    assert {n for n, _ in held} == {"j1", "j2"}
    for (node, gpu), spans in held.items():
        spans.sort()
        for (s1, e1, j1), (s2, e2, j2) in itertools.pairwise(spans):
            assert s2 >= e1, f"GPU {gpu} of {node} held by jobs {j1} and {j2} at once"


def test_fair_share_alternates_two_users_flooding_the_queue(lab: Lab) -> None:
    """Whole-node jobs run one at a time on j1: each pick goes to the user with fewer
    recent GPU-hours, so the users alternate although alice queued all of hers first."""
    tokens = {u: lab.add_user(u) for u in ("fsalice", "fsbob")}
    for n in ("j1", "j2"):
        assert lab.cli("node", "drain", n).returncode == 0
    ids: list[int] = []
    try:
        for user in ("fsalice", "fsbob"):  # FIFO would run all of alice's first
            for _ in range(4):
                ids += api_submit(lab, ["sleep", "0.5"], token=tokens[user], gpus=2)
        assert lab.cli("node", "resume", "j1").returncode == 0
        jobs = wait_all(lab, ids, timeout=60)
    finally:
        assert lab.cli("node", "resume", "j2").returncode == 0
    assert all(j.state == "succeeded" and j.node == "j1" for j in jobs), jobs
    order = [j.user for j in sorted(jobs, key=lambda j: j.started_at or 0)]
    assert order[0] == "fsalice", order  # equal usage: the older job first
    for k in range(1, len(order) + 1):
        prefix = order[:k]
        assert abs(prefix.count("fsalice") - prefix.count("fsbob")) <= 1, order


# ---------------------------------------------------------------- dependencies, arrays, reasons
def test_after_ok_any_and_a_failed_dependency(lab: Lab) -> None:
    good = lab.submit("--", "sh", "-c", "sleep 0.5")
    bad = lab.submit("--", "sh", "-c", "sleep 0.5; exit 3")
    after_good = lab.submit("--after", str(good), "--", "true")
    after_bad = lab.submit("--after", f"{bad}:ok", "--", "true")
    after_bad_any = lab.submit("--after", f"{bad}:any", "--", "true")
    listed = lab.cli("jobs", "--json").json()["jobs"]
    reasons = {j["id"]: j["reason"] for j in listed}
    assert reasons.get(after_good, "").startswith(f"waiting for job {good}") or (
        lab.job(good).state in api.FINAL_STATES
    )

    g, b = lab.wait_job(good), lab.wait_job(bad)
    assert (g.state, b.state, b.exit_code) == ("succeeded", "failed", 3)
    ag = lab.wait_job(after_good)
    assert ag.state == "succeeded"
    assert (ag.started_at or 0) >= (g.ended_at or 0)
    ab = lab.wait_job(after_bad)
    assert ab.state == "cancelled" and ab.reason == f"dependency {bad} failed", ab
    assert ab.started_at is None
    aa = lab.wait_job(after_bad_any)
    assert aa.state == "succeeded" and (aa.started_at or 0) >= (b.ended_at or 0)


def test_an_array_runs_every_index_at_most_two_at_once(lab: Lab) -> None:
    res = lab.cli("submit", "--json", "--array", "0-5%2", "--", "sh", "-c", STAMPED.format(s=0.4))
    assert res.returncode == 0, res.stderr
    ids = res.json()["ids"]
    assert len(ids) == 6
    jobs = wait_all(lab, ids)
    spans = []
    for job in jobs:
        assert job.state == "succeeded", job
        start, end, _, idx = stamps(api_log(lab, job.id))
        assert idx == str(job.array_index)
        spans.append((start, end))
    assert sorted(j.array_index for j in jobs) == list(range(6))  # type: ignore[type-var]
    for s, _ in spans:
        running = sum(1 for s2, e2 in spans if s2 <= s < e2)
        assert running <= 2, spans


def _reason_in_table(lab: Lab, job_id: int) -> str:
    res = lab.cli("jobs")
    assert res.returncode == 0, res.stderr
    header, *rows = res.stdout.splitlines()
    col = header.index("REASON")
    for row in rows:
        if row.split()[0] == str(job_id):
            return row[col:].strip()
    raise AssertionError(f"job {job_id} not listed:\n{res.stdout}")


def test_a_waiting_job_says_why(lab: Lab) -> None:
    too_big = lab.submit("--gpus", "4", "--", "true")
    wait_until(
        lambda: _reason_in_table(lab, too_big) == "no online node has 4 GPUs",
        what="the REASON of a 4-GPU job",
    )
    fillers = [lab.submit("--gpus", "2", "--", "sleep", str(LONG_S)) for _ in range(2)]
    for f in fillers:
        lab.wait_job(f, "running")
    blocked = lab.submit("--gpus", "1", "--", "true")
    wait_until(
        lambda: _reason_in_table(lab, blocked) == "no online node has 1 free GPU",
        what="the REASON of a 1-GPU job on a full lab",
    )
    assert lab.job(blocked).state == "queued"


# ---------------------------------------------------------------- ending jobs
GRANDCHILD = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time\\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
    "print('grandchild ready', flush=True)\\n"
    "time.sleep(600)"])
print(f"sid={os.getsid(0)} grandchild={child.pid}", flush=True)
time.sleep(600)
"""


def _session_members(sid: int) -> list[int]:
    out = []
    for pid in psutil.pids():
        try:
            if os.getsid(pid) == sid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except (OSError, psutil.Error):
            continue
    return out


def test_cancel_ends_the_whole_session_even_a_grandchild_that_ignores_sigterm(lab: Lab) -> None:
    job_id = lab.submit("--", sys.executable, "-c", GRANDCHILD)

    def started() -> bytes | None:
        log = api_log(lab, job_id)
        return log if b"grandchild ready" in log and b"sid=" in log else None

    log = wait_until(started, what="the job and its grandchild to start")
    line = next(ln for ln in log.decode().splitlines() if ln.startswith("sid="))
    sid, grandchild = (int(part.split("=")[1]) for part in line.split())
    assert psutil.pid_exists(grandchild) and os.getsid(grandchild) == sid

    res = lab.cli("cancel", str(job_id))
    assert res.returncode == 0 and f"job {job_id} cancelled" in res.stdout, res.stderr
    job = lab.wait_job(job_id)
    assert job.state == "cancelled" and job.reason == "cancelled by root", job
    assert _session_members(sid) == []  # the grandchild too (at most a zombie now)
    text = lab.log(job_id).decode()
    assert text.endswith(f"[mlsm] job {job_id} cancelled by root\n"), text[-300:]


def test_a_timeout_fails_the_job_with_a_marker(lab: Lab) -> None:
    job_id = lab.submit("--timeout", "2s", "--", "sleep", str(LONG_S))
    job = lab.wait_job(job_id, timeout=30)
    assert job.state == "failed" and job.reason.startswith("timeout after 2s"), job
    assert (job.ended_at or 0) - (job.started_at or 0) >= 2
    text = lab.log(job_id).decode()
    assert text.endswith(f"[mlsm] job {job_id} timed out after 2s\n"), text[-300:]


# ---------------------------------------------------------------- logs
def test_logs_prints_and_follow_streams_until_the_job_ends(lab: Lab) -> None:
    job_id = lab.submit("--", "sh", "-c", "for i in 1 2 3 4 5 6; do echo line $i; sleep 0.3; done")
    follower = lab.cli_popen("logs", "-f", str(job_id))
    lines: queue.Queue[tuple[bytes, str]] = queue.Queue()

    def read() -> None:
        assert follower.stdout is not None
        for ln in iter(follower.stdout.readline, b""):
            lines.put((ln, lab.job(job_id).state))
        lines.put((b"", "eof"))

    threading.Thread(target=read, daemon=True).start()
    got: list[bytes] = []
    states: list[str] = []
    deadline = time.monotonic() + 30
    while True:
        ln, state = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        if state == "eof":
            break
        got.append(ln)
        states.append(state)
    assert follower.wait(timeout=10) == 0, follower.stderr.read() if follower.stderr else ""
    first_job_line = next(i for i, ln in enumerate(got) if ln.startswith(b"line "))
    assert states[first_job_line] == "running", "the first line came only after the job ended"
    assert b"".join(got) == lab.log(job_id)
    assert [ln for ln in got if ln.startswith(b"line ")] == [b"line %d\n" % i for i in range(1, 7)]
    assert lab.job(job_id).state == "succeeded"


def test_logs_follow_exit_status_says_how_the_job_ended(lab: Lab) -> None:
    """`mlsm logs -f $J && next`: 0 only for a job that succeeded (the codes `logs` documents)."""
    ok = lab.submit("--", "true")
    failed = lab.submit("--", "sh", "-c", "echo doomed; exit 7")
    held = lab.submit("--", "sleep", str(LONG_S))
    lab.wait_job(held, "running", timeout=30)
    assert lab.cli("cancel", str(held)).returncode == 0
    for job_id, state, rc in ((ok, "succeeded", 0), (failed, "failed", 3), (held, "cancelled", 4)):
        res = lab.cli("logs", "-f", str(job_id))
        assert res.returncode == rc, (state, res)
        assert lab.job(job_id).state == state
        if rc:
            assert res.stderr.strip() == f"mlsm: job {job_id} ended {state}", res.stderr
    assert "doomed" in lab.cli("logs", "-f", str(failed)).stdout


def test_jobs_state_filter_takes_any_case_and_refuses_a_typo(lab: Lab) -> None:
    job_id = lab.submit("--", "sleep", str(LONG_S))
    lab.wait_job(job_id, "running", timeout=30)
    for spelled in ("RUNNING", "Running,queued"):
        res = lab.cli("jobs", "--state", spelled, "--json")
        assert res.returncode == 0, res.stderr
        assert job_id in [j["id"] for j in res.json()["jobs"]], spelled
    res = lab.cli("jobs", "--state", "runing")
    assert res.returncode == 2 and res.stdout == "", res
    line = res.stderr.strip()
    assert "\n" not in line and line.startswith("mlsm: error: state: 'runing' is not a job state")
    assert all(s in line for s in api.JOB_STATES), line
    # the master refuses it too, for any client: a 400 naming the field, never an empty list
    with pytest.raises(errors.ValidationError) as refused:
        lab.admin.jobs.list(state="runing")
    assert refused.value.details["path"] == "state"


def test_owner_and_admins_read_a_log_other_members_get_403_and_no_env(lab: Lab) -> None:
    alice = lab.add_user("alice")
    bob = lab.add_user("bob")
    job_id = lab.submit("-e", "SECRET_TOKEN=s3cret", "--", "echo", "hello", token=alice)
    assert lab.wait_job(job_id).state == "succeeded"
    assert lab.cli("logs", str(job_id), token=alice).stdout.endswith("hello\n")
    assert lab.cli("logs", str(job_id)).stdout.endswith("hello\n")  # root

    for args in (("logs", str(job_id)), ("logs", "-f", str(job_id))):
        denied = lab.cli(*args, token=bob)
        assert denied.returncode != 0 and denied.stdout == ""
        assert "belongs to alice" in denied.stderr and "Traceback" not in denied.stderr

    def job_as(token: str) -> dict[str, object]:
        res = lab.cli("jobs", "--all", "--json", token=token)
        assert res.returncode == 0, res.stderr
        return next(j for j in res.json()["jobs"] if j["id"] == job_id)

    assert job_as(bob)["env"] is None and job_as(bob)["user"] == "alice"
    assert job_as(alice)["env"] == {"SECRET_TOKEN": "s3cret"}
    shown = lab.cli("job", "show", "--json", str(job_id), token=bob).json()
    assert shown["env"] is None
    # bob may not cancel alice's jobs either
    other = lab.submit("--", "sleep", str(LONG_S), token=alice)
    refused = lab.cli("cancel", str(other), token=bob)
    assert refused.returncode != 0 and "not yours" in refused.stderr
    assert lab.job(other).state != "cancelled"


@pytest.mark.skipif(
    os.geteuid() != 0, reason="runs jobs as another account: the agent must be root"
)
def test_jobs_of_unmapped_users_run_as_the_agents_default_account(lab: Lab) -> None:
    """An agent given --default-unix-user (here via MLSM_DEFAULT_UNIX_USER) never runs a job of
    a user without a Unix mapping as root, and the log header names the account."""
    # The job's account must be able to reach its job dir: not under pytest's 0700 tmp root.
    base = Path(tempfile.mkdtemp(prefix="mlsm-test-j3-"))
    base.chmod(0o755)
    lab.start_agent(
        "j3",
        gpus="",
        data_dir=base / "agent",
        env={"MLSM_DEFAULT_UNIX_USER": "nobody", "MLSM_SINGLE_USER": "0"},
    )
    try:
        job_id = lab.submit("--node", "j3", "--", "id", "-un")
        assert lab.wait_job(job_id).state == "succeeded"
        out = lab.log(job_id)
        assert out.endswith(b"nobody\n"), out
        assert b" as nobody" in out.splitlines()[0], out
    finally:
        lab.agents["j3"].proc.kill()
        lab.cli("node", "remove", "j3", "--force", "--yes")
        shutil.rmtree(base, ignore_errors=True)
