"""Disk hygiene on the master: retention of finished jobs' directories (on their nodes) and
of their logs (shipped here), ``mlsm job purge``, and the audit of every removal.

The master knows which jobs are finished (a job that may still be retried is not); each
node's agent knows what is in use there (a running attempt, a fetch being served) and what a
directory holds. So the master *names* candidates and the agent *removes*
(:mod:`mlsm.wire.outputs`):

* every :data:`SWEEP_INTERVAL_S` (and when an admin changes the settings) each online node
  that speaks protocol 3 gets a :class:`~mlsm.wire.outputs.SweepJobDirs` naming its finished
  jobs whose directories are still there: the ones past retention, or, while the node
  reports its disk fuller than ``node_disk_high_pct``, all of them oldest first; with
  them, the jobs whose earlier attempt ran there and that then ran on another node (a
  retry, a preemption: :class:`~mlsm.master.db.models.JobRun` rows), by the attempt's end;
* ``mlsm job purge JOB`` (owner or admin, a finished job) sends a
  :class:`~mlsm.wire.outputs.PurgeJobDir` and waits a moment for the answer;
* the agent's :class:`~mlsm.wire.outputs.JobDirsRemoved` report marks each job
  (``outputs_removed_at``, ``outputs_removed_why``) and writes one audit row per removed
  directory in the node's name, once however often the report comes; only its own jobs.

Shipped logs are removed here, by the same retention, one audit row each.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from sqlalchemy import select

from mlsm import COMMAND_SINCE
from mlsm.errors import Conflict, NodeOffline, NotFound, PermissionDenied
from mlsm.master.db import Database
from mlsm.master.db.models import Job as JobRow
from mlsm.master.db.models import JobRun
from mlsm.master.security import Principal
from mlsm.master.services.audit import SYSTEM_ACTOR, AuditLog
from mlsm.master.services.joblogs import LogStore
from mlsm.master.services.livenode import LiveNode
from mlsm.master.services.nodes import NodeRegistry
from mlsm.master.services.settings import SettingsService
from mlsm.wire import api
from mlsm.wire import outputs as wo

log = logging.getLogger("mlsm.master.disk")

DAY_S = 86400.0
#: How often finished jobs' directories and logs are swept (MLSM_RETENTION_SWEEP_INTERVAL
#: overrides it, for tests and impatient labs).
SWEEP_INTERVAL_S = float(os.environ.get("MLSM_RETENTION_SWEEP_INTERVAL") or 600.0)
PURGE_WAIT_S = 15.0  # how long `mlsm job purge` waits for the node's answer
LOG_SWEEP_BATCH = 500  # shipped logs removed per sweep (the next sweep takes the rest)


def offline_line(what: str, node: LiveNode) -> NodeOffline:
    """The one line for ``what`` (say "outputs of job 12") on a node that is offline:
    "outputs of job 12 live on gpu-b, which is offline since 10:42"."""
    since = node.last_seen
    if since is None:
        when = "it has not been seen since the master started"
        return NodeOffline(
            f"{what} live on {node.name}, which is offline ({when})",
            details={"node": node.name, "since": None},
        )
    local = time.localtime(since)
    today = time.localtime()
    stamp = time.strftime("%H:%M" if local[:3] == today[:3] else "%Y-%m-%d %H:%M", local)
    return NodeOffline(
        f"{what} live on {node.name}, which is offline since {stamp}",
        details={"node": node.name, "since": since},
    )


class DiskHygiene:
    """Retention sweeps, purges and the removal reports of agents."""

    def __init__(
        self,
        db: Database,
        nodes: NodeRegistry,
        logs: LogStore,
        lab_settings: SettingsService,
        audit: AuditLog,
    ) -> None:
        self.db = db
        self.nodes = nodes
        self.logs = logs
        self.lab_settings = lab_settings
        self.audit = audit
        self._kick = asyncio.Event()
        # Purges waiting for their node's answer: command id -> future of the report.
        self._waiting: dict[int, asyncio.Future[wo.JobDirsRemoved]] = {}

    # ---------------------------------------------------------------- the sweep loop
    def kick(self) -> None:
        """Sweep now (the settings changed)."""
        self._kick.set()

    async def run(self) -> None:
        """Sweep every :data:`SWEEP_INTERVAL_S`, or sooner when kicked; runs for the
        master's lifetime."""
        while True:
            try:
                await asyncio.wait_for(self._kick.wait(), SWEEP_INTERVAL_S)
            except TimeoutError:
                pass
            self._kick.clear()
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retention sweep failed; trying again later")

    async def sweep(self) -> None:
        """One pass: ask each node to remove what retention allows; remove old logs here."""
        cfg = self.lab_settings.current
        retention = cfg.job_retention_days * DAY_S
        now = time.time()
        for node in list(self.nodes.nodes.values()):
            await self._sweep_node(node, retention, cfg.node_disk_high_pct, now)
        if retention > 0:
            await self._sweep_logs(now - retention)

    def _over_threshold(self, node: LiveNode, high_pct: float) -> bool:
        disk = node.info.disk
        if high_pct <= 0 or disk is None or disk.fs_total <= 0:
            return False
        used = disk.fs_total - disk.fs_free
        return 100.0 * used / disk.fs_total > high_pct

    async def _sweep_node(
        self, node: LiveNode, retention: float, high_pct: float, now: float
    ) -> None:
        if not self._can_send(node, "sweep_job_dirs"):
            return
        if any(isinstance(c, wo.SweepJobDirs) for c in node.outbox.values()):
            return  # the last sweep is still on its way
        over = self._over_threshold(node, high_pct)
        if retention <= 0 and not over:
            return
        q = (
            select(JobRow.id, JobRow.ended_at)
            .where(
                JobRow.node == node.name,
                JobRow.state.in_(tuple(api.FINAL_STATES)),
                JobRow.ended_at.is_not(None),
                JobRow.outputs_removed_at.is_(None),
            )
            .order_by(JobRow.ended_at, JobRow.id)
            .limit(wo.MAX_SWEEP_JOBS)
        )
        # Directories of earlier attempts left here by jobs that then ran on another node
        # (a retry after an interruption, a preemption): the same rule, from the
        # attempt's end.
        left = (
            select(JobRun.job_id, JobRun.ended_at)
            .join(JobRow, JobRow.id == JobRun.job_id)
            .where(
                JobRun.node_id == node.id,
                JobRun.dir_removed_at.is_(None),
                JobRow.node != node.name,
            )
            .order_by(JobRun.ended_at, JobRun.job_id)
            .limit(wo.MAX_SWEEP_JOBS)
        )
        if not over:
            q = q.where(JobRow.ended_at < now - retention)
            left = left.where(JobRun.ended_at < now - retention)
        async with self.db.session() as s:
            rows: list[tuple[int, float | None]] = [
                (int(i), e) for i, e in (await s.execute(q)).all()
            ]
            seen = {i for i, _ in rows}
            for i, e in (await s.execute(left)).all():
                if int(i) not in seen and len(rows) < wo.MAX_SWEEP_JOBS:
                    seen.add(int(i))
                    rows.append((int(i), e))
        if not rows:
            return
        await self.nodes.enqueue(
            node.id,
            wo.SweepJobDirs,
            jobs=[wo.FinishedJob(job_id=int(i), ended_at=float(e or 0.0)) for i, e in rows],
            retention_s=retention,
            high_pct=high_pct,
        )

    def _can_send(self, node: LiveNode, kind: str) -> bool:
        return node.protocol >= COMMAND_SINCE[kind] and self.nodes.state_of(node) in (
            "online",
            "draining",
        )

    async def _sweep_logs(self, cutoff: float) -> None:
        """Remove the shipped logs of jobs that ended before ``cutoff`` (audited)."""
        async with self.db.transaction() as s:
            rows = (
                (
                    await s.execute(
                        select(JobRow)
                        .where(
                            JobRow.state.in_(tuple(api.FINAL_STATES)),
                            JobRow.ended_at < cutoff,
                            JobRow.log_removed_at.is_(None),
                        )
                        .order_by(JobRow.ended_at)
                        .limit(LOG_SWEEP_BATCH)
                    )
                )
                .scalars()
                .all()
            )
            now = time.time()
            removed = []
            for r in rows:
                await asyncio.to_thread(self.logs.remove, r.id, r.attempt)
                r.log_removed_at = now
                removed.append((r.id, r.user))
        for job_id, user in removed:
            await self._audit(
                actor=SYSTEM_ACTOR,
                role="system",
                action="job.log.remove",
                target=f"job:{job_id}",
                details={"reason": "retention", "user": user},
            )

    # ---------------------------------------------------------------- purge
    async def purge(self, p: Principal, job_id: int) -> api.PurgeResult:
        """Free one finished job's directory on its node now (its owner or an admin)."""
        async with self.db.session() as s:
            r = await s.get(JobRow, job_id)
        if r is None:
            raise NotFound(f"no job {job_id}")
        if r.user != p.name and not p.is_admin:
            raise PermissionDenied(
                f"job {job_id} is not yours: members purge only their own jobs' outputs"
            )
        if r.state not in api.FINAL_STATES:
            raise Conflict(
                f"job {job_id} is {r.state}: only a finished job's directory can be purged "
                f"(cancel it first: mlsm cancel {job_id})"
            )
        if not r.node:
            return api.PurgeResult(
                job_id=job_id, node="", state="absent", message="the job never ran on a node"
            )
        if r.outputs_removed_at is not None:
            return api.PurgeResult(
                job_id=job_id,
                node=r.node,
                state="absent",
                message=f"already removed ({r.outputs_removed_why})",
            )
        node = self.nodes.by_name.get(r.node)
        if node is None:
            raise Conflict(f"node {r.node}, where job {job_id} ran, was removed from the lab")
        if self.nodes.state_of(node) in ("offline", "stale"):
            raise offline_line(f"outputs of job {job_id}", node)
        if not self._can_send(node, "purge_job_dir"):
            raise Conflict(
                f"the agent on {node.name} speaks protocol {node.protocol}, too old to purge "
                "job directories: upgrade mlsm there"
            )
        fut: asyncio.Future[wo.JobDirsRemoved] = asyncio.get_running_loop().create_future()
        cmd_id = await self.nodes.enqueue(
            node.id, wo.PurgeJobDir, job_id=job_id, requested_by=p.name
        )
        self._waiting[cmd_id] = fut
        try:
            report = await asyncio.wait_for(fut, PURGE_WAIT_S)
        except TimeoutError:
            return api.PurgeResult(
                job_id=job_id,
                node=node.name,
                state="requested",
                message=f"asked {node.name} to remove it; it has not answered yet",
            )
        finally:
            self._waiting.pop(cmd_id, None)
        for k in report.kept:
            if k.job_id == job_id:
                raise Conflict(f"job {job_id}'s directory on {node.name} stays: {k.why}")
        for d in report.removed:
            if d.job_id == job_id:
                return api.PurgeResult(
                    job_id=job_id, node=node.name, state="removed", bytes=d.bytes
                )
        return api.PurgeResult(
            job_id=job_id, node=node.name, state="absent", message="it was not there"
        )

    # ---------------------------------------------------------------- agents' reports
    async def removed(self, node: LiveNode, report: wo.JobDirsRemoved) -> None:
        """Mark the jobs whose directories the node removed (or no longer has), audit each
        removal, and answer a purge waiting for this report."""
        if report.disk is not None and report.disk != node.info.disk:
            node.info.disk = report.disk
            node.info_dirty = True
        ids = [d.job_id for d in report.removed] + list(report.gone)
        marked: dict[int, tuple[str, str]] = {}
        repeated: set[int] = set()  # recorded from an earlier copy of this report
        missing: list[tuple[int, str]] = []
        if ids:
            now = time.time()
            async with self.db.transaction() as s:
                rows = (await s.execute(select(JobRow).where(JobRow.id.in_(ids)))).scalars()
                by_id = {r.id: r for r in rows}
                runs = (
                    await s.execute(
                        select(JobRun).where(JobRun.job_id.in_(ids), JobRun.node_id == node.id)
                    )
                ).scalars()
                left: dict[int, list[JobRun]] = {}
                for run in runs:
                    left.setdefault(run.job_id, []).append(run)
                for d in report.removed:
                    r = by_id.get(d.job_id)
                    if r is not None and r.node != node.name and d.job_id in left:
                        earlier = left[d.job_id]  # an earlier attempt's directory
                        if all(run.dir_removed_at is not None for run in earlier):
                            repeated.add(d.job_id)  # a report sent again: recorded already
                            continue
                        for run in earlier:
                            run.dir_removed_at = now
                        marked[r.id] = (f"{_why(d)} (an earlier attempt's, on {node.name})", r.user)
                        continue
                    if r is None or r.node != node.name:
                        continue  # a node speaks only for its own jobs
                    if r.outputs_removed_at is not None:  # sent again: recorded already
                        repeated.add(d.job_id)
                        continue
                    why = _why(d)
                    r.outputs_removed_at = now
                    r.outputs_removed_why = why[:128]
                    marked[r.id] = (why, r.user)
                for jid in report.gone:
                    r = by_id.get(jid)
                    for run in left.get(jid, []) if r is not None and r.node != node.name else []:
                        run.dir_removed_at = now  # already gone: nothing to say
                    if r is None or r.node != node.name or r.outputs_removed_at is not None:
                        continue
                    r.outputs_removed_at = now
                    r.outputs_removed_why = "missing"
                    missing.append((r.id, r.user))
        for d in report.removed:
            if d.job_id not in marked:
                if d.job_id not in repeated:
                    log.warning("node %s: job %s is not its own", node.name, d.job_id)
                continue
            why, user = marked[d.job_id]
            await self._audit(
                actor=f"node:{node.name}",
                role="node",
                action="job.outputs.remove",
                target=f"job:{d.job_id}",
                details={
                    "node": node.name,
                    "reason": d.reason,
                    "why": why,
                    "bytes": d.bytes,
                    "files": d.files,
                    "user": user,
                },
            )
        for jid, user in missing:  # removed earlier, its report lost (or by hand)
            await self._audit(
                actor=f"node:{node.name}",
                role="node",
                action="job.outputs.missing",
                target=f"job:{jid}",
                details={"node": node.name, "user": user},
            )
        fut = self._waiting.get(report.command_id)
        if fut is not None and not fut.done():
            fut.set_result(report)

    async def _audit(
        self, *, actor: str, role: str, action: str, target: str, details: dict[str, Any]
    ) -> None:
        await self.audit.append(
            actor=actor,
            role=role,
            action=action,
            target=target,
            outcome="ok",
            client="",
            request_id="",
            details=details,
        )


def _why(d: wo.RemovedDir) -> str:
    if d.reason == "purge":
        return f"purged by {d.by}" if d.by else "purged"
    return "retention" if d.reason == "retention" else "node disk above threshold"
