"""The idle-GPU policy: warn, wait, then cancel or requeue (a lab setting, off by default).

Rule, with the lab's ``idle_gpu_pct`` (U), ``idle_gpu_window_s`` (T), ``idle_gpu_grace_s``
(G) and ``idle_gpu_action``:

1. A running job whose GPUs *all* stayed below U % utilisation in every sample the agents
   reported for T seconds (the telemetry the master already keeps: no new probe) is
   **warned**: a ``job.idle_warning`` event (so its owner's webhooks and emails hear it),
   a line in its log (through the agent, protocol 4 and later), ``idle_warned_at`` on the
   job (the dashboard's mark) and an audit row.
2. A sample at or above U on any of its GPUs lifts the warning and starts the count again.
3. Still idle G seconds after the warning, it is **cancelled**, or requeued as a new
   attempt, with the reason ``idle GPUs: below U% for T`` (audited).
4. Never touched: jobs of users in ``idle_gpu_exempt_users``, jobs an admin exempted
   (``mlsm job set ID --idle-exempt``), jobs without GPUs.

The count lives in memory (a master restart starts it again, so a restart never makes the
policy act sooner); a warning is stored, so its grace survives a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select

from mlsm import COMMAND_SINCE
from mlsm.errors import Conflict, NotFound
from mlsm.master.db import Database
from mlsm.master.db.models import Job as JobRow
from mlsm.master.services.audit import AuditLog
from mlsm.master.services.events.record import record_for
from mlsm.master.services.jobs import JobService, JobTable
from mlsm.master.services.jobs.table import Active
from mlsm.master.services.nodes import NodeRegistry
from mlsm.master.services.telemetry import History
from mlsm.wire import agent as w
from mlsm.wire import api
from mlsm.wire.events import JobIdleState

log = logging.getLogger("mlsm.master.idle")

TICK_MIN_S = 0.5  # the policy looks at running jobs at least this far apart
TICK_MAX_S = 30.0  # and at most this far apart (a quarter of the window or grace if less)
SYSTEM_ACTOR = "mlsm"


def duration(seconds: float) -> str:
    """``3600`` -> ``"60 min"``, ``90`` -> ``"90 s"``, ``7200`` -> ``"120 min"``."""
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def idle_reason(cfg: api.LabSettings) -> str:
    return f"idle GPUs: below {cfg.idle_gpu_pct:g}% for {duration(cfg.idle_gpu_window_s)}"


@dataclass(slots=True)
class _Count:
    below_since: float | None  # first sample of the current all-below run
    last_ts: float  # the newest sample already counted


class IdlePolicy:
    def __init__(
        self,
        db: Database,
        nodes: NodeRegistry,
        history: History,
        table: JobTable,
        jobs: JobService,
        audit: AuditLog,
        lab_settings: Callable[[], api.LabSettings],
    ) -> None:
        self.db = db
        self.nodes = nodes
        self.history = history
        self.table = table
        self.jobs = jobs
        self.audit = audit
        self.lab_settings = lab_settings
        self._counts: dict[int, _Count] = {}
        self._warned: dict[int, float] = {}
        self._exempt: set[int] = set()
        self._stopping: set[int] = set()

    async def load(self) -> None:
        """The stored warnings and exemptions of open jobs."""
        async with self.db.session() as s:
            rows = (
                await s.execute(
                    select(JobRow.id, JobRow.idle_exempt, JobRow.idle_warned_at).where(
                        JobRow.state.in_(("queued", "held", "assigned", "running"))
                    )
                )
            ).all()
        for job_id, exempt, warned in rows:
            if exempt:
                self._exempt.add(job_id)
            if warned is not None:
                self._warned[job_id] = warned

    def _tick(self) -> float:
        cfg = self.lab_settings()
        if not cfg.idle_gpu_enabled:
            return TICK_MAX_S
        return max(TICK_MIN_S, min(TICK_MAX_S, cfg.idle_gpu_window_s / 4, cfg.idle_gpu_grace_s / 4))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._tick())
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("idle-GPU pass failed; carrying on")

    # ---------------------------------------------------------------- exemptions
    async def set_exempt(self, actor: str, job_id: int, exempt: bool) -> JobIdleState:
        async with self.db.transaction() as s:
            r = await s.get(JobRow, job_id)
            if r is None:
                raise NotFound(f"no job {job_id}")
            if r.state in api.FINAL_STATES:
                raise Conflict(f"job {job_id} is {r.state}: the idle-GPU policy no longer applies")
            r.idle_exempt = exempt
            if exempt:
                r.idle_warned_at = None
            warned = r.idle_warned_at
        if exempt:
            self._exempt.add(job_id)
            self._warned.pop(job_id, None)
        else:
            self._exempt.discard(job_id)
        return JobIdleState(job_id=job_id, exempt=exempt, warned_at=warned)

    # ---------------------------------------------------------------- the pass
    async def check(self, now: float | None = None) -> None:
        """Count each running job's idle time; warn, lift or act as the rule says."""
        cfg = self.lab_settings()
        active = self.table.active
        for gone in [j for j in self._counts if j not in active]:
            self._counts.pop(gone, None)
            self._warned.pop(gone, None)
            self._stopping.discard(gone)
        if not cfg.idle_gpu_enabled:
            self._counts.clear()
            return
        now = now or time.time()
        exempt_users = set(cfg.idle_gpu_exempt_users)
        for a in list(active.values()):
            if a.state != "running" or not a.gpus or a.job_id in self._stopping:
                continue
            c = self._counts.get(a.job_id)
            if c is None:
                c = self._counts[a.job_id] = _Count(None, a.assigned_at)
            series = [f"gpu{g}.util" for g in a.gpus]
            for ts, peak in self.history.peak_since(a.node_id, series, c.last_ts):
                c.last_ts = ts
                if peak >= cfg.idle_gpu_pct:
                    c.below_since = None
                elif c.below_since is None:
                    c.below_since = ts
            warned = self._warned.get(a.job_id)
            if c.below_since is None:
                if warned is not None:
                    await self._lift(a)
                continue
            if a.job_id in self._exempt or a.user in exempt_users:
                continue
            if warned is None:
                if now - c.below_since >= cfg.idle_gpu_window_s:
                    await self._warn(a, cfg, now)
            elif now - warned >= cfg.idle_gpu_grace_s:
                await self._act(a, cfg)

    async def _warn(self, a: Active, cfg: api.LabSettings, now: float) -> None:
        what = "cancelled" if cfg.idle_gpu_action == "cancel" else "requeued"
        text = (
            f"its GPUs stayed below {cfg.idle_gpu_pct:g}% for "
            f"{duration(cfg.idle_gpu_window_s)}: it will be {what} in "
            f"{duration(cfg.idle_gpu_grace_s)} unless they get busy"
        )
        async with self.db.transaction() as s:
            r = await s.get(JobRow, a.job_id)
            if r is None or r.state != "running":
                return
            r.idle_warned_at = now
            record_for(
                r,
                "job.idle_warning",
                f"is idle: {text}",
                threshold_pct=cfg.idle_gpu_pct,
                window_s=cfg.idle_gpu_window_s,
                grace_s=cfg.idle_gpu_grace_s,
                action=cfg.idle_gpu_action,
            )
        self._warned[a.job_id] = now
        log.info("job %s warned: idle GPUs", a.job_id)
        await self._audit("job.idle_warning", a, text=text)
        node = self.nodes.nodes.get(a.node_id)
        if node is not None and node.protocol >= COMMAND_SINCE["job_notice"]:
            await self.nodes.enqueue(
                a.node_id,
                w.JobNotice,
                job_id=a.job_id,
                attempt=a.attempt,
                text=f"warning: {text} (idle-GPU policy)",
            )

    async def _lift(self, a: Active) -> None:
        async with self.db.transaction() as s:
            r = await s.get(JobRow, a.job_id)
            if r is not None:
                r.idle_warned_at = None
        self._warned.pop(a.job_id, None)
        await self._audit("job.idle_cleared", a, text="its GPUs got busy again")

    async def _act(self, a: Active, cfg: api.LabSettings) -> None:
        why = idle_reason(cfg)
        requeue = cfg.idle_gpu_action == "requeue"
        if await self.jobs.stop_for_policy(a.job_id, why, requeue=requeue):
            self._stopping.add(a.job_id)
            log.info("job %s %s: %s", a.job_id, "requeued" if requeue else "cancelled", why)
            await self._audit("job.idle_requeue" if requeue else "job.idle_cancel", a, text=why)

    async def _audit(self, action: str, a: Active, **details: object) -> None:
        await self.audit.append(
            actor=SYSTEM_ACTOR,
            role="system",
            action=action,
            target=f"job:{a.job_id}",
            outcome="ok",
            client="",
            request_id="",
            details={"user": a.user, "node_id": a.node_id, **details},
        )
