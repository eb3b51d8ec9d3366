"""Many jobs at once, on SQLite and PostgreSQL: an agent's report that starts and ends
many, a pass's result that arrives after jobs left the queue, the submit's cached verdict,
submissions that arrive together.

The master applies a report with a constant number of queries (one for the rows, the
changes flushed together at commit, the commands it sends in one transaction), and each job still
ends exactly as the job-state rules say: exit 0 succeeded, exit 1 failed, cancelled on
the node, failed to start, lost (requeued while retries remain, else interrupted), each
with its event, in the report's order. The test speaks for the node itself (the agent
protocol over HTTP) against a master in this process, so it can count the statements.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
from sqlalchemy import event, select

from mlsm import PROTOCOL_VERSION
from mlsm.master import scheduler as sched
from mlsm.master.db.models import Job as JobRow
from mlsm.master.security import Principal
from mlsm.wire import agent as w
from mlsm.wire import api
from mlsm.wire.node import NodeInfo
from tests.integration.conftest import database_url_for
from tests.integration.lab import ADMIN, PASSWORD, Lab
from tests.support.inproc import InProcessMaster
from tests.support.wait import wait_until

N_JOBS = 15  # three of each end
N_TOGETHER = 40  # submissions sent at once
ASSIGN_DEADLINE_S = 30.0
#: Queries of job rows while a report is applied: its one, and room for a scheduling pass
#: that may run meanwhile (a row at a time would be one per job).
MAX_JOB_QUERIES = 3


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Statements:
    """The SQL the master's engine runs while :attr:`on` (from the master's thread)."""

    def __init__(self) -> None:
        self.on = False
        self.seen: list[tuple[str, bool]] = []
        self._lock = threading.Lock()

    def __call__(
        self, _conn: Any, _cur: Any, sql: str, _params: Any, _ctx: Any, many: bool
    ) -> None:
        if self.on:
            with self._lock:
                self.seen.append((" ".join(sql.split()).lower(), many))

    def count(self, prefix: str) -> int:
        return sum(sql.startswith(prefix) for sql, _ in self.seen)


@pytest.fixture(scope="module")
def lab(
    database_kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Lab, InProcessMaster, Statements]]:
    base = tmp_path_factory.mktemp(f"reports-{database_kind}")
    url = database_url_for(database_kind, request) or ""
    master = InProcessMaster(
        base / "master", admin=ADMIN, password=PASSWORD, database_url=url
    ).start()
    stmts = Statements()
    assert master.services is not None
    event.listen(master.services.db.engine.sync_engine, "before_cursor_execute", stmts)
    with Lab(base / "lab") as lab:
        master.adopt(lab)
        try:
            yield lab, master, stmts
        finally:
            lab.close()
            master.stop()


def _node(lab: Lab, name: str, labels: dict[str, str] | None = None) -> str:
    """A node joined and online (one heartbeat); its secret."""
    info = NodeInfo(cpu_cores=64, runtimes=["process"], job_account="nobody")
    reg = lab.agent_call(
        "register",
        w.RegisterRequest(
            protocol=PROTOCOL_VERSION,
            join_token=lab.join_token(),
            name=name,
            labels=labels or {},
            info=info,
        ),
        None,
    )
    assert reg.status_code == 200, reg.content
    secret = msgspec.msgpack.decode(reg.content, type=w.RegisterReply).node_secret
    assert lab.agent_call("heartbeat", w.Heartbeat(protocol=PROTOCOL_VERSION), secret).is_success
    return secret


def _starts(lab: Lab, secret: str, want: int) -> list[w.StartJob]:
    """The node's StartJob commands, acknowledged, once ``want`` of them are there."""
    got: dict[int, w.StartJob] = {}

    def all_there() -> bool:
        poll = w.CommandPoll(protocol=PROTOCOL_VERSION, wait_s=0, ack=[])
        r = lab.agent_call("commands", poll, secret)
        for cmd in w.decode_batch(r.content).commands:
            if isinstance(cmd, w.StartJob):
                got[cmd.job.job_id] = cmd
        return len(got) >= want

    wait_until(all_there, ASSIGN_DEADLINE_S, f"{want} StartJob commands")
    ack = w.CommandPoll(protocol=PROTOCOL_VERSION, wait_s=0, ack=[c.id for c in got.values()])
    assert lab.agent_call("commands", ack, secret).is_success
    return sorted(got.values(), key=lambda c: c.job.job_id)


def _end(i: int, jid: int, attempt: int) -> w.JobReport:
    """Job ``i`` of the report: the five kinds of end in turn."""
    kind = i % 5
    if kind == 0:
        return w.JobReport(job_id=jid, attempt=attempt, state="exited", exit_code=0)
    if kind == 1:
        return w.JobReport(job_id=jid, attempt=attempt, state="exited", exit_code=1)
    if kind == 2:
        return w.JobReport(
            job_id=jid,
            attempt=attempt,
            state="exited",
            end_kind="cancelled",
            exit_code=-15,
            reason="cancelled on the node",
        )
    if kind == 3:
        return w.JobReport(job_id=jid, attempt=attempt, state="failed_to_start", reason="no venv")
    return w.JobReport(job_id=jid, attempt=attempt, state="lost", reason="process vanished")


def test_a_report_of_many_ends_applies_every_rule_in_constant_statements(
    lab: tuple[Lab, InProcessMaster, Statements],
) -> None:
    lab_, _master, stmts = lab
    secret = _node(lab_, "many")
    ids = []
    for i in range(N_JOBS):
        # The lost ones: every other has a retry left (requeued), the rest end interrupted.
        retries = 1 if i % 5 == 4 and (i // 5) % 2 == 0 else 0
        reply = lab_.admin.jobs.submit(api.JobSubmit(argv=["true"], node="many", retries=retries))
        ids.append(reply.job.id)
    starts = _starts(lab_, secret, N_JOBS)
    assert [c.job.job_id for c in starts] == ids
    first_event = lab_.admin.events.list(limit=1).last_id

    running = [
        w.JobReport(job_id=c.job.job_id, attempt=c.job.attempt, state="running", pid=100 + i)
        for i, c in enumerate(starts)
    ]
    stmts.seen.clear()
    stmts.on = True
    r = lab_.agent_call("events", w.JobEvents(protocol=PROTOCOL_VERSION, jobs=running), secret)
    stmts.on = False
    assert r.status_code == 200, r.content
    assert stmts.count("select jobs.") <= MAX_JOB_QUERIES, stmts.seen
    assert all(lab_.admin.jobs.get(j).state == "running" for j in ids)

    ends = [_end(i, c.job.job_id, c.job.attempt) for i, c in enumerate(starts)]
    # A report about an attempt the master no longer wants asks the node to cancel it.
    stale = [w.JobReport(job_id=j, attempt=7, state="running", pid=1) for j in ids[:3]]
    stmts.seen.clear()
    stmts.on = True
    r = lab_.agent_call("events", w.JobEvents(protocol=PROTOCOL_VERSION, jobs=ends + stale), secret)
    stmts.on = False
    assert r.status_code == 200, r.content
    assert stmts.count("select jobs.") <= MAX_JOB_QUERIES, stmts.seen

    expect: dict[int, tuple[str, str]] = {}
    for i, jid in enumerate(ids):
        kind = i % 5
        if kind == 0:
            expect[jid] = ("succeeded", "exit code 0")
        elif kind == 1:
            expect[jid] = ("failed", "exit code 1")
        elif kind == 2:
            expect[jid] = ("cancelled", "cancelled on the node")
        elif kind == 3:
            expect[jid] = ("failed", "no venv")
        elif (i // 5) % 2 == 0:
            expect[jid] = ("queued", "")  # requeued as attempt 1; the pass places it again
        else:
            expect[jid] = ("interrupted", "process vanished")
    for jid, (state, reason) in expect.items():
        job = lab_.admin.jobs.get(jid)
        if state == "queued":
            assert job.attempt == 1 and job.state in ("queued", "assigned"), job
            continue
        assert (job.state, job.reason) == (state, reason), job
        assert job.exit_code == {0: 0, 1: 1, 2: -15}.get(ids.index(jid) % 5), job

    evs = [
        e
        for e in lab_.admin.events.list(after=first_event, limit=1000).events
        if e.job_id in expect and e.kind != "job.started"
    ]
    want_kinds: list[tuple[int, str]] = []
    for jid, (state, _) in expect.items():
        if state == "queued":
            want_kinds += [(jid, "job.interrupted"), (jid, "job.requeued")]
        else:
            want_kinds.append((jid, f"job.{state}"))
    assert [(e.job_id, e.kind) for e in evs] == want_kinds
    assert [e.id for e in evs] == sorted(e.id for e in evs)

    # The stale attempts' cancels reached the node's outbox, once each.
    poll = w.CommandPoll(protocol=PROTOCOL_VERSION, wait_s=0, ack=[])
    cmds = w.decode_batch(lab_.agent_call("commands", poll, secret).content).commands
    cancels = sorted((c.job_id, c.attempt) for c in cmds if isinstance(c, w.CancelJob))
    assert cancels == [(j, 7) for j in ids[:3]]


def test_a_pass_result_leaves_jobs_that_left_the_queue_alone(
    lab: tuple[Lab, InProcessMaster, Statements],
) -> None:
    """A pass over a large queue runs in a worker thread: a job cancelled meanwhile keeps
    its cancel reason and gets no expected start from the pass's (older) result."""
    lab_, master, _ = lab
    jid = lab_.admin.jobs.submit(api.JobSubmit(argv=["true"], labels={"rack": "none"})).job.id
    lab_.admin.jobs.cancel([jid])
    assert master.services is not None
    loop = master.services.jobs.scheduling
    late = sched.SchedResult(reasons={jid: "no online node is labelled rack=none"})
    late.expected_start[jid] = 1e12
    master.run(loop._apply(late, time.time()))
    job = lab_.admin.jobs.get(jid)
    assert (job.state, job.reason) == ("cancelled", f"cancelled by {ADMIN}"), job
    assert jid not in loop.table.expected


def test_a_pass_result_waiting_for_its_turn_leaves_a_job_cancelled_meanwhile_alone(
    lab: tuple[Lab, InProcessMaster, Statements],
) -> None:
    """The pass's result waits for the writers' turn while a cancel commits: the cancelled
    job keeps its cancel reason (the pass used to decide which reasons to write before
    its turn came, and wrote its own over the cancel's)."""
    lab_, master, _ = lab
    jid = lab_.admin.jobs.submit(api.JobSubmit(argv=["true"], labels={"rack": "none"})).job.id
    assert master.services is not None
    jobs = master.services.jobs
    loop = jobs.scheduling
    late = sched.SchedResult(reasons={jid: "no online node is labelled rack=none"})
    late.expected_start[jid] = 1e12
    admin = Principal(kind="user", name=ADMIN, role="superadmin")

    async def race() -> None:
        lock = loop.db._write_lock
        async with loop.db.transaction():  # another writer has its turn
            applying = asyncio.create_task(loop._apply(late, time.time()))
            deadline = time.monotonic() + 10
            while not getattr(lock, "_waiters", None):  # the result waits for the turn
                assert time.monotonic() < deadline, "the pass's result never waited"
                await asyncio.sleep(0.001)
            await jobs.cancel(admin, [jid])  # commits first (the same task: nested)
        await applying

    master.run(race())
    job = lab_.admin.jobs.get(jid)
    assert (job.state, job.reason) == ("cancelled", f"cancelled by {ADMIN}"), job
    assert jid not in loop.table.expected


def test_a_submit_to_a_lab_no_node_has_joined_says_so(tmp_path: Any) -> None:
    master = InProcessMaster(tmp_path / "master", admin=ADMIN, password=PASSWORD).start()
    with Lab(tmp_path / "lab") as lab_:
        master.adopt(lab_)
        try:
            reply = lab_.admin.jobs.submit(api.JobSubmit(argv=["true"]))
        finally:
            lab_.close()
            master.stop()
    assert reply.warning == "no node has joined the lab yet; the job waits until one does"


def test_the_never_fits_warning_follows_a_node_that_joins(
    lab: tuple[Lab, InProcessMaster, Statements],
) -> None:
    """The submit's "no node could ever run it" verdict is kept per job shape for a moment;
    a node that joins clears it, so the next submission of that shape is not warned."""
    lab_, _, _ = lab
    spec = api.JobSubmit(argv=["true"], labels={"pool": "late"})
    _node(lab_, "unlabelled")  # a lab with a node, none of it labelled pool=late
    first = lab_.admin.jobs.submit(spec)
    assert "pool=late" in first.warning, first
    _node(lab_, "late", {"pool": "late"})
    second = lab_.admin.jobs.submit(spec)
    assert second.warning == "", second
    lab_.admin.jobs.cancel([first.job.id, second.job.id])


def test_no_gpu_warning_while_a_node_with_gpus_has_not_said_which(
    lab: tuple[Lab, InProcessMaster, Statements],
) -> None:
    """A node that joined with a GPU probe but sent no heartbeat yet (or any node right
    after a master restart: GPU samples are not stored) may hold the GPUs a job asks for:
    a submit then is not warned that no node has them."""
    lab_, _, _ = lab
    spec = api.JobSubmit(argv=["true"], gpus=1, labels={"pool": "unsampled"})
    reg = lab_.agent_call(
        "register",
        w.RegisterRequest(
            protocol=PROTOCOL_VERSION,
            join_token=lab_.join_token(),
            name="unsampled",
            labels={"pool": "unsampled"},
            info=NodeInfo(runtimes=["process"], job_account="nobody", gpu_probe="nvml"),
        ),
        None,
    )
    assert reg.status_code == 200, reg.content
    reply = lab_.admin.jobs.submit(spec)
    assert reply.warning == "", reply
    lab_.admin.jobs.cancel([reply.job.id])


def test_concurrent_submissions_each_get_their_own_job_once_it_is_stored(
    lab: tuple[Lab, InProcessMaster, Statements],
) -> None:
    """Submissions that arrive together share a transaction (group commit); each caller
    is answered with its own job, and only once that job is committed. (On SQLite the
    request's audit row, written after the job's transaction took the one write lock,
    holds the answer back as well; on PostgreSQL only the job's own commit does.)"""
    lab_, master, _ = lab
    assert master.services is not None
    db = master.services.db

    async def stored(jid: int) -> str | None:
        async with db.session() as s:
            return (await s.execute(select(JobRow.name).where(JobRow.id == jid))).scalar()

    async def submit_all() -> list[tuple[str, int, str | None]]:
        headers = {"Authorization": f"Bearer {lab_.token}"}
        async with httpx.AsyncClient(base_url=lab_.url, headers=headers, timeout=60) as c:

            async def one(k: int) -> tuple[str, int, str | None]:
                name = f"together-{k}"
                r = await c.post(
                    "/api/v1/jobs",
                    json={"argv": ["true"], "name": name, "labels": {"rack": "none"}},
                )
                assert r.status_code == 201, r.text
                jid = int(r.json()["job"]["id"])
                # Read back at once, from the master's own database, as the caller sees it.
                return name, jid, master.run(stored(jid))

            return list(await asyncio.gather(*(one(k) for k in range(N_TOGETHER))))

    got = asyncio.run(submit_all())
    assert len({jid for _, jid, _ in got}) == N_TOGETHER
    for name, _jid, in_db in got:
        assert in_db == name
    lab_.admin.jobs.cancel([jid for _, jid, _ in got])
