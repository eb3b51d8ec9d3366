"""Prometheus text exposition of the lab (``/metrics``): nodes, GPUs, jobs, connections.

Built with prometheus_client from the live node registry and job table at scrape time, so
it costs nothing between scrapes. It reveals node names and load, no secrets.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mlsm.master.connections import ConnectionGuard
from mlsm.master.services.jobs.table import JobTable
from mlsm.master.services.nodes import NodeRegistry

# Prometheus' text format; Litestar adds "; charset=utf-8" to any text/ type itself.
CONTENT_TYPE = "text/plain; version=0.0.4"


class LabMetrics:
    def __init__(
        self, nodes: NodeRegistry, table: JobTable, guard: ConnectionGuard | None = None
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_LabCollector(nodes, table, guard))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LabCollector(Collector):
    def __init__(self, nodes: NodeRegistry, table: JobTable, guard: ConnectionGuard | None) -> None:
        self.nodes = nodes
        self.table = table
        self.guard = guard

    def collect(self) -> Iterator[Metric]:
        reg = self.nodes
        now = time.time()
        up = GaugeMetricFamily(
            "mlsm_node_up",
            "1 when the node is online (heartbeats within the stale window)",
            labels=["node"],
        )
        state = GaugeMetricFamily(
            "mlsm_node_state", "Node state as a label set to 1", labels=["node", "state"]
        )
        cpu = GaugeMetricFamily("mlsm_node_cpu_percent", "Host CPU use", labels=["node"])
        mem = GaugeMetricFamily(
            "mlsm_node_memory_used_bytes", "Host memory in use", labels=["node"]
        )
        memt = GaugeMetricFamily("mlsm_node_memory_total_bytes", "Host memory", labels=["node"])
        gl = ["node", "gpu", "uuid", "name", "simulated"]
        gu = GaugeMetricFamily("mlsm_gpu_utilization_percent", "GPU utilisation", labels=gl)
        gm = GaugeMetricFamily("mlsm_gpu_memory_used_bytes", "GPU memory in use", labels=gl)
        gmt = GaugeMetricFamily("mlsm_gpu_memory_total_bytes", "GPU memory", labels=gl)
        gt = GaugeMetricFamily("mlsm_gpu_temperature_celsius", "GPU temperature", labels=gl)
        gp = GaugeMetricFamily("mlsm_gpu_power_watts", "GPU power draw", labels=gl)
        ge = GaugeMetricFamily("mlsm_gpu_error", "1 when the GPU could not be read", labels=gl)
        for n in reg.nodes.values():
            st = reg.state_of(n, now)
            up.add_metric([n.name], 1.0 if st in ("online", "draining") else 0.0)
            state.add_metric([n.name, st], 1.0)
            if n.host is not None:
                cpu.add_metric([n.name], n.host.cpu_percent)
                mem.add_metric([n.name], n.host.mem_used)
                memt.add_metric([n.name], n.host.mem_total)
            for g in n.gpus:
                lv = [n.name, str(g.index), g.uuid, g.name, "true" if g.simulated else "false"]
                ge.add_metric(lv, 1.0 if g.error else 0.0)
                if g.error:
                    continue
                gu.add_metric(lv, g.util)
                gm.add_metric(lv, g.mem_used)
                gmt.add_metric(lv, g.mem_total)
                gt.add_metric(lv, g.temperature)
                gp.add_metric(lv, g.power_w)
        jq = GaugeMetricFamily(
            "mlsm_jobs", "Jobs by state (queued and placed ones)", labels=["state"]
        )
        placed: dict[str, int] = {}
        for a in self.table.active.values():
            placed[a.state] = placed.get(a.state, 0) + 1
        jq.add_metric(["queued"], len(self.table.pending) + len(self.table.fenced))
        for k in ("assigned", "running"):
            jq.add_metric([k], placed.get(k, 0))
        yield from (up, state, cpu, mem, memt, gu, gm, gmt, gt, gp, ge, jq)
        yield from _connection_metrics(self.guard)


def _connection_metrics(guard: ConnectionGuard | None) -> Iterator[Metric]:
    """The HTTP server's connections (mlsm.master.connections); none when not under uvicorn."""
    if guard is None:
        return
    conns = GaugeMetricFamily(
        "mlsm_http_connections",
        "Open connections: waiting for a request (idle or unfinished head), or busy with one",
        labels=["state"],
    )
    waiting = len(guard.waiting)
    conns.add_metric(["waiting"], waiting)
    conns.add_metric(["busy"], guard.open - waiting)
    yield conns
    yield GaugeMetricFamily(
        "mlsm_http_connections_max", "The connection cap", value=guard.max_connections
    )
    dropped = CounterMetricFamily(
        "mlsm_http_connections_dropped",
        "Connections the master closed: evicted at the cap, refused at the cap (all busy), "
        "timed out (request head or body not sent in time)",
        labels=["reason"],
    )
    dropped.add_metric(["evicted"], guard.evicted)
    dropped.add_metric(["refused"], guard.refused)
    dropped.add_metric(["timed_out"], guard.timed_out)
    yield dropped
