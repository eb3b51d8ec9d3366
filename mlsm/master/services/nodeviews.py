"""Nodes as people see them: each node with its GPUs' holders and states, the lab summary,
and the admin changes to a node (drain, resume, labels, container network) answered with
the node's view.

Whether a GPU is busy or foreign is :func:`mlsm.master.gpustate.gpu_state`'s word, the same
rule the scheduler places by, so the dashboard, the summary and placement always agree.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from mlsm.config import Settings
from mlsm.master.gpustate import gpu_state
from mlsm.master.services.jobs.table import JobTable
from mlsm.master.services.livenode import LiveNode
from mlsm.master.services.nodes import NodeRegistry
from mlsm.master.services.overviewlog import OverviewLog
from mlsm.wire import api

#: Node states in which a node counts as online in the summary.
UP_STATES = ("online", "draining")


def gpu_views(
    node: LiveNode,
    holders: Mapping[int, list[int]],
    reserved: Mapping[int, tuple[int, str]] | None = None,
    owners: Mapping[int, str] | None = None,
) -> list[api.GpuView]:
    """Each GPU of ``node`` with the mlsm jobs on it (``holders``: GPU index -> job ids),
    and the reservation that is on there (``reserved``: GPU index -> (id, user); ``owners``:
    job id -> user), flagged when someone else uses it."""
    pids = {r.pid for r in node.jobs.values() if r.pid}
    out = []
    for g in node.gpus:
        jobs = holders.get(g.index, [])
        state = gpu_state(g, jobs, pids)
        view = api.GpuView(sample=g, job_ids=jobs, foreign=state.foreign, busy=state.busy)
        held = (reserved or {}).get(g.index)
        if held is not None:
            rid, user = held
            view.reservation_id, view.reserved_for = rid, user
            view.unreserved_use = state.foreign or any(
                (owners or {}).get(j, user) != user for j in jobs
            )
        out.append(view)
    return out


def busy_gpus(node: LiveNode, holders: Mapping[int, list[int]]) -> int:
    """How many of ``node``'s GPUs are busy (for the summary)."""
    pids = {r.pid for r in node.jobs.values() if r.pid}
    return sum(gpu_state(g, holders.get(g.index, ()), pids).busy for g in node.gpus)


class NodeViews:
    def __init__(self, settings: Settings, nodes: NodeRegistry, table: JobTable) -> None:
        self.settings = settings
        self.nodes = nodes
        self.table = table
        #: The reservations on a node now, by GPU (the reservation service's).
        self.reserved_on: Callable[[str, float], Mapping[int, Any]] = lambda node, now: {}
        #: node id -> (the node, its ``seq``, what else the views were built from, the
        #: views): a dashboard polls far more often than a node reports.
        self._kept: dict[int, tuple[LiveNode, int, object, list[api.GpuView]]] = {}
        #: The overview rows as last answered, to answer a cursor with what changed.
        self.overview_log = OverviewLog()

    def view(
        self,
        n: LiveNode,
        holders: Mapping[int, dict[int, list[int]]] | None = None,
        now: float | None = None,
    ) -> api.Node:
        """``holders``: node id -> GPU index -> job ids, when the caller has them already."""
        if holders is None:
            holders = self.table.gpu_holders()
        return api.Node(
            id=n.id,
            name=n.name,
            state=self.nodes.state_of(n, now),
            labels=n.labels,
            draining=n.draining,
            last_seen=n.last_seen,
            registered_at=n.registered_at,
            # The node's account list is for placement, not for every dashboard poll.
            info=msgspec.structs.replace(n.info, unix_users=[]) if n.info.unix_users else n.info,
            host=n.host,
            gpus=self._gpus(n, holders.get(n.id, {})),
            gpu_error=n.gpu_error,
            docker_network=n.docker_network,
            running_jobs=sum(1 for r in n.jobs.values() if r.state in ("starting", "running")),
        )

    def _gpus(self, n: LiveNode, holders: Mapping[int, list[int]]) -> list[api.GpuView]:
        """The node's GPU views, kept until its next report (``seq``) or a change of the
        jobs placed on it or of the reservations on it (views are never changed once built)."""
        on = self.reserved_on(n.name, time.time())
        if on:
            owners = {a.job_id: a.user for a in self.table.active.values() if a.node_id == n.id}
            reserved = {i: (r.id, r.user) for i, r in on.items()}
            key: object = (holders, reserved, owners)
        else:
            key = holders
        hit = self._kept.get(n.id)
        if hit is not None and hit[0] is n and hit[1] == n.seq and hit[2] == key:
            return hit[3]
        views = gpu_views(n, holders, reserved, owners) if on else gpu_views(n, holders)
        if len(self._kept) > 2 * len(self.nodes.nodes) + 16:  # forget removed nodes
            self._kept = {k: v for k, v in self._kept.items() if k in self.nodes.nodes}
        self._kept[n.id] = (n, n.seq, key, views)
        return views

    def query(self, labels: Mapping[str, str]) -> list[api.Node]:
        """Every node carrying all of ``labels``, by name."""
        holders = self.table.gpu_holders()
        return [
            self.view(n, holders)
            for n in sorted(self.nodes.nodes.values(), key=lambda n: n.name)
            if all(n.labels.get(k) == v for k, v in labels.items())
        ]

    def show(self, name: str) -> api.Node:
        return self.view(self.nodes.get(name))

    async def history(self, name: str, window: float) -> api.NodeHistory:
        n = self.nodes.get(name)
        resolution, series = await self.nodes.history.window(n.id, window)
        return api.NodeHistory(
            node=n.name, resolution_s=resolution or self.settings.heartbeat_interval, series=series
        )

    async def set_draining(self, name: str, draining: bool) -> api.Node:
        return self.view(await self.nodes.set_draining(name, draining))

    async def set_labels(self, name: str, labels: dict[str, str] | None) -> api.Node:
        n = self.nodes.get(name)
        if labels is not None:
            n = await self.nodes.set_labels(name, labels)
        return self.view(n)

    async def update(self, name: str, body: api.NodeUpdate) -> api.Node:
        """Labels and/or the network mode of the node's container jobs."""
        n = self.nodes.get(name)
        if body.docker_network is not None:
            n = await self.nodes.set_docker_network(name, body.docker_network)
        if body.labels is not None:
            n = await self.nodes.set_labels(name, body.labels)
        return self.view(n)

    def overview(self, since: str | None = None) -> api.LabOverview:
        """The dashboard's overview: the summary and each node's row, by name; with
        ``since`` (an earlier answer's cursor) only the rows changed after it
        (:mod:`mlsm.master.services.overviewlog`)."""
        running: dict[int, list[tuple[int, str]]] = {}
        for a in self.table.active.values():
            if a.state == "running":
                running.setdefault(a.node_id, []).append((a.job_id, a.user))
        holders = self.table.gpu_holders()
        now = time.time()
        self.overview_log.record(
            api.node_row(self.view(n, holders, now), running.get(n.id, []))
            for n in sorted(self.nodes.nodes.values(), key=lambda n: n.name)
        )
        return self.overview_log.answer(self.summary(), since)

    def summary(self) -> api.LabSummary:
        now = time.time()
        online = total = busy = 0
        holders = self.table.gpu_holders()
        for n in self.nodes.nodes.values():
            if self.nodes.state_of(n, now) in UP_STATES:
                online += 1
            total += len(n.gpus)
            busy += sum(g.busy for g in self._gpus(n, holders.get(n.id, {})))
        by_user: dict[str, int] = {}
        for a in self.table.active.values():
            by_user[a.user] = by_user.get(a.user, 0) + a.gpu_count
        return api.LabSummary(
            nodes_online=online,
            nodes_total=len(self.nodes.nodes),
            gpus_total=total,
            gpus_busy=busy,
            jobs_running=len(self.table.active),
            jobs_queued=len(self.table.pending) + len(self.table.fenced),
            gpus_by_user={u: g for u, g in by_user.items() if g},
        )
