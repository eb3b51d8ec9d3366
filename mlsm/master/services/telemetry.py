"""Telemetry history: the last hour at heartbeat resolution in memory, 1-minute mean/max in
the database.

Per node, each series (``cpu``, ``mem``, ``gpu<i>.util``, ``gpu<i>.mem``, ``gpu<i>.temp``,
``gpu<i>.power``) keeps a ring of float32 samples (``array('f')``: 4 bytes a point, so 500
nodes x 8 GPUs x one hour cost ~120 MB at most) and a running minute bucket. Finished
minutes queue up and are written by :meth:`History.flush` in one transaction for all nodes;
nothing here touches the database per heartbeat.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import delete, insert, select

from mlsm.master.db import Database
from mlsm.master.db.models import MetricPoint
from mlsm.wire.agent import GpuSample, HostSample
from mlsm.wire.api import HistoryPoint

MEMORY_WINDOW_S = 3600.0
MINUTE_S = 60.0


class _Ring:
    """Fixed-size ring of (ts, value) as two float arrays."""

    __slots__ = ("n", "pos", "size", "ts", "val")

    def __init__(self, size: int) -> None:
        self.size = size
        self.ts = array("d", bytes(8 * size))
        self.val = array("f", bytes(4 * size))
        self.pos = 0
        self.n = 0

    def add(self, ts: float, v: float) -> None:
        self.ts[self.pos] = ts
        self.val[self.pos] = v
        self.pos = (self.pos + 1) % self.size
        self.n = min(self.n + 1, self.size)

    def since(self, start: float) -> list[tuple[float, float]]:
        out = []
        first = (self.pos - self.n) % self.size
        for i in range(self.n):
            j = (first + i) % self.size
            if self.ts[j] >= start:
                out.append((self.ts[j], float(self.val[j])))
        return out


@dataclass(slots=True)
class _Bucket:
    minute: float = 0.0
    total: float = 0.0
    count: int = 0
    peak: float = float("-inf")


@dataclass(slots=True)
class _NodeHistory:
    rings: dict[str, _Ring] = field(default_factory=dict)
    buckets: dict[str, _Bucket] = field(default_factory=dict)


def series_of(host: HostSample, gpus: Iterable[GpuSample]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = [("cpu", host.cpu_percent)]
    if host.mem_total:
        out.append(("mem", 100.0 * host.mem_used / host.mem_total))
    for g in gpus:
        if g.error:
            continue
        p = f"gpu{g.index}."
        out.append((p + "util", g.util))
        out.append((p + "mem", 100.0 * g.mem_used / g.mem_total if g.mem_total else 0.0))
        out.append((p + "temp", g.temperature))
        out.append((p + "power", g.power_w))
    return out


class History:
    def __init__(self, db: Database, interval_s: float, retention_days: float) -> None:
        self.db = db
        self.ring_size = max(16, int(MEMORY_WINDOW_S / max(interval_s, 0.1)) + 1)
        self.retention_s = retention_days * 86400
        self._nodes: dict[int, _NodeHistory] = {}
        self._pending: list[dict[str, object]] = []

    def record(self, node_id: int, ts: float, host: HostSample, gpus: Iterable[GpuSample]) -> None:
        h = self._nodes.get(node_id)
        if h is None:
            h = self._nodes[node_id] = _NodeHistory()
        minute = ts - (ts % MINUTE_S)
        for name, v in series_of(host, gpus):
            ring = h.rings.get(name)
            if ring is None:
                ring = h.rings[name] = _Ring(self.ring_size)
            ring.add(ts, v)
            b = h.buckets.get(name)
            if b is None:
                b = h.buckets[name] = _Bucket(minute=minute)
            elif b.minute != minute:
                if b.count:
                    self._pending.append(
                        {
                            "node_id": node_id,
                            "series": name,
                            "ts": b.minute,
                            "mean": b.total / b.count,
                            "max": b.peak,
                        }
                    )
                b.minute, b.total, b.count, b.peak = minute, 0.0, 0, float("-inf")
            b.total += v
            b.count += 1
            if v > b.peak:
                b.peak = v

    def forget(self, node_id: int) -> None:
        self._nodes.pop(node_id, None)

    def pending(self) -> int:
        return len(self._pending)

    async def flush(self) -> int:
        """Write finished minutes in one transaction; returns how many points."""
        if not self._pending:
            return 0
        batch, self._pending = self._pending, []
        async with self.db.transaction() as s:
            await s.execute(insert(MetricPoint), batch)
        return len(batch)

    async def prune(self, now: float | None = None) -> None:
        cutoff = (now or time.time()) - self.retention_s
        async with self.db.transaction() as s:
            await s.execute(delete(MetricPoint).where(MetricPoint.ts < cutoff))

    async def window(
        self, node_id: int, window_s: float, now: float | None = None
    ) -> tuple[float, dict[str, list[HistoryPoint]]]:
        """A node's history: memory rings for up to an hour, the database beyond that."""
        now = now or time.time()
        start = now - window_s
        if window_s <= MEMORY_WINDOW_S:
            h = self._nodes.get(node_id)
            series: dict[str, list[HistoryPoint]] = {}
            if h is not None:
                for name, ring in h.rings.items():
                    series[name] = [HistoryPoint(ts=t, mean=v, max=v) for t, v in ring.since(start)]
            return 0.0, series
        async with self.db.session() as s:
            rows = (
                await s.execute(
                    select(MetricPoint.series, MetricPoint.ts, MetricPoint.mean, MetricPoint.max)
                    .where(MetricPoint.node_id == node_id, MetricPoint.ts >= start)
                    .order_by(MetricPoint.ts)
                )
            ).all()
        out: dict[str, list[HistoryPoint]] = {}
        for name, ts, mean, mx in rows:
            out.setdefault(name, []).append(HistoryPoint(ts=ts, mean=mean, max=mx))
        return MINUTE_S, out
