"""The job table: the jobs that are not final, in memory, and the state changes of a job row.

The database is the source of truth across restarts; the table mirrors what the hot paths
need without a query: the queue (``pending``: queued job id -> scheduler input, and each
waiting job's ``reasons``; ``fenced``: requeued jobs that may not start yet, see
:meth:`JobTable.interrupt`), the jobs placed on nodes (``active``), and the final states
seen lately (``final_states``, for dependencies and log followers). Every transition of a
job changes its row and the table together, through the methods here, so the two never
disagree: :meth:`JobTable.queue`, :meth:`~JobTable.place`, :meth:`~JobTable.run`,
:meth:`~JobTable.finish`, :meth:`~JobTable.interrupt` (requeued while retries remain) and
:meth:`~JobTable.requeue` (a policy's requeue), :meth:`~JobTable.preempt` (requeued; uses
no retry). An attempt that ran leaves a :class:`~mlsm.master.db.models.JobRun` row when it
ends (the facts usage reports read).

Each transition also records its event (:mod:`mlsm.master.services.events.record`) in the
transaction that changes the row: ``job.started``, ``job.<final state>``,
``job.interrupted`` and ``job.requeued``.

The lifecycle service, the scheduling loop and the log follower share one table.

About 430 lines, as one piece: every state change of a job row is here, beside the
in-memory view it must keep equal (queue, fence, placements, final states), so that no
transition can change one without the other.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import object_session

from mlsm.master import scheduler as sched
from mlsm.master.db.models import Job as JobRow
from mlsm.master.db.models import JobRun
from mlsm.master.services.events.record import record_for
from mlsm.master.services.joblogs import LogStore
from mlsm.master.services.jobs.fairshare import FairShare
from mlsm.wire.api import JobState
from mlsm.wire.events import EventKind

#: States of a job that holds, or waits for, a place on a node.
OPEN_STATES = ("queued", "assigned", "running")
FINAL_EVENTS: dict[str, EventKind] = {
    "succeeded": "job.succeeded",
    "failed": "job.failed",
    "cancelled": "job.cancelled",
    "interrupted": "job.interrupted",
}

#: How a job's reason starts while it is being stopped for a preemption (then: "preempted
#: by job N"); kept in its row, so a restarted master still requeues it when it ends.
PREEMPTING = "preempting: "

#: What usage needs to know of a node: (name, GPU model of the given indices, labels).
NodeFacts = Callable[[int, tuple[int, ...]], tuple[str, str, dict[str, str]]]


@dataclass(slots=True)
class Active:
    """A job placed on a node (assigned or running)."""

    job_id: int
    user: str
    node_id: int
    gpus: tuple[int, ...]
    attempt: int
    state: str
    assigned_at: float
    gpu_count: int
    array_parent: int | None
    missed: int = 0  # full reports in a row from its node that did not mention it
    cpus: float = 0.0  # reserved CPUs (0: none asked for)
    mem: int = 0  # reserved memory in bytes
    code: str = ""  # the code snapshot its node may fetch for it
    time_limit_s: float = 0.0  # its --timeout (0: none)
    preemptible: bool = False
    started_at: float = 0.0  # 0 until the agent says it runs
    stopping: bool = False  # asked to stop for a preemption

    def ends_at(self, default_limit_s: float) -> float:
        """When it ends at the latest, by its time limit (or the lab's default)."""
        limit = self.time_limit_s or default_limit_s
        if not limit:
            return float("inf")
        return (self.started_at or self.assigned_at) + limit


def retries_left(r: JobRow) -> bool:
    """Whether losing the current attempt requeues the job (attempts lost to preemption
    used none of its retries)."""
    return r.attempt - (r.preemptions or 0) < r.retries


def event(state: str, message: str = "") -> list[Any]:
    """One entry of a job row's history."""
    return [time.time(), state, message]


def pending_of(r: JobRow) -> sched.PendingJob:
    """The scheduler's view of a queued job."""
    spec = r.spec
    return sched.PendingJob(
        id=r.id,
        user=r.user,
        priority=r.priority,
        submitted_at=r.created_at,
        gpus=r.gpus,
        gpu_mem_bytes=spec.gpu_mem_bytes,
        cpus=spec.cpus,
        mem_bytes=spec.mem_bytes,
        node=spec.node,
        labels=spec.labels,
        datasets=tuple(spec.datasets),
        env_kind=spec.env_kind,
        code=bool(spec.code or spec.project),
        project=f"{r.user}/{spec.project}" if spec.project else "",
        deps=tuple((d.job_id, d.wanted) for d in spec.after),
        array_parent=r.array_parent,
        array_throttle=spec.array_throttle,
        time_limit_s=spec.timeout_s,
        preemptible=spec.preemptible,
    )


#: Ids per ``IN (...)`` list: well under SQLite's and asyncpg's bound-parameter limits.
ROWS_PER_QUERY = 5000


async def rows_by_id(s: AsyncSession, ids: Iterable[int]) -> dict[int, JobRow]:
    """Job rows by id, loaded into ``s`` with one query per :data:`ROWS_PER_QUERY` ids (not
    one per row: a report or a pass may touch thousands)."""
    want = sorted(set(ids))
    out: dict[int, JobRow] = {}
    for i in range(0, len(want), ROWS_PER_QUERY):
        chunk = want[i : i + ROWS_PER_QUERY]
        for r in (await s.execute(select(JobRow).where(JobRow.id.in_(chunk)))).scalars():
            out[r.id] = r
    return out


def queued_since(r: JobRow) -> float:
    """When the job's current attempt joined the queue: its last "queued" event."""
    for e in reversed(r.history or []):
        if len(e) > 1 and e[1] == "queued":
            return float(e[0])
    return r.created_at


def _active_of(r: JobRow, node_id: int, gpus: tuple[int, ...], since: float) -> Active:
    return Active(
        r.id,
        r.user,
        node_id,
        gpus,
        r.attempt,
        r.state,
        since,
        r.gpus,
        r.array_parent,
        cpus=float(r.spec.cpus),
        mem=r.spec.mem_bytes,
        code=r.spec.code,
        time_limit_s=r.spec.timeout_s,
        preemptible=r.spec.preemptible,
        started_at=(r.started_at or 0.0) if r.state == "running" else 0.0,
        stopping=r.reason.startswith(PREEMPTING),
    )


class JobTable:
    def __init__(self, fair_share: FairShare, logs: LogStore) -> None:
        self.fair_share = fair_share
        self.logs = logs
        self.pending: dict[int, sched.PendingJob] = {}
        #: Requeued jobs that wait out a fence (their row's ``not_before``) before the
        #: scheduler sees them: job id -> (not before, scheduler input).
        self.fenced: dict[int, tuple[float, sched.PendingJob]] = {}
        self.reasons: dict[int, str] = {}
        #: Jobs queued since the scheduling loop's last pass (it takes and clears them).
        self.fresh: set[int] = set()
        self.active: dict[int, Active] = {}
        self.final_states: dict[int, str] = {}
        #: Told the id of every job that reaches a final state (the code store unpins).
        self.on_final: Callable[[int], None] | None = None
        #: Queued job -> when the latest pass expects it to start (its reservation).
        self.expected: dict[int, float] = {}
        #: Node facts for the usage rows (the node registry's, set by the container).
        self.node_facts: NodeFacts = lambda node_id, gpus: ("", "", {})

    def load(self, rows: Iterable[JobRow], node_ids: Mapping[str, int]) -> None:
        """After a restart: the open rows (``node_ids``: node name -> id; a node that is gone
        maps to -1, so its jobs are found lost)."""
        for r in rows:
            if r.state == "queued":
                self.reasons[r.id] = r.reason
                self.queue(r)
            else:
                node_id = node_ids.get(r.node or "", -1)
                since = r.started_at or r.created_at
                self.active[r.id] = _active_of(r, node_id, tuple(r.gpu_indices or ()), since)

    def charge_usage(self, now: float) -> None:
        """Fair share up to ``now``, before the set of running jobs changes."""
        self.fair_share.charge(now, self.active.values())

    def on_node(self, node_id: int) -> list[Active]:
        return [a for a in self.active.values() if a.node_id == node_id]

    def gpu_holders(self) -> dict[int, dict[int, list[int]]]:
        """node id -> GPU index -> the jobs placed on it."""
        out: dict[int, dict[int, list[int]]] = {}
        for a in self.active.values():
            per = out.setdefault(a.node_id, {})
            for g in a.gpus:
                per.setdefault(g, []).append(a.job_id)
        return out

    def reason(self, r: JobRow) -> str:
        """Why a job waits (the latest pass's words, not yet written) or why it ended."""
        return self.reasons.get(r.id, r.reason) if r.state == "queued" else r.reason

    # ---------------------------------------------------------------- transitions
    def queue(self, r: JobRow) -> None:
        """A row that is queued now (submitted, released, or requeued) waits for a pass, or
        first for its fence (:meth:`release_fenced`)."""
        if r.not_before is not None and r.not_before > time.time():
            self.fenced[r.id] = (r.not_before, pending_of(r))
            self.pending.pop(r.id, None)
            return
        self.fenced.pop(r.id, None)
        self.pending[r.id] = pending_of(r)
        self.fresh.add(r.id)

    def release_fenced(self, now: float) -> bool:
        """Fenced jobs whose time has come join the queue; whether any did."""
        due = [jid for jid, (until, _) in self.fenced.items() if until <= now]
        for jid in due:
            self.pending[jid] = self.fenced.pop(jid)[1]
        return bool(due)

    def unqueue(self, job_id: int) -> None:
        """The job no longer waits (held, placed, ended)."""
        self.pending.pop(job_id, None)
        self.fenced.pop(job_id, None)
        self.reasons.pop(job_id, None)
        self.expected.pop(job_id, None)

    def place(self, r: JobRow, node: str, node_id: int, gpus: tuple[int, ...], now: float) -> None:
        r.state = "assigned"
        r.node = node
        r.gpu_indices = list(gpus)
        r.reason = ""
        where = f"on {node} GPUs {list(gpus)}" if gpus else f"on {node}"
        r.history = [*r.history, event("assigned", where)]
        r.not_before = None
        self.unqueue(r.id)
        self.active[r.id] = _active_of(r, node_id, gpus, now)

    def run(self, r: JobRow, a: Active, started_at: float, pid: int | None) -> None:
        """The agent says an assigned job started; its GPUs are charged from now on."""
        r.state = "running"
        r.started_at = started_at
        r.history = [*r.history, event("running", f"pid {pid}" if pid else "")]
        record_for(r, "job.started", f"started on {r.node}", gpus=list(r.gpu_indices or ()))
        self.charge_usage(time.time())
        a.state = "running"
        a.started_at = started_at

    def resume(self, r: JobRow, node_id: int, now: float, why: str) -> None:
        """An attempt given up with its node turned out to run on: the job runs again
        there (the node came back before anything else could be placed on it)."""
        self.charge_usage(now)
        r.state = "running"
        r.reason = ""
        r.ended_at = None
        r.exit_code = None
        r.history = [*r.history, event("running", why)]
        self.final_states.pop(r.id, None)
        a = _active_of(r, node_id, tuple(r.gpu_indices or ()), now)
        self.active[r.id] = a
        self.logs.notify(r.id)

    def correct_end(
        self,
        r: JobRow,
        state: JobState,
        reason: str,
        ended_at: float,
        exit_code: int | None,
        node: str,
    ) -> None:
        """A job ``interrupted`` when ``node`` was lost learns, now that the node is back,
        how its attempt really ended. Its usage row is the caller's to correct."""
        r.state = state
        r.reason = reason
        r.ended_at = ended_at
        if exit_code is not None:
            r.exit_code = exit_code
        r.history = [
            *r.history,
            event(state, f"node {node} is back and says the attempt ended: {reason}"),
        ]
        record_for(
            r,
            FINAL_EVENTS[state],
            f"{state}: {reason} (reported late: node {node} was away)",
            state=state,
            reason=reason,
            exit_code=r.exit_code,
        )
        self.final_states[r.id] = state
        self.logs.notify(r.id)

    def _record_run(self, r: JobRow, state: str, ended_at: float) -> None:
        """The usage facts of the attempt that ends now, if it ran (added to the row's
        session, so they commit with the job's end)."""
        a = self.active.get(r.id)
        if a is None or a.state != "running" or not r.started_at:
            return
        session = object_session(r)
        if session is None:  # pragma: no cover - every transition runs in a transaction
            return
        node, model, labels = self.node_facts(a.node_id, a.gpus)
        session.add(
            JobRun(
                job_id=r.id,
                attempt=r.attempt,
                user=r.user,
                node=node or r.node or "",
                node_id=a.node_id,
                gpu_indices=list(a.gpus),
                gpu_model=model,
                node_labels=dict(labels),
                queued_at=queued_since(r),
                started_at=r.started_at,
                ended_at=max(ended_at, r.started_at),
                state=state,
            )
        )

    def finish(
        self, r: JobRow, state: JobState, reason: str, now: float, exit_code: int | None = None
    ) -> None:
        self.charge_usage(time.time())  # charge its GPUs up to its end, before release
        self._record_run(r, state, now)
        r.state = state
        r.reason = reason
        r.ended_at = now
        if exit_code is not None:
            r.exit_code = exit_code
        r.history = [*(r.history or []), event(state, reason)]
        record_for(
            r,
            FINAL_EVENTS[state],
            f"{state}: {reason}" if reason else state,
            state=state,
            reason=reason,
            exit_code=r.exit_code,
        )
        self.final_states[r.id] = state
        if self.on_final is not None:
            self.on_final(r.id)
        self.active.pop(r.id, None)
        self.unqueue(r.id)
        self.logs.notify(r.id)

    def interrupt(self, r: JobRow, why: str, now: float, fence: float | None = None) -> None:
        """Lost to an infrastructure fault: requeued as a new attempt while retries remain
        (attempts lost to preemption used none).

        ``fence``: the lost attempt may still run on a node the master cannot reach until
        then (that node stops it by then: :attr:`~mlsm.wire.agent.JobSpec.stop_when_lost`),
        so the new attempt starts no sooner; kept in the row, a restarted master keeps it."""
        if not retries_left(r):
            self.finish(r, "interrupted", why, now)
            return
        r.history = [*r.history, event("interrupted", why)]
        record_for(r, "job.interrupted", f"interrupted: {why}", state="interrupted", reason=why)
        r.not_before = fence if fence is not None and fence > now else None
        self._requeue(r, why, f"requeued after interruption: {why}", now)
        if r.not_before is not None:
            clock = time.strftime("%H:%M:%S", time.localtime(r.not_before))
            self.reasons[r.id] = (
                f"{r.reason}; starts after {clock}, when the lost attempt has surely stopped"
            )

    def requeue(self, r: JobRow, why: str, now: float) -> None:
        """Stopped by a lab policy that requeues (the idle-GPU one): a new attempt, whatever
        its retries."""
        self._requeue(r, why, f"requeued: {why}", now)

    def _requeue(self, r: JobRow, why: str, reason: str, now: float) -> None:
        self.charge_usage(time.time())
        self._record_run(r, "interrupted", now)
        r.history = [*r.history, event("queued", f"requeued as attempt {r.attempt + 1}")]
        record_for(r, "job.requeued", f"requeued as attempt {r.attempt + 1}: {why}", reason=why)
        r.attempt += 1
        r.state = "queued"
        r.node = None
        r.gpu_indices = []
        r.reason = reason
        r.idle_warned_at = None  # a new attempt starts with a clean slate
        self.active.pop(r.id, None)
        self.queue(r)
        self.logs.notify(r.id)

    def preempt(self, r: JobRow, why: str, now: float) -> None:
        """Stopped for a preemption: requeued as a new attempt that uses none of its
        retries; ``why`` ("preempted by job N") is its reason while it waits."""
        self.charge_usage(time.time())
        self._record_run(r, "interrupted", now)
        r.history = [
            *r.history,
            event("interrupted", why),
            event("queued", f"requeued as attempt {r.attempt + 1} (a preemption uses no retry)"),
        ]
        record_for(r, "job.interrupted", f"interrupted: {why}", state="interrupted", reason=why)
        record_for(r, "job.requeued", f"requeued as attempt {r.attempt + 1}: {why}", reason=why)
        r.attempt += 1
        r.preemptions = (r.preemptions or 0) + 1
        r.idle_warned_at = None
        r.state = "queued"
        r.node = None
        r.gpu_indices = []
        r.reason = why
        self.active.pop(r.id, None)
        self.queue(r)
        self.logs.notify(r.id)
