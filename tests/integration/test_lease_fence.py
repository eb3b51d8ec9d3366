"""The lease fence with real processes: a node's link to the master cut for longer than the
lease (a proxy between agent r1 and the master that drops and black-holes connections).

A job the master retries elsewhere must never run beside its retry: r1's agent stops the
attempt after a lease without the master, and the master starts the retry only after the
fence. A job without retries runs on through the cut and ends as it really ended: its end,
reported when the link is back, replaces the ``interrupted`` the lease gave it, and an
attempt still running then runs again in the master's view.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlsm.master.services.jobs.lost import fence_after
from tests.integration.lab import DEADLINE_S, LEASE_S, Lab
from tests.support.cutproxy import CutProxy
from tests.support.wait import wait_until

#: From the cut to the retry's start at the latest: the fence, and a pass or two.
FENCE_S = fence_after(0.0, LEASE_S) + 10.0
# Attempt 0 ticks (with the time) until stopped; attempt 1 prints when it starts and ends.
TICKER = (
    'if [ "$MLSM_ATTEMPT" = 0 ]; then while :; do echo "tick $(date +%s.%N)"; sleep 0.1; done; '
    'fi; echo "retry $(date +%s.%N)"'
)


@pytest.fixture(scope="module")
def proxy(lab: Lab) -> Iterator[CutProxy]:
    p = CutProxy(int(lab.url.rsplit(":", 1)[1]))
    yield p
    p.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("fence")) as lab:
        lab.start_master()
        lab.start_agent("r2")
        yield lab


@pytest.fixture(scope="module")
def r1(lab: Lab, proxy: CutProxy) -> str:
    lab.start_agent("r1", master=proxy.url)
    return "r1"


@pytest.fixture
def on_r1(lab: Lab, r1: str, proxy: CutProxy) -> Iterator[None]:
    """New jobs land on r1 (r2 drained) until the test resumes r2; the link is whole after."""
    assert lab.cli("node", "drain", "r2").returncode == 0
    yield
    proxy.restore()
    lab.cli("node", "resume", "r2")
    lab.wait_node_state(r1, "online")


def _times(log: bytes, word: str) -> list[float]:
    return [float(t) for t in re.findall(rf"^{word} (\d+\.\d+)$".encode(), log, re.M)]


def test_a_cut_past_the_lease_stops_the_attempt_before_its_retry_starts(
    lab: Lab, proxy: CutProxy, on_r1: None
) -> None:
    jid = lab.submit("--retries", "1", "--gpus", "1", "--", "sh", "-c", TICKER)
    assert lab.wait_job(jid, "running").node == "r1"
    assert lab.cli("node", "resume", "r2").returncode == 0
    proxy.cut()

    def requeued() -> str | None:
        j = lab.job(jid)
        return j.reason if j.state == "queued" and j.attempt == 1 else None

    reason = wait_until(requeued, LEASE_S * 3, f"job {jid} to be requeued")
    assert "r1 was lost" in reason and "starts after" in reason, reason

    done = lab.wait_job(jid, "succeeded", timeout=FENCE_S)
    assert (done.node, done.attempt) == ("r2", 1), done
    on_r1 = lab.agents["r1"].job_log(jid)
    (retry_at,) = _times(lab.agents["r2"].job_log(jid), "retry")
    ticks = _times(on_r1, "tick")
    assert ticks and max(ticks) < retry_at, (max(ticks), retry_at)
    assert b"no contact with the master" in on_r1  # r1's agent stopped it, and said why

    proxy.restore()
    lab.wait_node_state("r1", "online")
    # r1 reports the stopped attempt: the job keeps the end of its retry.
    state = lab.agents["r1"].data_dir / "state.json"
    wait_until(
        lambda: not json.loads(state.read_text()).get("jobs"), DEADLINE_S, "r1 to report its end"
    )
    final = lab.job(jid)
    assert (final.state, final.attempt, final.node) == ("succeeded", 1, "r2"), final


def test_a_job_without_retries_ends_as_it_really_ended_after_a_cut(
    lab: Lab, proxy: CutProxy, on_r1: None, tmp_path: Path
) -> None:
    flag_a, flag_b = tmp_path / "a", tmp_path / "b"
    ends = lab.submit(
        "--gpus", "1", "--", "sh", "-c",
        f'while [ ! -e {flag_a} ]; do sleep 0.1; done; echo done-a; exit 3',
    )  # fmt: skip
    runs_on = lab.submit(
        "--gpus", "1", "--", "sh", "-c",
        f'while [ ! -e {flag_b} ]; do sleep 0.1; done; echo done-b',
    )  # fmt: skip
    for jid in (ends, runs_on):
        assert lab.wait_job(jid, "running").node == "r1"
    proxy.cut()
    for jid in (ends, runs_on):
        lost = lab.wait_job(jid, "interrupted", timeout=LEASE_S * 3)
        assert "r1 was lost" in lost.reason, lost
    flag_a.touch()  # one ends while r1 is away; the other runs on
    wait_until(lambda: b"done-a" in lab.agents["r1"].job_log(ends), DEADLINE_S, "job to end")

    proxy.restore()
    ended = lab.wait_job(ends, "failed")
    assert (ended.exit_code, ended.reason) == (3, "exit code 3"), ended
    states = [e.state for e in ended.history]
    # Its end replaces the interruption, or ends it once a heartbeat that still listed the
    # attempt (its end not yet sent) has made it run again.
    assert states[-1] == "failed" and "interrupted" in states[-3:], states

    back = lab.wait_job(runs_on, "running")
    assert [e.state for e in back.history][-2:] == ["interrupted", "running"], back.history
    assert back.node == "r1"
    flag_b.touch()
    done = lab.wait_job(runs_on, "succeeded")
    assert done.exit_code == 0 and lab.log(runs_on).endswith(b"done-b\n")
