"""What people do to many jobs at once, or to a job that exists: cancel a selection, submit
many in one call, plan a submission without storing it, edit a queued job, restart one.

Each builds on the lifecycle service (:class:`~mlsm.master.services.jobs.service.JobService`):
a selection is resolved here into job ids and cancelled there, job by job in one
transaction; a bulk submission is checked whole, then stored in one transaction through
the service's group commit; edits and restarts change rows through the same job table.
The rules of who may do what are the service's (owners and admins), with one more here:
a member's filters (``--user``, ``--name``, ``--state``) reach only that member's jobs.
"""

from __future__ import annotations

import fnmatch
import time
from typing import Any

import msgspec
from sqlalchemy import and_, or_, select

from mlsm.errors import (
    Conflict,
    MlsmError,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ValidationError,
)
from mlsm.master.db.models import Job as JobRow
from mlsm.master.jobspec import (
    MAX_SUBMISSION_STORED_BYTES,
    Submission,
    build_submission,
)
from mlsm.master.security import Principal
from mlsm.master.services.jobs.limits import JobAsk
from mlsm.master.services.jobs.service import JobService
from mlsm.master.services.jobs.table import event, pending_of
from mlsm.wire import api

#: Problems named in a refused bulk submission's details (the first ones; the count is
#: always given).
MAX_BULK_ERRORS_SHOWN = 100
#: States a filter without ``states`` selects: every job that may still be cancelled.
OPEN_FOR_CANCEL: tuple[api.JobState, ...] = ("queued", "held", "assigned", "running")


class JobCommands:
    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs
        self.db = jobs.db

    # ---------------------------------------------------------------- cancel a selection
    async def cancel(self, p: Principal, req: api.CancelRequest) -> api.CancelResult:
        """Cancel what ``req`` selects (see :class:`~mlsm.wire.api.CancelRequest`)."""
        named = bool(req.ids or req.tasks)
        if not named and not (req.user or req.name or req.states):
            raise ValidationError(
                "name the jobs to cancel (ids, array tasks) or filter them (user, name, state)",
                path="ids",
            )
        if req.user and req.user != p.name and not p.is_admin:
            raise PermissionDenied(
                f"members cancel only their own jobs: --user {req.user} is not you",
                details={"path": "user"},
            )
        ids, skipped = await self._select(p, req)
        if req.preview:
            return await self._preview(p, ids, skipped)
        filtered = bool(req.user or req.name or req.states)
        if len(req.ids) == 1 and not req.tasks and not filtered and ids in ([], req.ids):
            return await self.jobs.cancel(p, req.ids)  # one job named: its refusal is the error
        if not ids:
            return api.CancelResult(cancelled=[], skipped=skipped)
        res = await self.jobs.cancel(p, ids) if len(ids) > 1 else await self._one(p, ids[0])
        return api.CancelResult(cancelled=res.cancelled, skipped={**skipped, **res.skipped})

    async def _one(self, p: Principal, jid: int) -> api.CancelResult:
        """One job out of a selection: a refusal is a skip, not the call's error."""
        try:
            return await self.jobs.cancel(p, [jid])
        except MlsmError as exc:
            return api.CancelResult(cancelled=[], skipped={str(jid): exc.message})

    async def _select(
        self, p: Principal, req: api.CancelRequest
    ) -> tuple[list[int], dict[str, str]]:
        """The ids ``req`` selects, and what it named that is not selected (with why)."""
        named = bool(req.ids or req.tasks)
        user = req.user or (None if p.is_admin or named else p.name)
        states = list(req.states) or ([] if named else list(OPEN_FOR_CANCEL))
        conds: list[Any] = []
        if named:
            picks: list[Any] = []
            if req.ids:
                picks.append(JobRow.id.in_(req.ids))
                picks.append(JobRow.array_parent.in_(req.ids))
            for t in req.tasks:
                picks.append(
                    and_(JobRow.array_parent == t.array, JobRow.array_index.in_(t.indices))
                )
            conds.append(or_(*picks))
        else:  # a wide selection: the database filters (named jobs are told why not)
            conds.append(JobRow.state.in_(states))
            if user is not None:
                conds.append(JobRow.user == user)
        cols = (JobRow.id, JobRow.user, JobRow.state, JobRow.name, JobRow.array_parent)
        q = select(*cols, JobRow.array_index).where(*conds).order_by(JobRow.id)
        async with self.db.session() as s:
            rows = (await s.execute(q)).all()
        chosen: list[int] = []
        skipped: dict[str, str] = {}
        by_id = set(req.ids)
        by_task = {(t.array, i) for t in req.tasks for i in t.indices}
        seen_ids: set[int] = set()
        seen_tasks: set[tuple[int, int]] = set()
        for jid, owner, state, name, parent, index in rows:
            seen_ids.add(jid)
            if parent is not None and index is not None:
                seen_ids.add(parent)
                seen_tasks.add((parent, index))
            # Named itself, or only as a task of an array named by its id; an array's
            # ended tasks are not what "cancel the array" means, so they pass silently.
            explicit = jid in by_id or (parent, index) in by_task
            if named and not explicit and not req.states and state in api.FINAL_STATES:
                continue
            why = ""
            if user is not None and owner != user:
                why = f"not {user}'s job" if p.is_admin else "not your job"
            elif states and state not in states:
                why = f"{state}, not {'/'.join(states)}"
            elif req.name and not fnmatch.fnmatchcase(name, req.name):
                why = f"its name {name!r} does not match {req.name!r}"
            if not why:
                chosen.append(jid)
            elif explicit:
                skipped[str(jid)] = why if p.is_admin or owner == p.name else "not your job"
        for jid in req.ids:
            if jid not in seen_ids:
                skipped[str(jid)] = "no such job"
        for array, i in sorted(by_task - seen_tasks):
            skipped[f"{array}_{i}"] = "no such array task"
        return chosen, skipped

    async def _preview(
        self, p: Principal, ids: list[int], skipped: dict[str, str]
    ) -> api.CancelResult:
        would: list[int] = []
        out = dict(skipped)
        async with self.db.session() as s:
            rows = (await s.execute(select(JobRow).where(JobRow.id.in_(ids)))).scalars().all()
        by_id = {r.id: r for r in rows}
        for jid in ids:
            why = self.jobs.why_not_cancel(p, by_id.get(jid))
            if why:
                out[str(jid)] = why
            else:
                would.append(jid)
        return api.CancelResult(cancelled=would, skipped=out, preview=True)

    # ---------------------------------------------------------------- many submissions
    async def submit_many(self, p: Principal, bodies: list[api.JobSubmit]) -> api.BulkSubmitReply:
        """Store every submission or none: each is checked as one submit would be, and all
        the problems found are named by index (``jobs[3]``) before anything is stored."""
        svc = self.jobs
        subs: list[Submission] = []
        problems: list[dict[str, Any]] = []
        code_ok: dict[str, Any] = {}
        projects_ok: set[str] = set()
        deps: set[int] = set()
        stored = 0
        bodies = list(bodies)
        for i, body in enumerate(bodies):
            try:
                body = bodies[i] = svc.within_limits(p, body)
                sub = build_submission(body, p, nodes=svc.nodes.by_name, policy=svc.policy)
                if body.code and body.code not in code_ok:
                    code_ok[body.code] = await svc.code.check_access(p, body.code)
                if body.project and body.project not in projects_ok:
                    await svc.code_projects.check_use(p, body.project)
                    projects_ok.add(body.project)
            except MlsmError as exc:
                problems.append({"index": i, "code": exc.code, "message": exc.message})
                continue
            stored += len(msgspec.json.encode(sub.spec)) * len(sub.indices)
            deps.update(d.job_id for d in sub.spec.after)
            subs.append(sub)
        if not problems and deps:
            missing = set(await svc.missing_jobs(sorted(deps)))
            for i, sub in enumerate(subs):
                gone = [d.job_id for d in sub.spec.after if d.job_id in missing]
                if gone:
                    problems.append(
                        {"index": i, "code": "validation_error", "message": f"no job {gone[0]}"}
                    )
        if problems:
            first = problems[0]
            raise ValidationError(
                f"jobs[{first['index']}]: {first['message']}"
                + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                + "; nothing was submitted",
                path=f"jobs[{first['index']}]",
                details={"errors": problems[:MAX_BULK_ERRORS_SHOWN], "count": len(problems)},
            )
        tasks = sum(len(sub.indices) for sub in subs)
        if tasks > api.MAX_BULK_JOBS:
            raise ValidationError(
                f"this submission makes {tasks} jobs (array tasks counted); at most "
                f"{api.MAX_BULK_JOBS} in one call",
                path="jobs",
            )
        if stored > MAX_SUBMISSION_STORED_BYTES:
            raise PayloadTooLarge(
                f"this submission would store {stored / (1 << 20):.1f} MiB of job specs; the "
                f"limit is {MAX_SUBMISSION_STORED_BYTES >> 20} MiB per call: submit fewer at once",
                details={"limit_bytes": MAX_SUBMISSION_STORED_BYTES, "stored_bytes": stored},
            )
        now = time.time()
        batches = [svc.rows_for(p, body, sub, now) for body, sub in zip(bodies, subs, strict=True)]
        await svc._insert(batches)
        for body, rows in zip(bodies, batches, strict=True):
            if body.code:
                await svc.code.attach(body.code, code_ok[body.code], [r.id for r in rows])
        svc.enqueue([r for rows in batches for r in rows])
        return api.BulkSubmitReply(ids=[rows[0].id for rows in batches], tasks=tasks)

    # ---------------------------------------------------------------- dry run
    async def plan(self, p: Principal, body: api.JobSubmit) -> api.SubmitPlan:
        """Where and why the job would run now, or why it would wait; nothing is stored."""
        svc = self.jobs
        body = svc.within_limits(p, body)
        sub = build_submission(body, p, nodes=svc.nodes.by_name, policy=svc.policy)
        if body.code:
            await svc.code.check_access(p, body.code)
        if body.project:
            await svc.code_projects.check_use(p, body.project)
        if sub.spec.after:
            missing = await svc.missing_jobs([d.job_id for d in sub.spec.after])
            if missing:
                raise ValidationError(f"--after: no job {missing[0]}", path="after")
        row = svc.rows_for(p, body, sub, time.time())[0]
        if body.hold:
            return api.SubmitPlan(
                start_now=False,
                reason=row.reason,
                warning=svc.scheduling.never_fits(pending_of(row)),
            )
        return await svc.scheduling.plan(pending_of(row))

    # ---------------------------------------------------------------- edit, hold, release
    async def edit(self, p: Principal, job_id: int, e: api.JobEdit) -> api.Job:
        """Change a queued or held job's request; members within their rights (see
        :func:`~mlsm.master.services.jobs.limits.check_limits`, as at submit)."""
        svc = self.jobs
        async with self.db.transaction() as s:
            r = await s.get(JobRow, job_id)
            if r is None:
                raise NotFound(f"no job {job_id}")
            if r.user != p.name and not p.is_admin:
                raise PermissionDenied(
                    f"job {job_id} is not yours: members edit only their own jobs"
                )
            if r.state not in api.PENDING_STATES:
                again = (
                    " (mlsm restart runs it again as a new job)"
                    if r.state in api.FINAL_STATES
                    else ""
                )
                raise Conflict(
                    f"job {job_id} is {r.state}: only a queued or held job can be edited{again}",
                    details={"state": r.state},
                )
            before = JobAsk(r.gpus, r.priority, r.spec.timeout_s)
            svc.check_limits(
                JobAsk(
                    before.gpus if e.gpus is None else e.gpus,
                    before.priority if e.priority is None else e.priority,
                    before.time_limit_s if e.timeout_s is None else e.timeout_s,
                ),
                p,
                before=before,
            )
            changed: list[str] = []
            if e.priority is not None and e.priority != r.priority:
                changed.append(f"priority {r.priority} -> {e.priority}")
                r.priority = e.priority
            if e.gpus is not None and e.gpus != r.gpus:
                changed.append(f"GPUs {r.gpus} -> {e.gpus}")
                r.gpus = e.gpus
            if e.timeout_s is not None and e.timeout_s != r.spec.timeout_s:
                changed.append(f"time limit {r.spec.timeout_s:g} s -> {e.timeout_s:g} s")
                r.spec = msgspec.structs.replace(r.spec, timeout_s=e.timeout_s)
            if e.name is not None and e.name != r.name:
                changed.append(f"name {r.name!r} -> {e.name!r}")
                r.name = e.name
            if changed:
                r.history = [
                    *r.history,
                    event(r.state, f"edited by {p.name}: {', '.join(changed)}"),
                ]
            if e.hold is True and r.state == "queued":
                svc.hold_row(r, p)
            elif e.hold is False and r.state == "held":
                svc.release_row(r, p)
            elif r.state == "queued" and changed:
                svc.table.queue(r)  # the scheduler's view of it, anew
        svc.scheduling.kick()
        return await svc.get(p, job_id)

    # ---------------------------------------------------------------- restart
    async def restart(self, p: Principal, job_id: int) -> api.SubmitReply:
        """Submit the job's stored request again as a new job (same code snapshot, same
        owner; an array task keeps its index); the new job names the one it re-runs."""
        svc = self.jobs
        async with self.db.session() as s:
            old = await s.get(JobRow, job_id)
        if old is None:
            raise NotFound(f"no job {job_id}")
        if old.user != p.name and not p.is_admin:
            raise PermissionDenied(
                f"job {job_id} is not yours: members restart only their own jobs"
            )
        spec = msgspec.structs.replace(old.spec, restarted_from=old.id)
        code = await svc.code.check_access(p, spec.code) if spec.code else None
        if spec.project and old.user == p.name:
            await svc.code_projects.check_use(p, spec.project)
        row = JobRow(
            name=old.name,
            user=old.user,
            state="queued",
            spec=spec,
            priority=old.priority,
            gpus=old.gpus,
            created_at=time.time(),
            retries=old.retries,
            array_index=old.array_index,
            history=[event("queued", f"restart of job {old.id} by {p.name}")],
            reason="waiting for the scheduler",
        )
        await svc._insert([[row]])
        if code is not None:
            await svc.code.attach(spec.code, code, [row.id])
        svc.enqueue([row])
        return api.SubmitReply(
            job=await svc.get(p, row.id),
            ids=[row.id],
            warning=svc.scheduling.never_fits(pending_of(row)),
        )


__all__ = ["JobCommands"]
