"""The job lifecycle: submit, views, cancel and release, what agents report, lost and removed
nodes.

State machine: queued -> assigned (StartJob sent) -> running (agent says so) -> succeeded |
failed | cancelled; ``interrupted`` when the node is lost or the agent cannot re-adopt the
job, requeued as a new attempt while retries remain; ``held`` until released. The
transitions themselves are the job table's (:mod:`~mlsm.master.services.jobs.table`), the
placements the scheduling loop's (:mod:`~mlsm.master.services.jobs.scheduling`).

About 470 lines, as one piece: what happens to a job after submit (cancel, hold, release,
the agents' reports, lost and removed nodes) is one state machine, read best in one place.
Commands on selections and existing jobs (bulk cancel and submit, edit, restart, dry runs)
are :mod:`~mlsm.master.services.jobs.commands`, built on the transitions here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy import func, select

from mlsm.config import Settings
from mlsm.errors import Conflict, NotFound, PermissionDenied, ValidationError
from mlsm.master.db import Database
from mlsm.master.db.models import Job as JobRow
from mlsm.master.jobspec import Submission, SubmitPolicy, build_submission
from mlsm.master.security import Principal
from mlsm.master.services.events.record import record_for
from mlsm.master.services.jobs.launch import KILL_GRACE_S, Launcher
from mlsm.master.services.jobs.limits import JobAsk, check_limits
from mlsm.master.services.jobs.lost import end_of, fence_after, lost_reason, settle_late
from mlsm.master.services.jobs.scheduling import SchedulingLoop
from mlsm.master.services.jobs.table import (
    OPEN_STATES,
    PREEMPTING,
    Active,
    JobTable,
    event,
    pending_of,
    rows_by_id,
)
from mlsm.master.services.jobs.views import job_view, may_see_private
from mlsm.master.services.livenode import LiveNode, NodeEvents
from mlsm.master.services.nodes import NodeRegistry
from mlsm.master.services.settings import SettingsService
from mlsm.wire import agent as w
from mlsm.wire import api

if TYPE_CHECKING:
    from mlsm.master.services.code import CodeStore, Projects

log = logging.getLogger("mlsm.master.jobs")

ASSIGN_GRACE_S = 60.0
REMOVE_ACK_WAIT_S = 5.0  # how long node removal waits for the agent to take its cancels
REMOVE_ACK_POLL_S = 0.05  # an assigned job the agent has not mentioned for this long is re-sent
MISSED_REPORTS_LOST = 2  # full reports in a row without a running job: the agent lost it
REQUEUE_MARK = "requeueing: "  # a running job's reason while a policy stops it to requeue it


def held_by(name: str) -> str:
    """The reason a held job shows (``mlsm jobs``, ``job show``)."""
    return f"held by {name}"


class JobService(NodeEvents):
    def __init__(
        self,
        db: Database,
        settings: Settings,
        nodes: NodeRegistry,
        table: JobTable,
        policy: SubmitPolicy,
        launcher: Launcher,
        scheduling: SchedulingLoop,
        code: CodeStore,
        projects: Projects,
        lab_settings: SettingsService,
    ) -> None:
        self.lab_settings = lab_settings
        self.db = db
        self.settings = settings
        self.nodes = nodes
        self.table = table
        self.policy = policy
        self.launcher = launcher
        self.scheduling = scheduling
        self.code = code
        self.code_projects = projects
        self._inserts: list[tuple[list[list[JobRow]], asyncio.Future[None]]] = []
        self._inserter: asyncio.Task[None] | None = None

    async def load(self) -> None:
        """The open jobs into the job table (after the nodes are loaded)."""
        async with self.db.session() as s:
            rows = (await s.execute(select(JobRow).where(JobRow.state.in_(OPEN_STATES)))).scalars()
            node_ids = {n.name: n.id for n in self.nodes.nodes.values()}
            self.table.load(rows.all(), node_ids)

    # ---------------------------------------------------------------- submit
    def check_limits(self, ask: JobAsk, p: Principal, before: JobAsk | None = None) -> JobAsk:
        """The lab's limits on a job's GPUs, time limit and priority (one rule for submit
        and edit: :func:`~mlsm.master.services.jobs.limits.check_limits`)."""
        return check_limits(ask, p, self.lab_settings.current, before=before)

    def within_limits(self, p: Principal, body: api.JobSubmit) -> api.JobSubmit:
        """``body`` checked against the lab's limits, with the lab's default time limit
        when it asks for none (every way a job is submitted goes through here)."""
        ask = self.check_limits(JobAsk(body.gpus, body.priority, body.timeout_s), p)
        if ask.time_limit_s != body.timeout_s:  # the lab's default time limit
            body = msgspec.structs.replace(body, timeout_s=ask.time_limit_s)
        return body

    async def submit(self, p: Principal, body: api.JobSubmit) -> api.SubmitReply:
        if body.kind == "session" and not body.timeout_s:
            body = msgspec.structs.replace(body, timeout_s=self.settings.session_time_limit)
        body = self.within_limits(p, body)
        sub = build_submission(body, p, nodes=self.nodes.by_name, policy=self.policy)
        code = await self.code.check_access(p, body.code) if body.code else None
        if body.project:
            await self.code_projects.check_use(p, body.project)
        if sub.spec.after:
            missing = await self.missing_jobs([d.job_id for d in sub.spec.after])
            if missing:
                raise ValidationError(f"--after: no job {missing[0]}", path="after")
        rows = self.rows_for(p, body, sub, time.time())
        await self._insert([rows])
        if code is not None:
            await self.code.attach(body.code, code, [r.id for r in rows])
        self.enqueue(rows)
        return api.SubmitReply(
            job=self._view(rows[0], p),
            ids=[r.id for r in rows],
            warning=self.scheduling.never_fits(pending_of(rows[0])),
        )

    async def missing_jobs(self, ids: list[int]) -> list[int]:
        """Which of ``ids`` name no job (``--after`` must name existing jobs)."""
        async with self.db.session() as s:
            found = set((await s.execute(select(JobRow.id).where(JobRow.id.in_(ids)))).scalars())
        return [i for i in ids if i not in found]

    @staticmethod
    def rows_for(p: Principal, body: api.JobSubmit, sub: Submission, now: float) -> list[JobRow]:
        """One submission's rows (a row per array task), not yet stored."""
        state = "held" if body.hold else "queued"
        return [
            JobRow(
                name=body.name or (body.argv[0].rsplit("/", 1)[-1])[:256],
                user=p.name,
                state=state,
                spec=sub.spec,
                priority=body.priority,
                gpus=body.gpus,
                created_at=now,
                retries=body.retries,
                array_index=idx,
                history=[event(state, "submitted")],
                reason=held_by(p.name) if body.hold else "waiting for the scheduler",
            )
            for idx in sub.indices
        ]

    def enqueue(self, rows: list[JobRow]) -> None:
        """Stored rows that are queued join the scheduler's queue (held ones wait)."""
        queued = [r for r in rows if r.state == "queued"]
        for r in queued:
            self.table.queue(r)
        if queued:
            self.scheduling.queued()

    async def _insert(self, submissions: list[list[JobRow]]) -> None:
        """Insert submissions' rows (each a job, or an array's tasks) in one transaction;
        returns once committed.

        Submissions that arrive while a batch is being written are committed together in
        the next transaction (group commit), so a burst of submissions costs a few
        transactions instead of one each, and every caller still returns only after its
        jobs are durable. One call's submissions are never split between transactions
        (a bulk submission is all or nothing).
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inserts.append((submissions, done))
        if self._inserter is None or self._inserter.done():
            self._inserter = asyncio.create_task(self._write_inserts())
        await done

    async def _write_inserts(self) -> None:
        while self._inserts:
            batch = self._inserts
            self._inserts = []
            try:
                async with self.db.transaction() as s:
                    for submissions, _ in batch:
                        for rows in submissions:
                            first = rows[0]
                            s.add(first)
                            if first.array_index is not None:  # tasks name the first as parent
                                await s.flush()
                                first.array_parent = first.id
                                for r in rows[1:]:
                                    r.array_parent = first.id
                            s.add_all(rows[1:])
                    await s.flush()
                    for submissions, _ in batch:  # ids are known now; same transaction
                        for rows in submissions:
                            for r in rows:
                                record_for(r, "job.submitted", "submitted", gpus=r.gpus)
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    # ---------------------------------------------------------------- views
    def _view(self, r: JobRow, p: Principal) -> api.Job:
        logs = self.table.logs
        node = self.nodes.by_name.get(r.node) if r.node else None
        disk = node.info.disk if node is not None else None
        return job_view(
            r,
            reason=self.table.reason(r),
            log_size=logs.size(r.id, r.attempt) if r.started_at or r.attempt else 0,
            show_env=may_see_private(p, r),
            data_dir=disk.data_dir if disk is not None else "",
            expected_start=self.table.expected.get(r.id),
        )

    async def query(
        self,
        p: Principal,
        *,
        state: str | None,
        user: str | None,
        node: str | None,
        all: bool,
        limit: int,
        array: int | None = None,
    ) -> api.JobList:
        q = select(JobRow)
        cq = select(func.count()).select_from(JobRow)
        conds: list[Any] = []
        if array is not None:
            conds.append(JobRow.array_parent == array)
        if state:
            conds.append(JobRow.state.in_(api.parse_job_states(state)))
        elif not all and array is None:
            conds.append(JobRow.state.in_(("queued", "held", "assigned", "running")))
        if user:
            conds.append(JobRow.user == user)
        if node:
            conds.append(JobRow.node == node)
        for c in conds:
            q = q.where(c)
            cq = cq.where(c)
        async with self.db.session() as s:
            total = int((await s.execute(cq)).scalar_one())
            rows = (await s.execute(q.order_by(JobRow.id.desc()).limit(limit))).scalars().all()
        return api.JobList(jobs=[self._view(r, p) for r in reversed(rows)], total=total)

    async def get(self, p: Principal, job_id: int) -> api.Job:
        async with self.db.session() as s:
            r = await s.get(JobRow, job_id)
        if r is None:
            raise NotFound(f"no job {job_id}")
        return self._view(r, p)

    # ---------------------------------------------------------------- cancel and release
    @staticmethod
    def why_not_cancel(p: Principal, r: JobRow | None) -> str:
        """Why ``p`` may not cancel the job ("" when they may)."""
        if r is None:
            return "no such job"
        if r.user != p.name and not p.is_admin:
            return "not your job"
        if r.state in api.FINAL_STATES:
            return f"already {r.state}"
        return ""

    async def cancel(self, p: Principal, ids: list[int], reason: str = "") -> api.CancelResult:
        """Cancel each job in its own right (one that may not be is skipped, with why): the
        rows change in one transaction, the agents are told after it."""
        done: list[int] = []
        skipped: dict[str, str] = {}
        to_stop: list[Active] = []
        now = time.time()
        why = reason or f"cancelled by {p.name}"
        async with self.db.transaction() as s:
            rows = (await s.execute(select(JobRow).where(JobRow.id.in_(ids)))).scalars().all()
            by_id = {r.id: r for r in rows}
            for jid in ids:
                r = by_id.get(jid)
                refused = self.why_not_cancel(p, r)
                if r is None or refused:
                    skipped[str(jid)] = refused
                    continue
                if r.state in ("queued", "held"):
                    self.table.finish(r, "cancelled", why, now)
                else:
                    a = self.table.active.get(jid)
                    r.reason = f"cancelling: {why}"
                    r.history = [*r.history, event(r.state, f"cancel requested by {p.name}")]
                    if a is not None:
                        to_stop.append(a)
                done.append(jid)
        await self._send_cancels(to_stop, why, "cancelled")
        if not done and skipped and len(ids) == 1:
            msg = next(iter(skipped.values()))
            if msg == "no such job":
                raise NotFound(f"no job {ids[0]}")
            if msg == "not your job":
                raise PermissionDenied(
                    f"job {ids[0]} is not yours: members cancel only their own jobs"
                )
            raise Conflict(f"job {ids[0]} is {msg.removeprefix('already ')}")
        if done:
            self.scheduling.kick()
        return api.CancelResult(cancelled=done, skipped=skipped)

    async def _send_cancel(
        self, a: Active, reason: str, end_kind: str, grace: float = KILL_GRACE_S
    ) -> None:
        await self._send_cancels([a], reason, end_kind, grace)

    async def _send_cancels(
        self, stop: list[Active], reason: str, end_kind: str, grace: float = KILL_GRACE_S
    ) -> None:
        """Tell the jobs' agents to stop them (one transaction for all the commands)."""
        await self.nodes.enqueue_many(
            [
                (
                    a.node_id,
                    w.CancelJob,
                    {
                        "job_id": a.job_id,
                        "attempt": a.attempt,
                        "reason": reason,
                        "end_kind": end_kind,
                        "grace_s": grace,
                    },
                )
                for a in stop
            ]
        )

    async def stop_for_policy(self, job_id: int, why: str, *, requeue: bool) -> bool:
        """Stop a running job for a lab policy (the idle-GPU one): cancelled with ``why``,
        or requeued as a new attempt whatever its retries; False when it is not running."""
        a = self.table.active.get(job_id)
        if a is None or a.state != "running":
            return False
        mark = REQUEUE_MARK if requeue else "cancelling: "
        async with self.db.transaction() as s:
            r = await s.get(JobRow, job_id)
            if r is None or r.state != "running":
                return False
            r.reason = f"{mark}{why}"
            r.history = [*r.history, event(r.state, f"{'requeue' if requeue else 'cancel'}: {why}")]
        await self._send_cancel(a, why, "cancelled")
        return True

    async def release(self, p: Principal, job_id: int) -> api.Job:
        async with self.db.transaction() as s:
            r = await s.get(JobRow, job_id)
            if r is None:
                raise NotFound(f"no job {job_id}")
            if r.user != p.name and not p.is_admin:
                raise PermissionDenied(f"job {job_id} is not yours")
            if r.state != "held":
                raise Conflict(f"job {job_id} is {r.state}, not held")
            self.release_row(r, p)
        self.scheduling.kick()
        return await self.get(p, job_id)

    def release_row(self, r: JobRow, p: Principal) -> None:
        """A held row joins the queue (within the caller's transaction)."""
        r.state = "queued"
        r.reason = "waiting for the scheduler"
        r.history = [*r.history, event("queued", f"released by {p.name}")]
        self.table.queue(r)

    def hold_row(self, r: JobRow, p: Principal) -> None:
        """A queued row is held: the scheduler passes it by until it is released."""
        r.state = "held"
        r.reason = held_by(p.name)
        r.history = [*r.history, event("held", r.reason)]
        self.table.unqueue(r.id)

    # ---------------------------------------------------------------- agent reports
    async def node_reported(self, node: LiveNode, reports: list[w.JobReport], full: bool) -> None:
        """Apply a node's job reports: starts, ends, jobs its agent no longer knows, and
        attempts the master no longer wants (cancelled on the node)."""
        now = time.time()
        ended = False
        stale: list[w.JobReport] = []
        late: list[w.JobReport] = []  # of jobs not placed anywhere now: lost with the node?
        updates: dict[int, w.JobReport] = {}
        active = self.table.active
        for rep in reports:
            a = active.get(rep.job_id)
            if a is None or a.node_id != node.id or a.attempt != rep.attempt:
                if rep.state in ("starting", "running"):
                    stale.append(rep)
                queued = rep.job_id in self.table.pending or rep.job_id in self.table.fenced
                if a is None and not queued:
                    late.append(rep)
                continue
            if rep.state in ("running", "starting") and a.state == "running":
                continue
            updates[rep.job_id] = rep
        missing: list[Active] = []
        if full:
            seen = {r.job_id for r in reports}
            node.has_work = False
            for a in active.values():
                if a.node_id != node.id:
                    continue
                node.has_work = True
                if a.job_id in seen:
                    a.missed = 0
                elif a.state == "running":
                    # One heartbeat may have been sampled before the job's start event was
                    # sent; only a second one in a row that lacks it means the agent lost it.
                    a.missed += 1
                    if a.missed >= MISSED_REPORTS_LOST:
                        missing.append(a)
                elif now - a.assigned_at > ASSIGN_GRACE_S:
                    missing.append(a)
        if late:
            async with self.db.transaction() as s:
                taken = await settle_late(s, self.table, node, late)
            if taken:
                ended = True
                stale = [rep for rep in stale if (rep.job_id, rep.attempt) not in taken]
            for rep in late:  # an end that met its job revived meanwhile (a heartbeat's)
                a = active.get(rep.job_id)
                if (
                    rep.state not in ("starting", "running")
                    and (rep.job_id, rep.attempt) not in taken
                    and a is not None
                    and (a.node_id, a.attempt) == (node.id, rep.attempt)
                ):
                    updates[rep.job_id] = rep
        resend: list[w.JobSpec] = []
        if updates or missing:
            async with self.db.transaction() as s:
                # One query for every row the report touches, then the transitions in
                # memory: the changes are flushed together at commit.
                rows = await rows_by_id(s, [*updates, *(a.job_id for a in missing)])
                for jid, rep in updates.items():
                    r = rows.get(jid)
                    a = active[jid]
                    if r is None:
                        continue
                    if rep.state in ("starting", "running"):
                        if r.state == "assigned":
                            self.table.run(r, a, rep.started_at or now, rep.pid)
                        continue
                    ended = True
                    self._end(r, rep, now)
                for a in missing:
                    r = rows.get(a.job_id)
                    if r is None:
                        continue
                    if a.state == "assigned":
                        # The StartJob may have been lost with a restart: send it again (idempotent).
                        a.assigned_at = now
                        resend.append(self.launcher.start_spec(r, node, a.gpus))
                        continue
                    ended = True
                    why = f"the agent on {node.name} no longer knows this job"
                    self.table.interrupt(r, why, now)
        # After the transaction (the commands' own), all in one.
        commands: list[tuple[int, type[Any], dict[str, Any]]] = [
            (node.id, w.StartJob, {"job": spec}) for spec in resend
        ]
        pending_cancels = {
            (c.job_id, c.attempt) for c in node.outbox.values() if isinstance(c, w.CancelJob)
        }
        for rep in stale:
            if (rep.job_id, rep.attempt) in pending_cancels:
                continue  # already told; every heartbeat would otherwise add one more
            pending_cancels.add((rep.job_id, rep.attempt))
            commands.append(
                (
                    node.id,
                    w.CancelJob,
                    {
                        "job_id": rep.job_id,
                        "attempt": rep.attempt,
                        "reason": "this attempt is no longer wanted by the master",
                        "end_kind": "cancelled",
                    },
                )
            )
        await self.nodes.enqueue_many(commands)
        if ended:
            self.scheduling.kick()

    def _end(self, r: JobRow, rep: w.JobReport, now: float) -> None:
        if rep.state == "lost" or rep.end_kind == "lost":
            self.table.interrupt(r, rep.reason or "lost", now)
            return
        state, reason = end_of(rep)
        if rep.state == "failed_to_start":
            self.table.finish(r, state, reason, now)
            return
        code = rep.exit_code
        if r.reason.startswith(REQUEUE_MARK) and state == "cancelled":
            self.table.requeue(r, r.reason.removeprefix(REQUEUE_MARK), now)
            return
        if r.reason.startswith(PREEMPTING) and state == "cancelled":
            # Stopped for a preemption: requeued, not counted as a failure or a retry.
            self.table.preempt(r, r.reason.removeprefix(PREEMPTING), rep.ended_at or now)
            return
        if r.reason.startswith("cancelling: ") and state == "cancelled":
            reason = r.reason.removeprefix("cancelling: ")
        r.ended_at = rep.ended_at or now
        self.table.finish(r, state, reason, r.ended_at, exit_code=code)

    # ---------------------------------------------------------------- nodes lost and removed
    async def node_lost(self, node: LiveNode) -> None:
        mine = self.table.on_node(node.id)
        if not mine:
            return
        now = time.time()
        why = lost_reason(node.name, self.settings.node_lease)
        fence = fence_after(node.last_seen, self.settings.node_lease)
        async with self.db.transaction() as s:
            rows = await rows_by_id(s, [a.job_id for a in mine])
            for a in mine:
                r = rows.get(a.job_id)
                if r is not None:
                    self.table.interrupt(r, why, now, fence)
        self.scheduling.kick()

    async def remove_node(self, name: str, *, force: bool) -> list[int]:
        """Remove a node; its jobs are cancelled there and interrupted here (their ids)."""
        node = self.nodes.get(name)
        mine = self.table.on_node(node.id)
        if mine and not force:
            raise Conflict(
                f"node {name} runs {len(mine)} job(s) ({', '.join(str(a.job_id) for a in mine[:5])}); "
                "drain it and wait, or remove it with --force"
            )
        await self._send_cancels(mine, f"node {name} was removed", "cancelled", grace=KILL_GRACE_S)
        # Give a connected agent the moment it needs to take the cancels before its secret
        # stops working; an offline node's jobs are interrupted all the same.
        deadline = time.monotonic() + REMOVE_ACK_WAIT_S
        while (  # noqa: ASYNC110 - polls the outbox the agent drains, with a deadline
            mine
            and node.outbox
            and time.monotonic() < deadline
            and self.nodes.state_of(node) == "online"
        ):
            await asyncio.sleep(REMOVE_ACK_POLL_S)
        now = time.time()
        # A node out of reach may still run them: their retries wait out the lease fence.
        reachable = self.nodes.state_of(node) == "online"
        fence = None if reachable else fence_after(node.last_seen, self.settings.node_lease)
        async with self.db.transaction() as s:
            rows = await rows_by_id(s, [a.job_id for a in mine])
            for a in mine:
                r = rows.get(a.job_id)
                if r is not None:
                    self.table.interrupt(r, f"node {name} was removed by an admin", now, fence)
        await self.nodes.remove(name)
        self.scheduling.kick()
        return [a.job_id for a in mine]
