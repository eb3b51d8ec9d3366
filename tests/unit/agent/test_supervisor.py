"""The job supervisor with real job processes, a real state file, shipper and link.

The master is a test double behind the link's httpx transport: it keeps job events and
appends log chunks by offset, as the real agent routes do, and can refuse events for a
while (503) to play a master that is away.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from agent.collectors import SimulatedProbe, make_probe
from agent.link import MasterLink
from agent.logship import LogShipper, send_through
from agent.runtimes.base import LOG_NAME, AdoptRecord, RuntimeContext, job_dir_for
from agent.runtimes.registry import Runtimes
from agent.state import AgentState
from agent.supervisor import JobSupervisor
from mlsm.wire import agent as w
from tests.support.ci import require
from tests.support.wait import wait_until_async

DEADLINE_S = 15.0
POLL_S = 0.02


@dataclass
class FakeMaster:
    """The master's ``events`` and ``logs`` routes."""

    events: list[w.JobReport] = field(default_factory=list)
    batches: list[list[int]] = field(default_factory=list)  # job ids of each events call
    logs: dict[int, bytearray] = field(default_factory=dict)
    log_at_end: dict[int, bytes] = field(default_factory=dict)  # the log when its end came
    refuse_events: bool = False
    on_end: Callable[[w.JobReport], Awaitable[None]] | None = None  # runs before the answer

    async def handle(self, request: httpx.Request) -> httpx.Response:
        route = request.url.path.rsplit("/", 1)[1]
        if route == "events":
            if self.refuse_events:
                body = w.encoder.encode(w.AgentError(code="unavailable", message="busy"))
                return httpx.Response(503, content=body)
            reports = w.decode_events(request.content).jobs
            self.batches.append([r.job_id for r in reports])
            for report in reports:
                self.events.append(report)
                if report.state != "running":
                    self.log_at_end[report.job_id] = bytes(self.logs.get(report.job_id, b""))
                    if self.on_end is not None:
                        await self.on_end(report)
            return httpx.Response(200, content=w.encoder.encode(w.Ack()))
        assert route == "logs", route
        chunk = w.decode_log_chunk(request.content)
        held = self.logs.setdefault(chunk.job_id, bytearray())
        if chunk.offset <= len(held):
            held += chunk.data[len(held) - chunk.offset :]
        ack = w.LogAck(job_id=chunk.job_id, next_offset=len(held))
        return httpx.Response(200, content=w.encoder.encode(ack))

    def states(self, job_id: int) -> list[str]:
        return [e.state for e in self.events if e.job_id == job_id]


@dataclass
class Node:
    master: FakeMaster
    supervisor: JobSupervisor
    state: AgentState
    probe: SimulatedProbe
    data: Path


def make_supervisor(
    data: Path, master: FakeMaster, stopping: asyncio.Event
) -> tuple[JobSupervisor, AgentState, SimulatedProbe]:
    link = MasterLink("http://master.test", data, transport=httpx.MockTransport(master.handle))
    state = AgentState(data / "state.json").load()
    probe, _ = make_probe("2xA100-80GB", data / "simulated-gpus.json", identity="n1")
    assert isinstance(probe, SimulatedProbe)
    ctx = RuntimeContext(node_name="n1", agent_data=data, simulated_gpus=True)

    async def runtimes_changed() -> None:
        return None

    supervisor = JobSupervisor(
        link=link,
        state=state,
        shipper=LogShipper(send_through(link), state=state),
        runtimes=Runtimes(ctx),
        probe=probe,
        data_dir=data,
        stopping=stopping,
        runtimes_changed=runtimes_changed,
    )
    return supervisor, state, probe


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    data = tmp_path / "agent"
    data.mkdir()
    master = FakeMaster()
    stopping = asyncio.Event()
    supervisor, state, probe = make_supervisor(data, master, stopping)
    tasks = [asyncio.create_task(supervisor.watch()), asyncio.create_task(supervisor.ship_logs())]
    yield Node(master, supervisor, state, probe, data)
    stopping.set()
    await asyncio.gather(*tasks)


def start(job_id: int, argv: list[str], **kw: object) -> w.StartJob:
    return w.StartJob(id=job_id, job=w.JobSpec(job_id=job_id, argv=argv, **kw))  # type: ignore[arg-type]


def busy_gpus(probe: SimulatedProbe) -> list[int]:
    return [g.index for g in probe.sample() if g.processes]


async def test_an_attempt_runs_and_its_end_is_reported_after_its_whole_log(node: Node) -> None:
    script = "for i in 1 2 3; do echo line $i; done; while [ ! -e go ]; do sleep 0.05; done"
    await node.supervisor.start(start(1, ["sh", "-c", script], gpus=[1]))
    assert node.master.states(1) == ["running"]
    assert [r.job_id for r in node.supervisor.reports()] == [1]
    assert [r.job_id for r in node.state.records()] == [1]
    assert busy_gpus(node.probe) == [1]

    (job_dir_for(node.data, 1) / "go").touch()
    await wait_until_async(
        lambda: len(node.master.states(1)) == 2, DEADLINE_S, "the job's end", poll_s=POLL_S
    )
    end = node.master.events[-1]
    on_node = (job_dir_for(node.data, 1) / LOG_NAME).read_bytes()
    assert (end.state, end.exit_code, end.log_size) == ("exited", 0, len(on_node))
    assert node.master.log_at_end[1] == on_node  # the whole log was there before the end
    assert on_node.endswith(b"line 1\nline 2\nline 3\n")
    assert node.supervisor.reports() == [] and node.state.records() == []
    assert busy_gpus(node.probe) == []


async def test_a_repeated_start_of_a_running_attempt_does_nothing(node: Node) -> None:
    await node.supervisor.start(start(2, ["sleep", "30"]))
    await node.supervisor.start(start(2, ["sleep", "30"]))
    assert node.master.states(2) == ["running"] and node.supervisor.running == 1
    await node.supervisor.cancel(
        w.CancelJob(id=3, job_id=2, attempt=0, reason="enough", end_kind="cancelled", grace_s=0)
    )
    await wait_until_async(
        lambda: len(node.master.states(2)) == 2,
        DEADLINE_S,
        "the cancelled job's end",
        poll_s=POLL_S,
    )
    assert node.master.events[-1].end_kind == "cancelled"


async def test_an_attempt_that_cannot_start_is_reported_at_once(node: Node) -> None:
    await node.supervisor.start(start(4, ["true"], env_kind="wasm"))
    (report,) = node.master.events
    assert (report.state, report.end_kind) == ("failed_to_start", "error")
    assert report.reason == "no wasm runtime on this node"
    assert node.supervisor.running == 0 and node.state.records() == []


async def test_an_ended_job_stays_running_for_heartbeats_until_the_master_has_its_end(
    node: Node,
) -> None:
    await node.supervisor.start(start(5, ["true"]))
    node.master.refuse_events = True
    await wait_until_async(
        lambda: node.supervisor.running == 0, DEADLINE_S, "the job to end here", poll_s=POLL_S
    )
    (listed,) = node.supervisor.reports()
    assert (listed.job_id, listed.state) == (5, "running")
    assert [r.job_id for r in node.state.records()] == [5]

    node.master.refuse_events = False
    await wait_until_async(
        lambda: node.master.states(5) == ["running", "exited"],
        DEADLINE_S,
        "the end delivered",
        poll_s=POLL_S,
    )
    assert node.supervisor.reports() == [] and node.state.records() == []


async def test_a_retry_started_while_the_last_attempts_end_is_sent_keeps_its_log(
    node: Node,
) -> None:
    """The master requeues a lost attempt and starts the retry here at once: the StartJob
    can arrive before the agent has seen the answer to the end it sent."""
    retry = start(
        8, ["sh", "-c", "echo attempt $MLSM_ATTEMPT; until [ -e go ]; do sleep 0.05; done"]
    )
    retry.job.attempt = 1

    async def requeue(report: w.JobReport) -> None:
        if (report.job_id, report.attempt) == (8, 0):
            await node.supervisor.start(retry)

    node.master.on_end = requeue
    await node.supervisor.start(start(8, ["sh", "-c", "echo attempt $MLSM_ATTEMPT; exit 3"]))
    await wait_until_async(
        lambda: node.master.states(8) == ["running", "exited", "running"],
        DEADLINE_S,
        "the retry",
        poll_s=POLL_S,
    )
    await wait_until_async(
        lambda: b"attempt 1" in node.master.logs.get(8, b""),
        DEADLINE_S,
        "the retry's log shipped",
        poll_s=POLL_S,
    )
    assert [(r.job_id, r.attempt) for r in node.state.records()] == [(8, 1)]

    (job_dir_for(node.data, 8) / "go").touch()
    await wait_until_async(
        lambda: len(node.master.states(8)) == 4, DEADLINE_S, "the retry's end", poll_s=POLL_S
    )
    on_node = (job_dir_for(node.data, 8) / LOG_NAME).read_bytes()
    assert node.master.log_at_end[8] == on_node and node.master.events[-1].log_size == len(on_node)
    assert node.state.records() == []


async def test_a_restarted_supervisor_adopts_what_its_state_file_lists(tmp_path: Path) -> None:
    data = tmp_path / "agent"
    data.mkdir()
    master = FakeMaster()
    stopping = asyncio.Event()
    first, state, _ = make_supervisor(data, master, stopping)
    await first.start(start(6, ["sh", "-c", "while [ ! -e go ]; do sleep 0.05; done"]))
    state.add(AdoptRecord(job_id=7, attempt=0, runtime="process", job_dir=str(data), started_at=1))

    again, _, _ = make_supervisor(data, master, stopping)  # the agent restarted
    again.adopt()
    assert [(r.job_id, r.state) for r in again.reports()] == [(6, "running"), (7, "running")]
    task = asyncio.create_task(again.watch())
    await wait_until_async(
        lambda: master.states(7) == ["lost"],
        DEADLINE_S,
        "the vanished attempt reported lost",
        poll_s=POLL_S,
    )
    (job_dir_for(data, 6) / "go").touch()
    await wait_until_async(
        lambda: master.states(6) == ["running", "exited"],
        DEADLINE_S,
        "the adopted job's end",
        poll_s=POLL_S,
    )
    stopping.set()
    await task


async def test_an_exit_is_seen_at_once_not_at_the_next_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shim's exit wakes the watch loop: with the poll an hour apart, the end still
    reaches the master."""
    monkeypatch.setattr("agent.supervisor.JOB_CHECK_S", 3600.0)
    data = tmp_path / "agent"
    data.mkdir()
    master, stopping = FakeMaster(), asyncio.Event()
    supervisor, _, _ = make_supervisor(data, master, stopping)
    task = asyncio.create_task(supervisor.watch())
    await supervisor.start(start(9, ["sh", "-c", "while [ ! -e go ]; do sleep 0.05; done"]))
    (job_dir_for(data, 9) / "go").touch()
    await wait_until_async(
        lambda: master.states(9) == ["running", "exited"], DEADLINE_S, "the end", poll_s=POLL_S
    )
    stopping.set()
    await task


async def test_a_job_started_on_a_node_at_rest_is_polled_again(node: Node) -> None:
    """With no job the watch loop waits without a timer; a start wakes it, so what only
    the poll enforces (the job's timeout) still acts, and the log of a job started then
    is shipped."""
    for _ in range(3):
        await asyncio.sleep(0)  # the loops reach their waits at rest
    script = "echo started; sleep 60"
    await node.supervisor.start(start(12, ["sh", "-c", script], timeout_s=0.5))
    await wait_until_async(
        lambda: len(node.master.states(12)) == 2, DEADLINE_S, "the timeout", poll_s=POLL_S
    )
    end = node.master.events[-1]
    assert (end.job_id, end.end_kind) == (12, "timeout")
    assert b"\nstarted\n" in node.master.logs[12]


async def test_ends_waiting_together_go_to_the_master_in_one_report(node: Node) -> None:
    node.master.refuse_events = True  # the master is away while three jobs end
    for job_id in (10, 11, 12):
        await node.supervisor.start(start(job_id, ["true"]))
    await wait_until_async(
        lambda: node.supervisor.running == 0, DEADLINE_S, "the jobs to end here", poll_s=POLL_S
    )
    node.master.refuse_events = False
    await wait_until_async(
        lambda: node.state.records() == [], DEADLINE_S, "the ends delivered", poll_s=POLL_S
    )
    assert sorted(node.master.batches[-1]) == [10, 11, 12]
    assert all(node.master.states(j)[-1] == "exited" for j in (10, 11, 12))


async def test_a_taken_start_runs_on_its_own_and_a_cancel_waits_for_it(node: Node) -> None:
    """``take`` returns before the job runs (the agent reads its next command at once); a
    cancel of that job right after it still finds the job, and stops it."""
    await node.supervisor.take(start(13, ["sleep", "30"]))
    await node.supervisor.take(start(14, ["sh", "-c", "echo fourteen"]))
    await node.supervisor.cancel(
        w.CancelJob(id=15, job_id=13, attempt=0, reason="no", end_kind="cancelled", grace_s=0)
    )
    await wait_until_async(
        lambda: (
            node.master.states(13) == ["running", "exited"]
            and node.master.states(14) == ["running", "exited"]
        ),
        DEADLINE_S,
        "both ends",
        poll_s=POLL_S,
    )
    assert [e.end_kind for e in node.master.events if e.job_id == 13][-1] == "cancelled"
    assert node.master.log_at_end[14].endswith(b"fourteen\n")


# ---------------------------------------------------------------- a full disk
FULL_DISK_SIZE = "1m"


@pytest.fixture
async def small_disk_node(tmp_path: Path) -> AsyncIterator[Node]:
    """A supervisor whose data dir is a real 1 MiB tmpfs (mounting needs root)."""
    require(os.geteuid() == 0, "a full disk is a real tmpfs, and mounting one needs root")
    data = tmp_path / "agent"
    data.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FULL_DISK_SIZE}", "tmpfs", str(data)], check=True
    )
    master = FakeMaster()
    stopping = asyncio.Event()
    supervisor, state, probe = make_supervisor(data, master, stopping)
    tasks = [asyncio.create_task(supervisor.watch()), asyncio.create_task(supervisor.ship_logs())]
    try:
        yield Node(master, supervisor, state, probe, data)
    finally:
        stopping.set()
        try:
            await asyncio.gather(*tasks)
        finally:
            subprocess.run(["umount", "-l", str(data)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the filesystem is full; returns it (unlink it to free the disk)."""
    path = disk / "filler"
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as fh:
        while chunk:
            try:
                fh.write(chunk)
            except OSError:
                chunk = chunk[: len(chunk) // 2]
    return path


async def test_a_start_the_full_disk_refuses_is_reported_lost_at_once(
    small_disk_node: Node,
) -> None:
    node = small_disk_node
    fill(node.data)
    await node.supervisor.start(start(5, ["true"]))
    (report,) = node.master.events  # not left "assigned" on the master for ever
    assert (report.state, report.end_kind) == ("lost", "lost")
    assert "No space left on device" in report.reason, report.reason
    assert node.supervisor.running == 0


async def test_state_saves_the_full_disk_refuses_stop_nothing(small_disk_node: Node) -> None:
    node = small_disk_node
    await node.supervisor.start(start(6, ["sh", "-c", "while [ ! -e go ]; do sleep 0.05; done"]))
    filler = fill(node.data)
    (job_dir_for(node.data, 6) / "go").touch()  # the disk has inodes left, not bytes
    await wait_until_async(
        lambda: len(node.master.states(6)) == 2, DEADLINE_S, "the end on a full disk"
    )
    filler.unlink()
    # The loop that reported that end (and saved the state on a full disk) still works.
    await node.supervisor.start(start(7, ["sh", "-c", "echo seven"]))
    await wait_until_async(lambda: len(node.master.states(7)) == 2, DEADLINE_S, "the next end")
    assert node.master.events[-1].exit_code == 0
    assert bytes(node.master.logs[7]).endswith(b"seven\n")
    assert [r.job_id for r in node.state.records()] == []
    assert AgentState(node.data / "state.json").load().records() == []  # saved once it could


async def test_a_job_that_ends_on_a_full_disk_still_has_its_exit_recorded(
    small_disk_node: Node,
) -> None:
    node = small_disk_node
    script = "while [ ! -e go ]; do sleep 0.05; done; exit 4"
    await node.supervisor.start(start(8, ["sh", "-c", script]))
    fill(node.data)
    (job_dir_for(node.data, 8) / "go").touch()
    await wait_until_async(lambda: len(node.master.states(8)) == 2, DEADLINE_S, "the end")
    end = node.master.events[-1]
    assert (end.state, end.exit_code) == ("exited", 4), end  # not "the supervisor died"
