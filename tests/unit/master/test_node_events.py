"""Node events reach every subscribed listener, in the order they subscribed."""

from __future__ import annotations

from pathlib import Path

from mlsm.config import Settings
from mlsm.master.db import Database
from mlsm.master.services.livenode import LiveNode, NodeEvents
from mlsm.master.services.nodes import NodeRegistry
from mlsm.master.services.telemetry import History
from mlsm.wire import agent as w
from mlsm.wire.ints import INT64_MAX

PROTOCOL = 1


class Recorder(NodeEvents):
    """Hears what it overrides; the rest is NodeEvents' no-op."""

    def __init__(self, name: str, heard: list[tuple[str, str]]) -> None:
        self.name = name
        self.heard = heard

    async def node_reported(self, node: LiveNode, reports: list[w.JobReport], full: bool) -> None:
        self.heard.append((self.name, f"reports full={full} jobs={[r.job_id for r in reports]}"))

    async def node_transfers(self, node: LiveNode, progress: list[w.TransferProgress]) -> None:
        self.heard.append((self.name, f"transfers {[p.command_id for p in progress]}"))

    def node_changed(self) -> None:
        self.heard.append((self.name, "changed"))


class OnlyChanges(NodeEvents):
    def __init__(self, heard: list[tuple[str, str]]) -> None:
        self.heard = heard

    def node_changed(self) -> None:
        self.heard.append(("scheduler", "changed"))


def _registry(tmp_path: Path) -> tuple[NodeRegistry, LiveNode]:
    db = Database("sqlite+aiosqlite://")  # never reached: these events touch no table
    reg = NodeRegistry(db, Settings(data_dir=str(tmp_path)), History(db, 2.0, 1.0))
    n = LiveNode(id=1, name="gpu-01", secret_hash="h", labels={}, registered_at=0.0)
    reg.nodes[n.id], reg.by_name[n.name] = n, n
    return reg, n


async def test_a_heartbeat_tells_each_listener_in_turn(tmp_path: Path) -> None:
    reg, n = _registry(tmp_path)
    heard: list[tuple[str, str]] = []
    reg.subscribe(Recorder("jobs", heard))
    reg.subscribe(OnlyChanges(heard))
    reg.subscribe(Recorder("transfers", heard))
    hb = w.Heartbeat(
        protocol=PROTOCOL,
        jobs=[w.JobReport(job_id=3, state="running", pid=100)],
        transfers=[w.TransferProgress(command_id=INT64_MAX)],
    )
    await reg.heartbeat(n, hb)  # the node's first heartbeat: it came online
    assert heard == [
        ("jobs", "reports full=True jobs=[3]"),
        ("transfers", "reports full=True jobs=[3]"),
        ("jobs", f"transfers [{INT64_MAX}]"),
        ("transfers", f"transfers [{INT64_MAX}]"),
        ("jobs", "changed"),
        ("scheduler", "changed"),
        ("transfers", "changed"),
    ]
    heard.clear()
    await reg.heartbeat(n, w.Heartbeat(protocol=PROTOCOL))  # online already, no jobs left
    assert heard == [
        ("jobs", "reports full=True jobs=[]"),  # the jobs it ran are gone: a full report
        ("transfers", "reports full=True jobs=[]"),
    ]


async def test_job_events_are_partial_reports(tmp_path: Path) -> None:
    reg, n = _registry(tmp_path)
    heard: list[tuple[str, str]] = []
    reg.subscribe(Recorder("jobs", heard))
    await reg.events(n, [w.JobReport(job_id=5, state="exited", exit_code=0)])
    assert heard == [("jobs", "reports full=False jobs=[5]")]
    assert n.jobs[5].exit_code == 0


async def test_a_dataset_change_is_announced_to_every_listener(tmp_path: Path) -> None:
    reg, _ = _registry(tmp_path)
    heard: list[tuple[str, str]] = []
    reg.subscribe(OnlyChanges(heard))
    reg.subscribe(Recorder("jobs", heard))
    reg.announce_change()
    assert heard == [("scheduler", "changed"), ("jobs", "changed")]


async def test_a_node_with_work_placed_reaches_the_listeners_even_reporting_no_job(
    tmp_path: Path,
) -> None:
    """An agent that lost a StartJob on an otherwise idle node reports no job at all: the
    job service must still hear its full reports, or the job stays "assigned" for ever."""
    reg, n = _registry(tmp_path)
    heard: list[tuple[str, str]] = []

    class Jobs(Recorder):
        async def node_reported(
            self, node: LiveNode, reports: list[w.JobReport], full: bool
        ) -> None:
            await super().node_reported(node, reports, full)
            node.has_work = holds_work  # as the job service does after a full report

    reg.subscribe(Jobs("jobs", heard))
    holds_work = True
    await reg.heartbeat(n, w.Heartbeat(protocol=PROTOCOL))  # never reported a job
    await reg.heartbeat(n, w.Heartbeat(protocol=PROTOCOL))
    assert [h for h in heard if h[1].startswith("reports")] == [
        ("jobs", "reports full=True jobs=[]"),
        ("jobs", "reports full=True jobs=[]"),
    ]
    heard.clear()
    holds_work = False
    await reg.heartbeat(n, w.Heartbeat(protocol=PROTOCOL))  # told: nothing placed here
    await reg.heartbeat(n, w.Heartbeat(protocol=PROTOCOL))  # an idle node costs nothing
    assert heard == [("jobs", "reports full=True jobs=[]")]
