"""The scheduling loop: builds each pass's inputs, runs :func:`mlsm.master.scheduler.schedule`,
applies the result.

A pass runs whenever something changed (a job's end, a node back or resumed, new datasets
on a node, an edit, a cancel: :meth:`SchedulingLoop.kick`; new jobs in the queue:
:meth:`SchedulingLoop.queued`) and on a periodic tick; passes are coalesced, so a flood of
submissions does not run a pass per job.

A queue of :attr:`~mlsm.config.Settings.schedule_change_driven_jobs` jobs or more is
scheduled change-driven, since a pass over it costs seconds: the tick runs a full pass
only when an input of the pass changed (the nodes' capacities, the holds, the users' caps,
the lab's default limit: compared with what the last pass left), when a time-based event
came (a running job's time limit, a reservation's start or end, a queued job's expected
start, a fence's end), or every :data:`SAFETY_PASS_S`; a kick runs one (paced, see
:data:`PASS_GAP_FACTOR`). New jobs alone get a pass over themselves and the jobs the last
passes reserved GPUs for (the backfill reservation, preemptions), on the nodes as they are
now: the older jobs' verdicts cannot have changed, since nothing but the new jobs did, and
the reserved jobs keep their GPUs against the new ones.

Applying a pass assigns
the placed jobs (their rows and the job table in one transaction, then a StartJob to each
node), cancels those that can never run, and writes only the waiting reasons that changed.

The loop stays one piece: when a pass runs, over which jobs, and how its result is applied
share what the last pass saw (its inputs, the jobs it reserved GPUs for, the queue's new
jobs); the placement rules themselves are the package :mod:`mlsm.master.scheduler`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from sqlalchemy import bindparam, select, update

from mlsm import CODE_SINCE
from mlsm.config import Settings
from mlsm.master import scheduler as sched
from mlsm.master.db import Database
from mlsm.master.db.models import Job as JobRow
from mlsm.master.services.datasets import DatasetCatalog
from mlsm.master.services.jobs.capacity import gpu_slots, node_accounts, whole_gpus
from mlsm.master.services.jobs.launch import KILL_GRACE_S, Accounts, Launcher
from mlsm.master.services.jobs.limits import DefaultLimitCopies, effective_default_time_limit
from mlsm.master.services.jobs.table import PREEMPTING, JobTable, event, rows_by_id
from mlsm.master.services.livenode import LiveNode, NodeEvents
from mlsm.master.services.nodes import NodeRegistry
from mlsm.master.services.settings import SettingsService
from mlsm.wire import agent as w
from mlsm.wire import api

log = logging.getLogger("mlsm.master.jobs")

MIN_PASS_GAP_S = 0.005  # coalesce bursts of triggers into one pass
#: After a pass, the loop waits at least this many times as long as the pass took, so
#: passes over a huge queue take at most a third of the master's time and the requests
#: in between are answered (a pass runs in a worker thread, but holds the GIL while it
#: computes).
PASS_GAP_FACTOR = 2.0
#: A queue at least this long is scheduled in a worker thread (a short one costs less
#: than the hand-off).
THREAD_PASS_MIN_JOBS = 2000
#: How long a submit's "never fits" verdict is reused for the same job shape (a warning,
#: not a decision), while the lab's shape (``NodeRegistry.shape_version``) is unchanged.
NEVER_FITS_CACHE_S = 2.0
#: With a change-driven queue, a full pass at least this often even when nothing a pass
#: depends on seems to have changed (what no kick reports: fair-share decay reorders).
SAFETY_PASS_S = 30.0
NEVER_FITS_CACHE_MAX = 1024  # shapes kept at most (then the cache starts afresh)
#: The id a dry run's job has in a pass (no stored job has a negative id).
PROBE_ID = -1


def _shape(job: sched.PendingJob) -> tuple[object, ...]:
    """What the "never fits" verdict depends on: every field but the job's identity, age,
    dependencies and array (labels as sorted pairs, so it can be a key)."""
    return tuple(
        tuple(sorted(job.labels.items())) if f.name == "labels" else getattr(job, f.name)
        for f in dataclasses.fields(job)
        if f.name not in ("id", "submitted_at", "deps", "array_parent")
    )


class SchedulingLoop(NodeEvents):
    def __init__(
        self,
        db: Database,
        settings: Settings,
        nodes: NodeRegistry,
        table: JobTable,
        accounts: Accounts,
        catalog: DatasetCatalog,
        launcher: Launcher,
    ) -> None:
        self.db = db
        self.settings = settings
        self.nodes = nodes
        self.table = table
        self.accounts = accounts
        self.catalog = catalog
        self.launcher = launcher
        #: Which projects (``user/name``) are ready on which node id (the code service's).
        self.project_holders: Callable[[], Mapping[int, frozenset[str]]] = dict
        #: The reservations that hold GPUs now or later (the reservation service's).
        self.holds: Callable[[float], Sequence[sched.Hold]] = lambda now: ()
        #: The lab's limits (its default time limit counts for jobs that name none).
        self.lab_settings: SettingsService | None = None
        self._kick = asyncio.Event()
        #: A kick came since the last full pass began (a change beyond new jobs).
        self._full = True
        #: When the last full pass began (wall clock, and monotonic for the safety pass).
        self._full_at = 0.0
        self._full_mono = -math.inf
        self._checked_mono = -math.inf
        #: What the last pass left: the inputs besides the queue (see _inputs).
        self._seen: tuple[object, ...] | None = None
        #: Jobs the last passes reserved GPUs for (backfill, preemption): every pass over
        #: new jobs includes them, so their GPUs stay theirs.
        self._reserved: frozenset[int] = frozenset()
        self._gap_s = MIN_PASS_GAP_S
        self.passes = 0
        self.partial_passes = 0
        self.last_pass_ms = 0.0
        #: never_fits verdicts by job shape: (verdict, when), see NEVER_FITS_CACHE_S.
        self._never_fits: dict[tuple[object, ...], tuple[str, float, int]] = {}
        self._limited = DefaultLimitCopies()
        self._limited_new = DefaultLimitCopies()
        #: node id -> (the node, its ``seq``, the jobs on its GPUs, its GPU slots): kept
        #: until the node reports again or the jobs placed on it change.
        self._slots: dict[int, tuple[LiveNode, int, dict[int, list[int]], list[sched.GpuSlot]]]
        self._slots = {}

    def kick(self) -> None:
        """Ask for a full pass soon (coalesced with other kicks)."""
        self._full = True
        self._kick.set()

    def queued(self) -> None:
        """New jobs joined the queue (:attr:`JobTable.fresh`): a pass for them soon."""
        self._kick.set()

    def node_changed(self) -> None:
        self.kick()

    async def run(self) -> None:
        """A pass on every kick, and one per tick regardless; for the master's lifetime."""
        while True:
            try:
                await asyncio.wait_for(self._kick.wait(), timeout=self.settings.schedule_tick)
            except TimeoutError:
                pass
            self._kick.clear()
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduling pass failed; retrying on the next tick")
            await asyncio.sleep(self._gap_s)

    async def step(self) -> None:
        """One turn of the loop: a full pass, a pass over the new jobs, or none."""
        table = self.table
        if len(table.pending) < self.settings.schedule_change_driven_jobs or self._full_due():
            await self.schedule_pass()
        elif table.fresh:
            await self.schedule_new()

    def _full_due(self) -> bool:
        """Whether a change-driven queue needs a full pass now (see the module docstring)."""
        mono = time.monotonic()
        if self._full or mono - self._full_mono >= SAFETY_PASS_S:
            return True
        if mono - self._checked_mono < self.settings.schedule_tick:
            return False  # checked this tick (a flood of submissions wakes the loop often)
        self._checked_mono = mono
        now = time.time()
        return self._next_event(self._full_at) <= now or self._inputs(now) != self._seen

    def _next_event(self, after: float) -> float:
        """The first time-based event after ``after`` that can change a pass's verdicts."""
        table = self.table
        default_limit = self._default_limit()
        times = [a.ends_at(default_limit) for a in table.active.values()]
        times += table.expected.values()
        times += (until for until, _ in table.fenced.values())
        for h in self.holds(after):
            times += (h.start, h.end)
        return min((t for t in times if t > after), default=math.inf)

    def _inputs(
        self,
        now: float,
        caps: list[sched.NodeCap] | None = None,
        holds: Sequence[sched.Hold] | None = None,
    ) -> tuple[object, ...]:
        """A pass's inputs besides the queue, the running jobs and the clock: equal
        between two passes, the older jobs' verdicts cannot differ."""
        return (
            self.node_caps(now) if caps is None else caps,
            self.holds(now) if holds is None else holds,
            self.accounts.caps,
            self.accounts.mapped,
            self._default_limit(),
        )

    async def schedule_pass(self) -> sched.SchedResult | None:
        table = self.table
        now = time.time()
        self._full = False
        self._full_at = now
        self._full_mono = time.monotonic()
        table.fresh.clear()
        if table.fenced:
            table.release_fenced(now)
        if not table.pending:
            self._gap_s = MIN_PASS_GAP_S
            return None
        t0 = time.perf_counter()
        table.charge_usage(now)
        ctx = await self._context(now=now)
        pending = self._limited.apply(list(table.pending.values()), self._default_limit())
        caps = self.node_caps(now)
        seen = self._inputs(now, caps, ctx.holds)
        # The pass is a pure function of these snapshots: computed in a worker thread, so
        # a pass over a large queue does not stall every request meanwhile. What changed
        # while it ran is sorted out by _apply (it rereads the rows).
        if len(pending) >= THREAD_PASS_MIN_JOBS:
            result = await asyncio.to_thread(sched.schedule, pending, caps, ctx)
        else:
            result = sched.schedule(pending, caps, ctx)
        await self._apply(result, now)
        self._reserved = frozenset(result.expected_start) | frozenset(result.preempt.values())
        # What this pass saw (a change while it ran shows at the next check), or once its
        # placements are applied, the nodes as they are now.
        self._seen = self._inputs(time.time()) if result.placements else seen
        self.passes += 1
        self.last_pass_ms = (time.perf_counter() - t0) * 1000
        self._gap_s = max(MIN_PASS_GAP_S, PASS_GAP_FACTOR * self.last_pass_ms / 1000)
        return result

    async def schedule_new(self) -> sched.SchedResult | None:
        """A pass over the jobs queued since the last pass and the jobs the last passes
        reserved GPUs for, on the nodes as they are now (the older jobs wait as they did)."""
        table = self.table
        now = time.time()
        fresh = table.fresh
        table.fresh = set()
        pending = table.pending
        jobs = [pending[j] for j in fresh if j in pending]
        if not jobs:
            return None
        t0 = time.perf_counter()
        jobs += [pending[j] for j in self._reserved if j in pending and j not in fresh]
        table.charge_usage(now)
        jobs = self._limited_new.apply(jobs, self._default_limit())
        ctx = await self._context(now=now, jobs=jobs)
        result = sched.schedule(jobs, self.node_caps(now), ctx)
        ids = [j.id for j in jobs]
        await self._apply(result, now, only=ids)
        self._reserved = (
            self._reserved.difference(ids)
            | frozenset(result.expected_start)
            | frozenset(result.preempt.values())
        )
        if result.placements:
            self._seen = self._inputs(time.time())
        self.partial_passes += 1
        self._gap_s = max(MIN_PASS_GAP_S, PASS_GAP_FACTOR * (time.perf_counter() - t0))
        return result

    def _default_limit(self) -> float:
        return effective_default_time_limit(self.lab_settings.current) if self.lab_settings else 0.0

    async def _context(
        self,
        extra: sched.PendingJob | None = None,
        *,
        now: float,
        jobs: Sequence[sched.PendingJob] | None = None,
    ) -> sched.SchedContext:
        """A pass's view of the users, arrays, dependencies (of ``jobs``, by default the
        whole queue, and ``extra``'s), running jobs' ends and reservations at ``now``."""
        table = self.table
        in_use: dict[str, int] = {}
        running_array: dict[int, int] = {}
        for a in table.active.values():
            in_use[a.user] = in_use.get(a.user, 0) + a.gpu_count
            if a.array_parent is not None:
                running_array[a.array_parent] = running_array.get(a.array_parent, 0) + 1
        return sched.SchedContext(
            dep_states=await self._dep_states(extra, jobs),
            running_array=running_array,
            user_gpus_in_use=in_use,
            user_caps=self.accounts.caps,
            usage=table.fair_share.effective(table.active.values()),
            mapped_users=self.accounts.mapped,
            now=now,
            running=self._running(self._default_limit()),
            holds=self.holds(now),
        )

    # ---------------------------------------------------------------- dry runs
    async def plan(self, job: sched.PendingJob) -> api.SubmitPlan:
        """What a pass would do with ``job`` now, behind the queue it would join; nothing
        is assigned or stored (``mlsm submit --dry-run``)."""
        now = time.time()
        probe = dataclasses.replace(job, id=PROBE_ID, submitted_at=now)
        if not probe.time_limit_s and (default_limit := self._default_limit()):
            probe = dataclasses.replace(probe, time_limit_s=default_limit)
        ctx = await self._context(probe, now=now)
        result = sched.schedule([*self.table.pending.values(), probe], self.node_caps(now), ctx)
        warning = self.never_fits(job)
        for pl in result.placements:
            if pl.job_id == PROBE_ID:
                return api.SubmitPlan(
                    start_now=True, node=pl.node, gpu_indices=list(pl.gpu_indices), warning=warning
                )
        if PROBE_ID in result.never:
            return api.SubmitPlan(
                start_now=False, never=True, reason=result.never[PROBE_ID], warning=warning
            )
        reason = result.reasons.get(PROBE_ID, "waiting for the scheduler")
        return api.SubmitPlan(start_now=False, reason=reason, warning=warning)

    def never_fits(self, job: sched.PendingJob) -> str:
        """Why no node of the lab could run ``job`` even with every node up and empty, as
        the scheduler words it; "" when some node could. Dependencies, throttles and the
        GPUs other jobs hold are left out: those are waits, not impossibilities."""
        if not self.nodes.nodes:
            return "no node has joined the lab yet; the job waits until one does"
        if job.gpus and self._gpus_unknown():
            return ""  # a node that has GPUs but has not said which yet may well fit it
        alone = dataclasses.replace(job, id=PROBE_ID, deps=(), array_parent=None)
        # A burst of submissions of one shape asks the same question over and over; the
        # answer needs every node of the lab, so it is kept for a moment.
        shape = _shape(alone)
        now = time.monotonic()
        version = self.nodes.shape_version
        hit = self._never_fits.get(shape)
        if hit is not None and now - hit[1] < NEVER_FITS_CACHE_S and hit[2] == version:
            return hit[0]
        if len(self._never_fits) >= NEVER_FITS_CACHE_MAX:
            self._never_fits.clear()
        verdict = self._never_fits_now(alone)
        self._never_fits[shape] = (verdict, now, version)
        return verdict

    def _gpus_unknown(self) -> bool:
        """Whether a node with a GPU probe has reported no GPU sample yet: one that just
        joined, or any node before its first heartbeat to a restarted master (samples are
        not stored)."""
        return any(n.info.gpu_probe != "none" and not n.gpus for n in self.nodes.nodes.values())

    def _never_fits_now(self, alone: sched.PendingJob) -> str:
        ctx = sched.SchedContext(user_caps=self.accounts.caps, mapped_users=self.accounts.mapped)
        result = sched.schedule([alone], self.node_caps(time.time(), whole=True), ctx)
        if result.placements:
            return ""
        why = result.reasons.get(PROBE_ID, "")
        # Every node counts as online here, so the scheduler's "online node" is any node.
        return why.replace("online node", "node")

    def _running(self, default_limit: float) -> list[sched.Running]:
        """The placed jobs that hold GPUs, with when they end by their time limits."""
        out = []
        for a in self.table.active.values():
            node = self.nodes.nodes.get(a.node_id)
            if node is None or not a.gpus:
                continue
            out.append(
                sched.Running(
                    job_id=a.job_id,
                    node=node.name,
                    gpus=a.gpus,
                    ends_at=a.ends_at(default_limit),
                    preemptible=a.preemptible,
                    started_at=a.started_at or a.assigned_at,
                    stopping=a.stopping,
                )
            )
        return out

    def node_caps(self, now: float, *, whole: bool = False) -> list[sched.NodeCap]:
        """Every node as the scheduler sees it now; with ``whole``, as it would be up and
        with nothing running (what the lab could ever run)."""
        holders = {} if whole else self.table.gpu_holders()
        held_ds = self.catalog.holders()
        held_projects = self.project_holders()
        reserved: dict[int, tuple[float, int]] = {}
        for a in () if whole else self.table.active.values():
            c, m = reserved.get(a.node_id, (0.0, 0))
            reserved[a.node_id] = (c + a.cpus, m + a.mem)
        caps = []
        for n in self.nodes.nodes.values():
            rc, rm = reserved.get(n.id, (0.0, 0))
            state = self.nodes.state_of(n, now)
            runtimes = set(n.info.runtimes) | {"process", "venv"}
            if n.info.docker_available:
                runtimes.add("docker")
            caps.append(
                sched.NodeCap(
                    name=n.name,
                    schedulable=whole or state == "online",
                    gpus=whole_gpus(n) if whole else self._gpu_slots(n, holders.get(n.id, {})),
                    labels=n.labels,
                    datasets=frozenset(held_ds.get(n.id, ())),
                    runtimes=frozenset(runtimes),
                    reason_unschedulable=state,
                    # CPUs and memory that jobs asked for are reserved against the node's
                    # size; a node that has not said its size is not limited.
                    cpus_free=n.info.cpu_cores - rc if n.info.cpu_cores else math.inf,
                    mem_free_bytes=n.info.mem_total - rm if n.info.mem_total else sys.maxsize,
                    accounts=node_accounts(n.info),
                    code=n.protocol >= CODE_SINCE,
                    projects=held_projects.get(n.id, frozenset()),
                )
            )
        return caps

    def _gpu_slots(self, n: LiveNode, holders: dict[int, list[int]]) -> list[sched.GpuSlot]:
        hit = self._slots.get(n.id)
        if hit is not None and hit[0] is n and hit[1] == n.seq and hit[2] == holders:
            return hit[3]
        slots = gpu_slots(n, holders)
        if len(self._slots) > 2 * len(self.nodes.nodes) + 16:  # forget removed nodes
            self._slots = {k: v for k, v in self._slots.items() if k in self.nodes.nodes}
        self._slots[n.id] = (n, n.seq, holders, slots)
        return slots

    async def _dep_states(
        self,
        extra: sched.PendingJob | None = None,
        jobs: Sequence[sched.PendingJob] | None = None,
    ) -> dict[int, str]:
        table = self.table
        want = {d for j in (table.pending.values() if jobs is None else jobs) for d, _ in j.deps}
        if extra is not None:
            want.update(d for d, _ in extra.deps)
        out: dict[int, str] = {}
        unknown = []
        for d in want:
            if d in table.pending:
                out[d] = "queued"
            elif d in table.active:
                out[d] = table.active[d].state
            elif d in table.final_states:
                out[d] = table.final_states[d]
            else:
                unknown.append(d)
        if unknown:
            async with self.db.session() as s:
                for jid, st in (
                    await s.execute(select(JobRow.id, JobRow.state).where(JobRow.id.in_(unknown)))
                ).all():
                    out[jid] = st
                    if st in api.FINAL_STATES:
                        table.final_states[jid] = st
        return out

    async def _apply(
        self, result: sched.SchedResult, now: float, only: Sequence[int] | None = None
    ) -> None:
        """Apply a pass's ``result``: a full pass's, or one over the jobs ``only``."""
        table = self.table
        starts: list[tuple[int, w.JobSpec]] = []
        stops: list[tuple[int, int, int, str, float]] = []  # node, job, attempt, why, grace
        async with self.db.transaction() as s:
            # Jobs that left the queue while the pass ran (cancelled, held, edited away) keep
            # the reason their change gave them. Read once this transaction has its turn:
            # a change that committed while it waited has unqueued its job by now.
            pending = table.pending
            changed_reasons = {
                j: r
                for j, r in result.reasons.items()
                if j in pending and table.reasons.get(j) != r
            }
            expected = {j: t for j, t in result.expected_start.items() if j in pending}
            if only is None:
                table.expected = expected
            else:
                for j in only:
                    table.expected.pop(j, None)
                table.expected.update(expected)
            victims = [
                v for v in result.preempt if v in table.active and not table.active[v].stopping
            ]
            victim_rows = (
                (await s.execute(select(JobRow).where(JobRow.id.in_(victims)))).scalars().all()
                if victims
                else []
            )
            for vr in victim_rows:
                a = table.active.get(vr.id)
                if a is None or vr.state not in ("assigned", "running"):
                    continue
                why = f"preempted by job {result.preempt[vr.id]}"
                a.stopping = True
                vr.reason = PREEMPTING + why
                vr.history = [*vr.history, event(vr.state, PREEMPTING + why)]
                grace = vr.spec.preempt_grace_s or KILL_GRACE_S
                stops.append((a.node_id, vr.id, a.attempt, why, grace))
            if result.placements:
                ids = [pl.job_id for pl in result.placements]
                rows = {
                    r.id: r
                    for r in (await s.execute(select(JobRow).where(JobRow.id.in_(ids)))).scalars()
                }
                for pl in result.placements:
                    r = rows.get(pl.job_id)
                    node = self.nodes.by_name.get(pl.node)
                    if r is None or node is None or r.state != "queued":
                        table.pending.pop(pl.job_id, None)
                        continue
                    if len(pl.gpu_indices) != r.gpus:
                        continue  # edited since the pass ran: the next pass places it anew
                    table.place(r, pl.node, node.id, pl.gpu_indices, now)
                    starts.append((node.id, self.launcher.start_spec(r, node, pl.gpu_indices)))
            never_rows = await rows_by_id(s, result.never) if result.never else {}
            for jid, why in result.never.items():
                r = never_rows.get(jid)
                if r is not None and r.state == "queued":
                    table.finish(r, "cancelled", why, now)
            if changed_reasons:
                # Only rows still queued: a reason is a waiting job's, never an ended one's.
                # (On the connection: a list of rows through the session would be the
                # ORM's update by primary key, which takes no further condition.)
                await (await s.connection()).execute(
                    update(JobRow)
                    .where(JobRow.id == bindparam("jid"), JobRow.state == "queued")
                    .values(reason=bindparam("why")),
                    [{"jid": j, "why": why} for j, why in changed_reasons.items()],
                )
                table.reasons.update(changed_reasons)
        # The agent stops a preempted job as it stops a cancelled one (SIGTERM, the job's
        # own grace, SIGKILL); its end is then read as a preemption (the reason says so).
        # Stops and starts are written in one transaction, stops first.
        await self.nodes.enqueue_many(
            [
                (
                    node_id,
                    w.CancelJob,
                    {
                        "job_id": job_id,
                        "attempt": attempt,
                        "reason": why,
                        "end_kind": "cancelled",
                        "grace_s": grace,
                    },
                )
                for node_id, job_id, attempt, why, grace in stops
            ]
            + [(node_id, w.StartJob, {"job": spec}) for node_id, spec in starts]
        )
