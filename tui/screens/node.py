"""Node detail: per-GPU history graphs, GPU processes with their owners, the node's jobs and datasets."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Label, Sparkline, TabbedContent, TabPane

from mlsm.termsafe import visible
from mlsm.wire import api
from mlsm.wire.outputs import NodeDisk
from tui import fmt
from tui.screens.base import View
from tui.source import NodeDetail
from tui.widgets.plain import PlainLabel, PlainStatic
from tui.widgets.table import LabTable

SERIES = (("util", "util %"), ("mem", "mem %"), ("temp", "temp °C"), ("power", "power W"))


class GpuPanel(Vertical):
    """One GPU: a line of figures and four sparklines (utilisation, memory, temperature, power)."""

    DEFAULT_CSS = """
    GpuPanel { height: 3; }
    GpuPanel > Label { height: 1; width: 100%; }
    GpuPanel > Horizontal { height: 2; }
    GpuPanel Sparkline { width: 1fr; height: 2; margin-right: 1; }
    """

    def __init__(self, index: int) -> None:
        super().__init__(id=f"gpu{index}")
        self.index = index

    def compose(self) -> ComposeResult:
        yield PlainLabel(id="figures")
        with Horizontal():
            for key, _ in SERIES:
                yield Sparkline([], id=f"s-{key}")

    def show(self, gpu: api.GpuView, series: dict[str, list[float]]) -> None:
        s = gpu.sample
        mem = s.mem_used / s.mem_total if s.mem_total else 0.0
        text = Text()
        text.append(f"GPU{s.index} ", style="bold")
        text.append(f"{visible(s.name.replace('NVIDIA ', ''))[:18]:<18} ")
        text.append(f"util {s.util:3.0f}% ", style=fmt.level_style(s.util / 100))
        text.append(
            f"mem {fmt.human_bytes(s.mem_used)}/{fmt.human_bytes(s.mem_total)} ",
            style=fmt.level_style(mem),
        )
        text.append(f"{s.temperature:.0f}°C {s.power_w:.0f}/{s.power_limit_w:.0f}W")
        if gpu.job_ids:
            text.append(f" jobs {','.join(map(str, gpu.job_ids))}", style="green")
        if gpu.foreign:
            text.append(" foreign", style="bold red")
        if gpu.reserved_for is not None:
            text.append(f" reserved for {visible(gpu.reserved_for) or 'maintenance'}", style="cyan")
        if gpu.unreserved_use:
            text.append(" USED WITHOUT RESERVATION", style="bold red")
        if s.error:
            text.append(f" error: {visible(s.error)}", style="red")
        self.query_one("#figures", PlainLabel).update(text)
        for key, _ in SERIES:
            self.query_one(f"#s-{key}", Sparkline).data = series.get(key) or [0.0]


def _disk_text(d: NodeDisk) -> Text:
    """What mlsm keeps on the node's disk, and how full the disk is."""
    used = (d.fs_total - d.fs_free) / d.fs_total if d.fs_total else 0.0
    text = Text("\n disk ")
    text.append(
        f"jobs {fmt.human_bytes(d.jobs_bytes)} ({d.jobs_count} dirs)  "
        f"projects {fmt.human_bytes(d.projects_bytes)}  "
        f"code cache {fmt.human_bytes(d.code_cache_bytes)}  "
    )
    text.append(
        f"free {fmt.human_bytes(d.fs_free)} of {fmt.human_bytes(d.fs_total)}",
        style=fmt.level_style(used),
    )
    text.append(visible(f"  in {d.data_dir}"), style="dim")
    return text


class NodeScreen(View):
    MUTATING = frozenset({"drain", "resume"})
    ADMIN = frozenset({"drain", "resume"})
    BINDINGS = [
        Binding("d", "drain", "Drain"),
        Binding("u", "resume", "Resume"),
        Binding("p", "tab('processes')", "Processes"),
        Binding("J", "tab('jobs')", "Jobs"),
        Binding("S", "tab('datasets')", "Datasets"),
    ]

    def __init__(self, name: str) -> None:
        super().__init__()
        self.node_name = name
        self.title = f"Node {visible(name)}"
        self.detail: NodeDetail | None = None

    def body(self) -> ComposeResult:
        yield PlainStatic(f" {self.node_name}: loading…", id="node-info")
        yield Label(
            " history (10 min): " + " │ ".join(label for _, label in SERIES), id="gpu-legend"
        )
        yield VerticalScroll(id="gpus")
        with TabbedContent(initial="processes"):
            with TabPane("Processes", id="processes"):
                yield LabTable(id="procs")
            with TabPane("Jobs", id="jobs"):
                yield LabTable(id="node-jobs")
            with TabPane("Datasets", id="datasets"):
                yield LabTable(id="node-datasets")

    def setup(self) -> None:
        procs = self.query_one("#procs", LabTable)
        for label, key, width in (
            ("GPU/PID", "key", 12),
            ("User", "user", 10),
            ("Memory", "mem", 8),
            ("Owner", "owner", 20),
            ("Process", "pname", None),
        ):
            procs.add_column(label, key=key, width=width)
        jobs = self.query_one("#node-jobs", LabTable)
        for label, key, width in (
            ("ID", "id", 6),
            ("User", "user", 10),
            ("Name", "name", 16),
            ("State", "state", 10),
            ("GPUs", "gpus", 6),
            ("Runtime", "age", 8),
        ):
            jobs.add_column(label, key=key, width=width)
        sets = self.query_one("#node-datasets", LabTable)
        for label, key, width in (
            ("Name", "name", 20),
            ("Size", "size", 8),
            ("Files", "files", 8),
            ("Tags", "tags", 16),
            ("Path", "path", None),
        ):
            sets.add_column(label, key=key, width=width)
        procs.focus()

    async def fetch(self) -> NodeDetail:
        return await self.source.node_detail(self.node_name)

    def apply(self, data: NodeDetail) -> None:
        self.detail = data
        now = self.mlsm.now()
        node = data.node
        info = node.info
        host = node.host
        text = Text()
        text.append(f" {visible(node.name)} ", style="bold")
        state = "draining" if node.draining and node.state == "online" else node.state
        text.append_text(fmt.state_text(state))
        text.append(
            f"  seen {fmt.ago(node.last_seen, now)}  "
            + visible(f"{info.hostname} {info.os} {info.arch}")
        )
        text.append(f"\n CPU {info.cpu_cores} × {visible(info.cpu_model[:30])}")
        if host:
            text.append(f"  {host.cpu_percent:.0f}% load {host.load1:.1f}")
            text.append(f"  RAM {fmt.human_bytes(host.mem_used)}/{fmt.human_bytes(host.mem_total)}")
        if info.driver_version:
            text.append(visible(f"  driver {info.driver_version} CUDA {info.cuda_version}"))
        if node.labels:
            text.append(
                "  " + visible(" ".join(f"{k}={v}" for k, v in sorted(node.labels.items()))),
                style="cyan",
            )
        if info.disk is not None and info.disk.measured_at:
            text.append_text(_disk_text(info.disk))
        if node.gpu_error:
            text.append(f"\n GPU probe: {visible(node.gpu_error)}", style="red")
        self.query_one("#node-info", PlainStatic).update(text)
        self._gpus(node, data.history)
        self._procs(node)
        self.query_one("#node-jobs", LabTable).sync(
            [
                (
                    str(j.id),
                    [
                        str(j.id),
                        j.user,
                        j.name or " ".join(j.argv)[:16],
                        fmt.state_text(j.state),
                        str(j.gpus) if j.gpus else "-",  # a count; each GPU panel names its jobs
                        fmt.duration(
                            ((j.ended_at or now) - j.started_at) if j.started_at else None
                        ),
                    ],
                )
                for j in sorted(data.jobs, key=lambda j: -j.id)
            ]
        )
        rows = []
        for ds in sorted(data.datasets, key=lambda d: d.name):
            for copy in ds.copies:
                if copy.node == node.name:
                    rows.append(
                        (
                            ds.name,
                            [
                                ds.name,
                                fmt.human_bytes(copy.size),
                                str(copy.files),
                                ",".join(ds.tags),
                                copy.path,
                            ],
                        )
                    )
        self.query_one("#node-datasets", LabTable).sync(rows)

    def _gpus(self, node: api.Node, history: api.NodeHistory | None) -> None:
        box = self.query_one("#gpus", VerticalScroll)
        panels = list(box.query(GpuPanel))
        if len(panels) != len(node.gpus):
            box.remove_children()
            panels = [GpuPanel(g.sample.index) for g in node.gpus]
            box.mount_all(panels)
            self.call_after_refresh(self.mlsm.poll_now)  # fill the new panels right away
            return
        series = history.series if history else {}
        for panel, gpu in zip(panels, node.gpus, strict=False):
            i = gpu.sample.index
            panel.show(
                gpu,
                {key: [p.mean for p in series.get(f"gpu{i}.{key}", [])] for key, _ in SERIES},
            )

    def _procs(self, node: api.Node) -> None:
        rows = []
        for gpu in node.gpus:
            for proc in gpu.sample.processes:
                if proc.job_id is not None:
                    owner = Text(f"job {proc.job_id}", style="green")
                else:
                    owner = fmt.plain(f"foreign ({proc.user or 'unknown'})", "bold red")
                key = f"{gpu.sample.index}/{proc.pid}"
                rows.append(
                    (key, [key, proc.user or "?", fmt.human_bytes(proc.used_mem), owner, proc.name])
                )
        self.query_one("#procs", LabTable).sync(rows)

    # ------------------------------------------------------------ actions
    def focus_main(self) -> None:
        self.query_one("#procs", LabTable).focus()

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        table = {"processes": "#procs", "jobs": "#node-jobs", "datasets": "#node-datasets"}[tab]
        self.query_one(table, LabTable).focus()

    def action_drain(self) -> None:
        self.actions.node_action(self.node_name, "drain")

    def action_resume(self) -> None:
        self.actions.node_action(self.node_name, "resume")

    @on(DataTable.RowSelected, "#node-jobs")
    def _open_job(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value:
            self.mlsm.open_job(int(event.row_key.value))
