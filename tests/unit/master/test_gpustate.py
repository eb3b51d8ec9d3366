"""One GPU rule: the scheduler, the node views and the summary agree on every kind of GPU."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlsm.config import Settings
from mlsm.master.db import Database
from mlsm.master.gpustate import gpu_state
from mlsm.master.services.datasets import DatasetCatalog
from mlsm.master.services.joblogs import LogStore
from mlsm.master.services.jobs import (
    Accounts,
    Active,
    FairShare,
    JobTable,
    Launcher,
    SchedulingLoop,
)
from mlsm.master.services.livenode import LiveNode
from mlsm.master.services.nodes import NodeRegistry
from mlsm.master.services.nodeviews import NodeViews, busy_gpus, gpu_views
from mlsm.master.services.settings import SettingsService
from mlsm.master.services.telemetry import History
from mlsm.wire import agent as w
from mlsm.wire.api import GpuView

GIB = 1 << 30
HELD_JOB, UNATTRIBUTED_JOB, OTHER_JOB = 7, 8, 9
UNATTRIBUTED_PID, FOREIGN_PID, OTHER_PID = 5001, 4242, 6001

#: GPU index -> (what is on it, the state the rule must give).
CASES = {
    0: ("an mlsm job is placed on it", "mlsm"),
    1: ("a process mlsm did not start", "foreign"),
    2: ("its mlsm job's process, not yet attributed by the agent", "mlsm"),
    3: ("it could not be read", "error"),
    4: ("nothing", "free"),
    5: ("a process of an mlsm job placed elsewhere", "free"),
}


def _gpu(index: int, *processes: w.GpuProcess, error: str | None = None) -> w.GpuSample:
    return w.GpuSample(index=index, mem_total=80 * GIB, processes=list(processes), error=error)


def _node() -> LiveNode:
    n = LiveNode(id=1, name="gpu-01", secret_hash="h", labels={}, registered_at=0.0)
    n.last_seen = time.time()
    n.gpus = [
        _gpu(0),
        _gpu(1, w.GpuProcess(pid=FOREIGN_PID, user="bob", name="jupyter")),
        _gpu(2, w.GpuProcess(pid=UNATTRIBUTED_PID)),
        _gpu(3, error="NVML: GPU is lost"),
        _gpu(4),
        _gpu(5, w.GpuProcess(pid=OTHER_PID, job_id=OTHER_JOB)),
    ]
    n.jobs = {
        UNATTRIBUTED_JOB: w.JobReport(
            job_id=UNATTRIBUTED_JOB, state="running", pid=UNATTRIBUTED_PID
        ),
        OTHER_JOB: w.JobReport(job_id=OTHER_JOB, state="running", pid=OTHER_PID),
    }
    return n


def _holders() -> dict[int, list[int]]:
    return {0: [HELD_JOB], 2: [UNATTRIBUTED_JOB]}


def test_the_rule_names_each_kind_of_gpu() -> None:
    n = _node()
    pids = {r.pid for r in n.jobs.values() if r.pid}
    got = {g.index: gpu_state(g, _holders().get(g.index, []), pids) for g in n.gpus}
    assert {i: s.use for i, s in got.items()} == {i: want for i, (_, want) in CASES.items()}
    assert [i for i, s in got.items() if s.busy] == [0, 1, 2, 3]
    assert [i for i, s in got.items() if s.foreign] == [1]
    assert got[0].why == f"held by mlsm job(s) {HELD_JOB}"
    assert str(FOREIGN_PID) in got[1].why and "did not start" in got[1].why
    assert got[3].why == "could not be read: NVML: GPU is lost"
    assert got[4].why == "free"


def test_helpers_of_the_three_callers_agree() -> None:
    n, holders = _node(), _holders()
    views: list[GpuView] = gpu_views(n, holders)
    busy_in_view = [v.sample.index for v in views if v.busy]
    assert busy_in_view == [0, 1, 2, 3]
    assert [v.sample.index for v in views if v.foreign] == [1]
    assert views[0].job_ids == [HELD_JOB] and views[1].job_ids == []
    assert busy_gpus(n, holders) == len(busy_in_view)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[NodeRegistry, JobTable, SchedulingLoop, NodeViews]]:
    """The real services around one node, in memory (nothing is read from the database)."""
    settings = Settings(data_dir=str(tmp_path))
    db = Database("sqlite+aiosqlite://")
    nodes = NodeRegistry(db, settings, History(db, 5.0, 1.0))
    table = JobTable(FairShare(3600.0), LogStore(tmp_path / "logs"))
    catalog = DatasetCatalog(db, nodes)
    accounts = Accounts(db)
    launcher = Launcher(accounts, catalog, SettingsService(db))
    loop = SchedulingLoop(db, settings, nodes, table, accounts, catalog, launcher)
    n = _node()
    nodes.nodes[n.id] = n
    nodes.by_name[n.name] = n
    for job_id, gpu in ((HELD_JOB, 0), (UNATTRIBUTED_JOB, 2)):
        table.active[job_id] = Active(job_id, "alice", n.id, (gpu,), 0, "running", 0.0, 1, None)
    yield nodes, table, loop, NodeViews(settings, nodes, table)


def test_the_scheduler_the_node_view_and_the_summary_agree(
    lab: tuple[NodeRegistry, JobTable, SchedulingLoop, NodeViews],
) -> None:
    _, _, loop, views = lab
    free_for_scheduler = [
        g.index for cap in loop.node_caps(time.time()) for g in cap.gpus if g.free
    ]
    node = views.show("gpu-01")
    busy_in_view = [g.sample.index for g in node.gpus if g.busy]
    summary = views.summary()
    want_free = [i for i, (_, use) in CASES.items() if use == "free"]
    assert free_for_scheduler == want_free
    assert busy_in_view == [i for i in CASES if i not in want_free]
    assert [g.sample.index for g in node.gpus if g.foreign] == [1]
    assert summary.gpus_total == len(CASES)
    assert summary.gpus_busy == len(busy_in_view)


def test_a_change_shows_at_once_in_the_cached_views_and_capacities(
    lab: tuple[NodeRegistry, JobTable, SchedulingLoop, NodeViews],
) -> None:
    """A node's GPU views and the scheduler's GPU slots are kept until its next report or a
    change of the jobs placed on it: each such change shows in the very next call."""
    nodes, table, loop, views = lab
    n = nodes.nodes[1]

    def busy_views() -> list[int]:
        return [g.sample.index for g in views.show("gpu-01").gpus if g.busy]

    def free_slots() -> list[int]:
        return [g.index for cap in loop.node_caps(time.time()) for g in cap.gpus if g.free]

    assert busy_views() == [0, 1, 2, 3] and free_slots() == [4, 5]
    assert views.show("gpu-01").gpus[0] is views.show("gpu-01").gpus[0]  # kept, not rebuilt
    # a job placed on GPU 4, then gone
    table.active[99] = Active(99, "alice", n.id, (4,), 0, "assigned", 0.0, 1, None)
    assert busy_views() == [0, 1, 2, 3, 4] and free_slots() == [5]
    assert views.summary().gpus_busy == 5
    del table.active[99]
    assert busy_views() == [0, 1, 2, 3] and free_slots() == [4, 5]
    # a heartbeat: GPU 1's foreign process left; on GPU 5, a process the agent has not
    # attributed, whose pid is a job's (not foreign)
    hb = w.Heartbeat(
        protocol=n.protocol,
        seq=2,
        sent_at=time.time(),
        gpus=[
            _gpu(0),
            _gpu(1),
            _gpu(2, w.GpuProcess(pid=UNATTRIBUTED_PID)),
            _gpu(3, error="NVML: GPU is lost"),
            _gpu(4),
            _gpu(5, w.GpuProcess(pid=OTHER_PID)),
        ],
        jobs=list(n.jobs.values()),
    )
    asyncio.run(nodes.heartbeat(n, hb))
    assert busy_views() == [0, 2, 3] and free_slots() == [1, 4, 5]
    assert views.summary().gpus_busy == 3
    # an event: that job ended, so the process on GPU 5 is no job's any more
    asyncio.run(nodes.events(n, [w.JobReport(job_id=OTHER_JOB, state="exited", exit_code=0)]))
    assert busy_views() == [0, 2, 3, 5] and free_slots() == [1, 4]
    assert views.show("gpu-01").gpus[5].foreign
