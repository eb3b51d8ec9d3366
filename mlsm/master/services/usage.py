"""Usage reports (``mlsm usage``): who used how many GPU-hours, how well, waiting how long,
for how much energy; computed from stored facts, so they survive restarts.

Facts: one :class:`~mlsm.master.db.models.JobRun` row per attempt that ran (node, GPUs,
queued/started/ended), the running attempts from their job rows (counted up to now), and
the telemetry history (1-minute means of each GPU's utilisation and power, the minutes not
yet written included). The rules, which the tests check against hand-computed figures:

* An attempt counts for the part of it inside the window ``[since, until]`` (``until`` is
  at most now): **GPU-hours** = its GPUs x that time.
* **Utilisation-weighted GPU-hours**: for each of its GPUs, each 1-minute point (covering
  ``[ts, ts + 60 s)``) adds ``mean util / 100 x the seconds of that minute inside both the
  attempt and the window``; minutes without a point add nothing.
* **Energy** (kWh): the same sum over the power points (W x s / 3.6e6): the energy of the
  job's GPUs while it ran.
* **Jobs**: distinct jobs with an attempt in the window. **Wait**: per attempt that started
  in the window, start minus when it joined the queue; median, and p90 by nearest rank.
* Grouped by user, node, GPU model, or node label (``k=v``; an attempt counts in each
  label of its node, so label rows may add up to more than the total; the total row counts
  each attempt once).
* Members see their own jobs only; admins everyone's, or one user's.

The timeline (the dashboard's and ``--plot``'s charts) is lab-wide: mean GPU utilisation per
node and in all, jobs waiting, and the median wait of attempts started, per step.
"""

from __future__ import annotations

import math
import statistics
import time
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Integer, cast, func, or_, select

from mlsm.errors import PermissionDenied, ValidationError
from mlsm.master.db import Database
from mlsm.master.db.models import Job as JobRow
from mlsm.master.db.models import JobRun, MetricPoint
from mlsm.master.security import Principal
from mlsm.master.services.jobs.table import JobTable, queued_since
from mlsm.master.services.nodes import NodeRegistry
from mlsm.master.services.telemetry import MINUTE_S, History
from mlsm.wire import usage as wu

#: Steps of a timeline unless asked otherwise, and at most.
TIMELINE_STEPS = 48
MAX_TIMELINE_STEPS = 1000
_NO_LABEL = "(no labels)"
_NO_MODEL = "(unknown)"


@dataclass(slots=True)
class _Run:
    job_id: int
    user: str
    node: str
    node_id: int
    gpus: tuple[int, ...]
    model: str
    labels: dict[str, str]
    queued_at: float
    started_at: float
    ended_at: float


@dataclass(slots=True)
class _Series:
    """One GPU series of one node: minute starts, means, and prefix sums of mean x 60 s."""

    ts: list[float] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    pref: list[float] = field(default_factory=list)

    def integral(self, start: float, end: float) -> float:
        """Sum of mean x seconds of each minute inside ``[start, end)``."""
        if end <= start or not self.ts:
            return 0.0
        a = bisect_right(self.ts, start - MINUTE_S)  # first minute that ends after start
        b = bisect_left(self.ts, end)  # minutes that begin before end
        if a >= b:
            return 0.0
        total = self.pref[b] - self.pref[a]
        for j in {a, b - 1}:
            t = self.ts[j]
            inside = min(t + MINUTE_S, end) - max(t, start)
            total -= self.mean[j] * (MINUTE_S - max(inside, 0.0))
        return total


def _series(points: Iterable[tuple[float, float]]) -> _Series:
    s = _Series()
    by_ts: dict[float, float] = {}
    for t, v in points:
        by_ts[t] = v  # a minute written twice (flushed and open) counts once
    acc = 0.0
    s.pref.append(0.0)
    for t in sorted(by_ts):
        s.ts.append(t)
        s.mean.append(by_ts[t])
        acc += by_ts[t] * MINUTE_S
        s.pref.append(acc)
    return s


def _nearest_rank(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(slots=True)
class _Acc:
    gpu_s: float = 0.0
    util_s: float = 0.0  # GPU-seconds x utilisation (fraction)
    joules: float = 0.0
    jobs: set[int] = field(default_factory=set)
    waits: list[float] = field(default_factory=list)

    def row(self, key: str) -> wu.UsageRow:
        return wu.UsageRow(
            key=key,
            gpu_hours=self.gpu_s / 3600.0,
            util_gpu_hours=self.util_s / 3600.0,
            jobs=len(self.jobs),
            wait_median_s=statistics.median(self.waits) if self.waits else None,
            wait_p90_s=_nearest_rank(self.waits, 0.9) if self.waits else None,
            energy_kwh=self.joules / 3.6e6,
        )


class UsageService:
    def __init__(self, db: Database, nodes: NodeRegistry, table: JobTable, history: History):
        self.db = db
        self.nodes = nodes
        self.table = table
        self.history = history

    # ---------------------------------------------------------------- window and caller
    @staticmethod
    def _window(since: float | None, until: float | None, now: float) -> tuple[float, float]:
        until = now if until is None else min(until, now)
        since = until - 30 * 86400.0 if since is None else since
        if since >= until:
            raise ValidationError("--since must be before --until (and before now)", path="since")
        if until - since > wu.MAX_USAGE_WINDOW_S:
            raise ValidationError("a usage window spans at most 3 years", path="since")
        return since, until

    @staticmethod
    def _whose(p: Principal, user: str | None) -> str | None:
        """Whose jobs the caller may see: members their own, admins anyone's (None: all)."""
        if p.is_admin:
            return user or None
        if user and user != p.name:
            raise PermissionDenied("members see their own usage only")
        return p.name

    # ---------------------------------------------------------------- facts
    async def _runs(self, since: float, until: float, user: str | None, now: float) -> list[_Run]:
        q = select(JobRun).where(JobRun.ended_at > since, JobRun.started_at < until)
        rq = select(JobRow).where(
            JobRow.state == "running", JobRow.started_at.is_not(None), JobRow.started_at < until
        )
        if user is not None:
            q = q.where(JobRun.user == user)
            rq = rq.where(JobRow.user == user)
        async with self.db.session() as s:
            done = (await s.execute(q)).scalars().all()
            running = (await s.execute(rq)).scalars().all()
        out = [
            _Run(
                r.job_id,
                r.user,
                r.node,
                r.node_id,
                tuple(r.gpu_indices or ()),
                r.gpu_model,
                dict(r.node_labels or {}),
                r.queued_at,
                r.started_at,
                r.ended_at,
            )
            for r in done
        ]
        recorded = {(r.job_id, r.attempt) for r in done}
        for j in running:
            if (j.id, j.attempt) in recorded or j.started_at is None:
                continue
            live = self.nodes.by_name.get(j.node or "")
            node_id = live.id if live is not None else -1
            gpus = tuple(j.gpu_indices or ())
            _, model, labels = self.table.node_facts(node_id, gpus)
            out.append(
                _Run(
                    j.id,
                    j.user,
                    j.node or "",
                    node_id,
                    gpus,
                    model,
                    labels,
                    queued_since(j),
                    j.started_at,
                    now,
                )
            )
        return out

    async def _gpu_series(
        self, runs: Sequence[_Run], since: float, until: float
    ) -> dict[tuple[int, str], _Series]:
        """(node id, "gpu<i>.util" | "gpu<i>.power") -> its points over the window."""
        wanted: dict[int, set[str]] = {}
        for r in runs:
            for i in r.gpus:
                wanted.setdefault(r.node_id, set()).update((f"gpu{i}.util", f"gpu{i}.power"))
        if not wanted:
            return {}
        await self.history.flush()  # finished minutes still in memory
        points: dict[tuple[int, str], list[tuple[float, float]]] = {}
        async with self.db.session() as s:
            for node_id, names in wanted.items():
                rows = await s.execute(
                    select(MetricPoint.series, MetricPoint.ts, MetricPoint.mean).where(
                        MetricPoint.node_id == node_id,
                        MetricPoint.series.in_(sorted(names)),
                        MetricPoint.ts > since - MINUTE_S,
                        MetricPoint.ts < until,
                    )
                )
                for name, ts, mean in rows:
                    points.setdefault((node_id, name), []).append((ts, mean))
        for node_id, names in wanted.items():
            for n, name, ts, mean in self.history.unflushed([node_id]):
                if name in names:
                    points.setdefault((n, name), []).append((ts, mean))
            for name, ts, mean in self.history.open_minutes(node_id):
                if name in names:
                    points.setdefault((node_id, name), []).append((ts, mean))
        return {k: _series(v) for k, v in points.items()}

    # ---------------------------------------------------------------- report
    async def report(
        self,
        p: Principal,
        *,
        by: wu.UsageBy,
        since: float | None,
        until: float | None,
        user: str | None = None,
    ) -> wu.UsageReport:
        now = time.time()
        whose = self._whose(p, user)
        since, until = self._window(since, until, now)
        runs = await self._runs(since, until, whose, now)
        series = await self._gpu_series(runs, since, until)
        groups: dict[str, _Acc] = {}
        total = _Acc()
        empty = _Series()
        for r in runs:
            start, end = max(r.started_at, since), min(r.ended_at, until)
            inside = max(end - start, 0.0)
            util = sum(
                series.get((r.node_id, f"gpu{i}.util"), empty).integral(start, end) for i in r.gpus
            )
            power = sum(
                series.get((r.node_id, f"gpu{i}.power"), empty).integral(start, end) for i in r.gpus
            )
            waited = since <= r.started_at < until
            for key in self._keys(r, by):
                self._add(groups.setdefault(key, _Acc()), r, inside, util, power, waited)
            self._add(total, r, inside, util, power, waited)
        rows = [acc.row(k) for k, acc in groups.items()]
        rows.sort(key=lambda row: (-row.gpu_hours, row.key))
        return wu.UsageReport(
            by=by, since=since, until=until, rows=rows, total=total.row("total"), user=whose or ""
        )

    @staticmethod
    def _keys(r: _Run, by: wu.UsageBy) -> list[str]:
        if by == "user":
            return [r.user]
        if by == "node":
            return [r.node]
        if by == "gpu-model":
            return [r.model or _NO_MODEL]
        return [f"{k}={v}" for k, v in sorted(r.labels.items())] or [_NO_LABEL]

    @staticmethod
    def _add(acc: _Acc, r: _Run, inside: float, util: float, power: float, waited: bool) -> None:
        acc.gpu_s += len(r.gpus) * inside
        acc.util_s += util / 100.0
        acc.joules += power
        if inside > 0 or waited:
            acc.jobs.add(r.job_id)
        if waited:
            acc.waits.append(max(r.started_at - r.queued_at, 0.0))

    # ---------------------------------------------------------------- timeline
    async def timeline(
        self, p: Principal, *, since: float | None, until: float | None, steps: int | None
    ) -> wu.UsageTimeline:
        now = time.time()
        since, until = self._window(since, until, now)
        n = min(max(steps or TIMELINE_STEPS, 1), MAX_TIMELINE_STEPS)
        step = (until - since) / n
        starts = [since + k * step for k in range(n)]
        await self.history.flush()
        bucket = (MetricPoint.ts - since) / step
        if self.db.engine.dialect.name == "postgresql":
            index = cast(func.floor(bucket), Integer)
        else:  # SQLite's CAST truncates toward zero, and ts >= since here
            index = cast(bucket, Integer)
        names = {n.id: n.name for n in self.nodes.nodes.values()}
        per_node: dict[str, list[float | None]] = {}
        sums = [0.0] * n
        counts = [0] * n
        async with self.db.session() as s:
            rows = await s.execute(
                select(MetricPoint.node_id, index, func.avg(MetricPoint.mean), func.count())
                .where(
                    MetricPoint.series.like("gpu%.util"),
                    MetricPoint.ts >= since,
                    MetricPoint.ts < until,
                )
                .group_by(MetricPoint.node_id, index)
            )
            for node_id, k, avg, count in rows:
                if not 0 <= k < n:
                    continue
                name = names.get(node_id, f"node {node_id}")
                per_node.setdefault(name, [None] * n)[k] = float(avg)
                sums[k] += float(avg) * count
                counts[k] += count
            runs = await self._runs(since, until, None, now)
            waiting = (
                await s.execute(
                    select(JobRow).where(
                        JobRow.started_at.is_(None),
                        JobRow.state != "held",
                        JobRow.created_at < until,
                        or_(JobRow.ended_at.is_(None), JobRow.ended_at > since),
                    )
                )
            ).scalars()
            spans = [(r.queued_at, r.started_at) for r in runs]
            spans += [(queued_since(j), j.ended_at or now) for j in waiting]
        queue = [sum(1 for a, b in spans if a <= t < b) for t in starts]
        waits: list[list[float]] = [[] for _ in range(n)]
        for r in runs:
            if since <= r.started_at < until:
                k = min(int((r.started_at - since) / step), n - 1)
                waits[k].append(max(r.started_at - r.queued_at, 0.0))
        return wu.UsageTimeline(
            since=since,
            until=until,
            step_s=step,
            ts=starts,
            util_total=[sums[k] / counts[k] if counts[k] else None for k in range(n)],
            util_by_node=dict(sorted(per_node.items())),
            queue_length=queue,
            wait_median_s=[statistics.median(w) if w else None for w in waits],
        )
