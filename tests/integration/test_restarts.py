"""Faults under running jobs: an agent or the master killed (-9) or restarted mid-run, and a
node that stays away past its lease. Nothing a job wrote may be lost or repeated: the log the
master serves is compared byte for byte with the file on the node."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from mlsm.master.services.jobs.lost import fence_after
from tests.integration.lab import HEARTBEAT_S, LEASE_S, Lab, kill
from tests.support.wait import wait_until

# Prints numbered lines (with bytes that are not UTF-8) for about `n` tenths of a second.
TICKER = (
    "i=0; while [ $i -lt {n} ]; do i=$((i+1)); printf 'tick %d \\377\\376 %s\\n' $i "
    '"$(date +%s.%N)"; sleep 0.1; done; exit {code}'
)
UNREACHABLE = "master unreachable"
BACK_ONLINE_S = 4 * HEARTBEAT_S + 1.0  # "a couple of intervals", with room for a slow box


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("restarts")) as lab:
        lab.start_master()
        lab.start_agent("r1")
        lab.start_agent("r2")
        yield lab


def _ticks_on_node(lab: Lab, node: str, job_id: int) -> int:
    try:
        return lab.agents[node].job_log(job_id).count(b"tick ")
    except FileNotFoundError:
        return 0


def test_master_sigterm_restart_under_running_agents(lab: Lab) -> None:
    before = {n.name: n.id for n in lab.nodes()}
    # uvicorn shuts down gracefully, then re-raises the signal so the status tells it
    marks = {n: lab.agents[n].output().count(UNREACHABLE) for n in ("r1", "r2")}
    assert lab.stop_master(signal.SIGTERM) in (0, -signal.SIGTERM)
    # Stay away long enough for the agents' retries to back off several times.
    wait_until(
        lambda: all(lab.agents[n].output().count(UNREACHABLE) >= m + 3 for n, m in marks.items()),
        what="three failed heartbeats of each agent",
    )
    lab.start_master()
    back = time.monotonic()
    for name in ("r1", "r2"):
        lab.wait_node_state(name, "online", BACK_ONLINE_S)
    assert time.monotonic() - back <= BACK_ONLINE_S
    assert {n.name: n.id for n in lab.nodes()} == before


def test_agent_kill9_mid_job_readopts_ships_the_rest_and_reports_the_exit_code(lab: Lab) -> None:
    job_id = lab.submit("--node", "r1", "--", "sh", "-c", TICKER.format(n=40, code=7))
    lab.wait_job(job_id, "running")
    wait_until(lambda: lab.job(job_id).log_size > 200, what="some log on the master")
    kill(lab.agents["r1"].proc, signal.SIGKILL)
    ticks = _ticks_on_node(lab, "r1", job_id)
    wait_until(
        lambda: _ticks_on_node(lab, "r1", job_id) > ticks + 3,
        what="the job to keep running without its agent",
    )
    lab.start_agent("r1")
    job = lab.wait_job(job_id, timeout=30)
    assert (job.state, job.exit_code, job.reason) == ("failed", 7, "exit code 7"), job
    on_node = lab.agents["r1"].job_log(job_id)
    assert on_node.count(b"tick ") == 40
    assert lab.log(job_id) == on_node
    assert job.log_size == len(on_node)


def test_master_kill9_mid_job_loses_nothing(lab: Lab) -> None:
    job_id = lab.submit("--node", "r2", "--", "sh", "-c", TICKER.format(n=40, code=0))
    lab.wait_job(job_id, "running")
    wait_until(lambda: lab.job(job_id).log_size > 200, what="some log on the master")
    lab.stop_master(signal.SIGKILL)
    ticks = _ticks_on_node(lab, "r2", job_id)
    wait_until(lambda: _ticks_on_node(lab, "r2", job_id) > ticks + 3, what="the job to go on")
    lab.start_master()
    job = lab.wait_job(job_id, timeout=30)
    assert job.state == "succeeded" and job.exit_code == 0, job
    on_node = lab.agents["r2"].job_log(job_id)
    assert on_node.count(b"tick ") == 40
    assert lab.log(job_id) == on_node
    assert [e.state for e in job.history].count("running") == 1


def test_a_node_away_past_its_lease_interrupts_its_jobs_and_requeues_those_with_retries(
    lab: Lab,
) -> None:
    """r1's agent is killed (-9) and stays away past the lease: the job with retries runs
    again on r2, but only after its first attempt was stopped on r1 by its shim (the agent is
    dead: the lease fence); the job without retries is interrupted, runs on, and runs again
    in the master's view once r1 is back."""
    assert lab.cli("node", "drain", "r2").returncode == 0
    script = (
        'if [ "$MLSM_NODE" = r2 ]; then echo "attempt $MLSM_ATTEMPT on r2 $(date +%s.%N)"; '
        'else while :; do echo "tick $(date +%s.%N)"; sleep 0.1; done; fi'
    )
    retried = lab.submit("--retries", "1", "--gpus", "1", "--", "sh", "-c", script)
    lost = lab.submit("--gpus", "1", "--", "sleep", "120")
    for jid in (retried, lost):
        assert lab.wait_job(jid, "running").node == "r1"
    assert lab.cli("node", "resume", "r2").returncode == 0
    killed_at = time.monotonic()
    kill(lab.agents["r1"].proc, signal.SIGKILL)

    gone = lab.wait_job(lost, timeout=LEASE_S * 4)
    # The lease runs from the node's last heartbeat, which may precede the kill by up to
    # one interval (and the agent's command long-poll also counts as contact).
    assert time.monotonic() - killed_at >= LEASE_S - HEARTBEAT_S
    assert gone.state == "interrupted", gone
    assert "r1" in gone.reason and "lost" in gone.reason, gone.reason

    done = lab.wait_job(retried, "succeeded", timeout=fence_after(0.0, LEASE_S) + LEASE_S * 2)
    assert (done.node, done.attempt) == ("r2", 1), done
    states = [e.state for e in done.history]
    assert states[states.index("interrupted") + 1] == "queued", states
    retry_log = lab.log(retried).splitlines()[-1]
    assert retry_log.startswith(b"attempt 1 on r2 "), retry_log
    retry_at = float(retry_log.split()[-1])
    ticks = [float(line.split()[1]) for line in lab.agents["r1"].job_log(retried).splitlines()
             if line.startswith(b"tick ")]  # fmt: skip
    assert ticks and max(ticks) < retry_at, (max(ticks), retry_at)  # never both at once

    # r1 comes back: the attempt its shim stopped is reported as such, and the job without
    # retries, which ran on, runs again in the master's view.
    agent = lab.start_agent("r1")
    back = lab.wait_job(lost, "running")
    assert (back.node, [e.state for e in back.history][-2:]) == ("r1", ["interrupted", "running"])
    wait_until(
        lambda: b"no contact with the master" in agent.job_log(retried),
        what="the shim's stop of the first attempt to be recorded on r1",
    )
    assert lab.job(retried).state == "succeeded"
    assert lab.cli("cancel", str(lost)).returncode == 0
    assert lab.wait_job(lost).state == "cancelled"
