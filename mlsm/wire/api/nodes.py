"""JSON API structs for nodes: a node's view and history, the lab's summary and the dashboard's compact overview."""

from __future__ import annotations

import msgspec
from msgspec import Struct

from mlsm.wire.api.base import LabelKey, LabelVal, NodeState, ShortStr
from mlsm.wire.node import GpuSample, HostSample, NodeInfo


# ---------------------------------------------------------------- nodes
class GpuView(Struct, kw_only=True):
    """A GPU as people see it: telemetry plus who holds it."""

    sample: GpuSample
    job_ids: list[int] = []  # mlsm jobs allocated to this GPU
    foreign: bool = False  # processes mlsm did not start hold memory on it
    busy: bool = False
    # A reservation that is on here: whose ("" = maintenance), its id, and whether someone
    # else uses the GPU ("used without reservation": another user's job, or a foreign process).
    reserved_for: str | None = None
    reservation_id: int | None = None
    unreserved_use: bool = False


class Node(Struct, kw_only=True):
    id: int
    name: str
    state: NodeState
    labels: dict[str, str] = {}
    draining: bool = False
    last_seen: float | None = None
    registered_at: float = 0.0
    info: NodeInfo = msgspec.field(default_factory=NodeInfo)
    host: HostSample | None = None
    gpus: list[GpuView] = []
    gpu_error: str | None = None
    running_jobs: int = 0
    docker_network: str = "none"


class NodeUpdate(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    labels: dict[LabelKey, LabelVal] | None = None
    docker_network: ShortStr | None = None


class HistoryPoint(Struct, kw_only=True, array_like=True):
    ts: float
    mean: float
    max: float


class NodeHistory(Struct, kw_only=True):
    node: str
    resolution_s: float
    series: dict[str, list[HistoryPoint]]  # "cpu", "mem", "gpu0.util", "gpu0.mem", ...


#: The unit of each history series, by the last part of its name ("gpu0.temp" -> "temp").
HISTORY_UNITS: dict[str, str] = {
    "cpu": "% CPU",
    "mem": "% of memory",
    "util": "% busy",
    "temp": "°C",
    "power": "W",
}


def history_unit(series: str) -> str:
    """``"gpu0.mem"`` -> ``"% of memory"``; '' for a series this mlsm does not know."""
    return HISTORY_UNITS.get(series.rsplit(".", 1)[-1], "")


# ---------------------------------------------------------------- lab summary
class LabSummary(Struct, kw_only=True):
    nodes_online: int
    nodes_total: int
    gpus_total: int
    gpus_busy: int
    jobs_running: int
    jobs_queued: int
    gpus_by_user: dict[str, int] = {}


class GpuBrief(Struct, array_like=True, gc=False):
    """One GPU in a node's overview row: what its bars show. Rows are decoded by the
    thousand every poll and hold no cycle: kept out of the cyclic collector (``gc``)."""

    util: float
    mem_used: int
    mem_total: int


class NodeRow(Struct, kw_only=True, omit_defaults=True, gc=False):
    """A node as the dashboard's overview row shows it, and nothing more: a 1,000-node
    lab's full node list is megabytes a poll, its rows a tenth of that. Not tracked by
    the cyclic collector (no field can refer back to a row)."""

    name: str
    state: NodeState
    labels: dict[str, str] = {}
    draining: bool = False
    gpu_error: str | None = None
    gpu_model: str = ""  # the first GPU's name
    simulated: bool = False
    gpus: list[GpuBrief] = []
    cpu_percent: float | None = None  # None: no host sample yet
    mem_used: int = 0
    mem_total: int = 0
    running_jobs: int = 0  # processes of mlsm jobs the node reports running
    jobs: list[tuple[int, str]] = []  # (job id, user) of the jobs running there, by id


class LabOverview(Struct, kw_only=True):
    """The overview in one answer: the lab's totals and the nodes' rows, by name.

    Asked with ``since`` (the ``cursor`` of an earlier answer), ``nodes`` holds only the
    rows that changed after it and ``removed`` the names of the nodes gone since; ``full``
    says the answer is the whole list instead (no cursor, or one this master cannot
    answer from: too old, or from before a restart)."""

    summary: LabSummary
    nodes: list[NodeRow]
    cursor: str = ""  # send it back as ``since`` to get only what changed after this
    full: bool = True  # ``nodes`` is every node (false: only the changed ones)
    removed: list[str] = []  # nodes gone since ``since`` (only when not ``full``)


def node_row(node: Node, running: list[tuple[int, str]]) -> NodeRow:
    """``node``'s overview row; ``running``: (id, user) of the jobs running on it."""
    host = node.host
    return NodeRow(
        name=node.name,
        state=node.state,
        labels=node.labels,
        draining=node.draining,
        gpu_error=node.gpu_error,
        gpu_model=node.gpus[0].sample.name if node.gpus else "",
        simulated=any(g.sample.simulated for g in node.gpus),
        gpus=[GpuBrief(g.sample.util, g.sample.mem_used, g.sample.mem_total) for g in node.gpus],
        cpu_percent=host.cpu_percent if host else None,
        mem_used=host.mem_used if host else 0,
        mem_total=host.mem_total if host else 0,
        running_jobs=node.running_jobs,
        jobs=sorted(running),
    )
