"""Telemetry history: the last hour at heartbeat resolution in memory, 1-minute mean/max in
the database.

Per node, each series (``cpu``, ``mem``, ``gpu<i>.util``, ``gpu<i>.mem``, ``gpu<i>.temp``,
``gpu<i>.power``) keeps a ring of uint16 tenths (2 bytes a point, one shared timestamp
column per node: 500 nodes x 8 GPUs x one hour at 2 s cost ~70 MB) and a running minute
bucket. Finished
minutes queue up and are written by :meth:`History.flush` in one transaction for all nodes;
nothing here touches the database per heartbeat.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from sqlalchemy import delete, select, text

from mlsm.master.db import Database
from mlsm.master.db.models import MetricPoint
from mlsm.wire.agent import GpuSample, HostSample
from mlsm.wire.api import HistoryPoint

MEMORY_WINDOW_S = 3600.0
_INSERT_POINT = text(
    "INSERT INTO metric_points (node_id, series, ts, mean, max) VALUES (:n, :s, :t, :a, :x)"
)
MINUTE_S = 60.0


MISSING = 0xFFFF  # a series without a value at that sample (e.g. a GPU that errored)
SCALE = 10.0  # values are kept as uint16 tenths: 0.0 .. 6553.4 (percent, Celsius, watts)


def _enc(v: float) -> int:
    return min(MISSING - 1, max(0, int(v * SCALE + 0.5)))


class _NodeHistory:
    """One node's ring: a shared timestamp column and a uint16 column per series.

    Arrays grow by appending until the window is full, then wrap; a series that appears
    later is back-filled with MISSING. Per point: 8 bytes of time per node plus 2 bytes per
    series, so a node with 8 GPUs costs about 140 KiB for an hour at a 2 s interval.
    """

    __slots__ = ("buckets", "n", "pos", "size", "ts", "vals")

    def __init__(self, size: int) -> None:
        self.size = size
        self.ts = array("d")
        self.vals: dict[str, array[int]] = {}
        self.pos = 0  # next slot to overwrite once full (= the oldest)
        self.n = 0
        self.buckets: dict[str, _Bucket] = {}

    def add(self, ts: float, pairs: list[tuple[str, float]]) -> None:
        if self.n < self.size:
            idx = self.n
            self.ts.append(ts)
            for arr in self.vals.values():
                arr.append(MISSING)
            self.n += 1
        else:
            idx = self.pos
            self.ts[idx] = ts
            self.pos = (self.pos + 1) % self.size
            for arr in self.vals.values():
                arr[idx] = MISSING
        for name, v in pairs:
            col = self.vals.get(name)
            if col is None:
                col = self.vals[name] = array("H", [MISSING]) * len(self.ts)
            col[idx] = _enc(v)

    def order(self) -> list[int]:
        if self.n < self.size:
            return list(range(self.n))
        return list(range(self.pos, self.size)) + list(range(self.pos))

    def since(self, start: float) -> dict[str, list[tuple[float, float]]]:
        idx = [i for i in self.order() if self.ts[i] >= start]
        out: dict[str, list[tuple[float, float]]] = {}
        for name, arr in self.vals.items():
            pts = [(self.ts[i], arr[i] / SCALE) for i in idx if arr[i] != MISSING]
            if pts:
                out[name] = pts
        return out


@dataclass(slots=True)
class _Bucket:
    minute: float = 0.0
    total: float = 0.0
    count: int = 0
    peak: float = float("-inf")


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
            h = self._nodes[node_id] = _NodeHistory(self.ring_size)
        minute = ts - (ts % MINUTE_S)
        pairs = series_of(host, gpus)
        h.add(ts, pairs)
        for name, v in pairs:
            b = h.buckets.get(name)
            if b is None:
                b = h.buckets[name] = _Bucket(minute=minute)
            elif b.minute != minute:
                if b.count:
                    self._pending.append(
                        {
                            "n": node_id,
                            "s": name,
                            "t": b.minute,
                            "a": b.total / b.count,
                            "x": b.peak,
                        }
                    )
                b.minute, b.total, b.count, b.peak = minute, 0.0, 0, float("-inf")
            b.total += v
            b.count += 1
            if v > b.peak:
                b.peak = v

    def peak_since(
        self, node_id: int, series: list[str], after: float
    ) -> list[tuple[float, float]]:
        """(time, the highest of ``series`` then) of each sample after ``after`` that has a
        value of every one of them (the idle-GPU policy reads a job's GPUs this way)."""
        h = self._nodes.get(node_id)
        if h is None or not series:
            return []
        cols = [h.vals.get(name) for name in series]
        if any(c is None for c in cols):
            return []
        out: list[tuple[float, float]] = []
        for i in h.order():
            ts = h.ts[i]
            if ts <= after:
                continue
            vals = [c[i] for c in cols if c is not None]
            if MISSING in vals:
                continue
            out.append((ts, max(vals) / SCALE))
        return out

    def open_minutes(self, node_id: int) -> list[tuple[str, float, float]]:
        """(series, minute, mean so far) of the minute still being gathered (not yet queued
        for the database): usage reports count it for jobs still running."""
        h = self._nodes.get(node_id)
        if h is None:
            return []
        return [(name, b.minute, b.total / b.count) for name, b in h.buckets.items() if b.count]

    def unflushed(self, node_ids: Iterable[int]) -> list[tuple[int, str, float, float]]:
        """(node, series, minute, mean) of finished minutes not yet written."""
        want = set(node_ids)
        out = []
        for p in self._pending:
            if p["n"] in want:
                out.append((int(p["n"]), str(p["s"]), cast(float, p["t"]), cast(float, p["a"])))
        return out

    def forget(self, node_id: int) -> None:
        self._nodes.pop(node_id, None)

    def pending(self) -> int:
        return len(self._pending)

    async def flush(self) -> int:
        """Write finished minutes in one transaction; returns how many points."""
        if not self._pending:
            return 0
        batch, self._pending = self._pending, []
        async with self.db.transaction() as s:  # one executemany, no ORM work per point
            await s.execute(_INSERT_POINT, batch)
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
                for name, pts in h.since(start).items():
                    series[name] = [HistoryPoint(ts=t, mean=v, max=v) for t, v in pts]
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
