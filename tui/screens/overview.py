"""Lab overview: every node with GPU bars, a history sparkline, CPU/RAM and jobs; lab totals."""

from __future__ import annotations

from collections import defaultdict, deque

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Input

from mlsm.termsafe import visible
from mlsm.wire import api
from tui import fmt
from tui.screens.base import View
from tui.source import Overview
from tui.widgets.plain import PlainStatic
from tui.widgets.table import LabTable

#: Samples kept per node for its sparkline (one per poll).
HISTORY_POINTS = 60
WIDE = 120


def node_util(node: api.Node) -> float:
    """What the sparkline shows: mean GPU utilisation, or CPU on GPU-less nodes."""
    if node.gpus:
        return sum(g.sample.util for g in node.gpus) / len(node.gpus)
    return node.host.cpu_percent if node.host else 0.0


def gpu_model(name: str) -> str:
    """``NVIDIA A100-SXM4-80GB`` -> ``A100-SXM4-80GB``: the vendor (or "Simulated") is noise
    in a column of models."""
    for prefix in ("NVIDIA ", "Simulated "):
        name = name.removeprefix(prefix)
    return name


def mem_frac(used: int, total: int) -> float:
    return used / total if total else 0.0


class OverviewScreen(View):
    TITLE = "Nodes"
    MUTATING = frozenset({"drain", "resume"})
    ADMIN = frozenset({"drain", "resume"})
    BINDINGS = [
        Binding("enter", "open", "Open"),
        Binding("slash", "filter", "Filter"),
        Binding("d", "drain", "Drain"),
        Binding("u", "resume", "Resume"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=HISTORY_POINTS))
        self.data: Overview | None = None
        self.wide = False
        self._built_width = 0
        self._totals_shown: Text | None = None
        #: Per node: the inputs of its row and the cells built from them, reused while equal.
        self._row_cache: dict[str, tuple[object, list[object]]] = {}

    def body(self) -> ComposeResult:
        yield PlainStatic("loading the lab…", id="totals")
        yield Input(placeholder="filter nodes: name, state or label", id="filter", classes="filter")
        yield LabTable(id="nodes")

    @property
    def table(self) -> LabTable:
        return self.query_one("#nodes", LabTable)

    def setup(self) -> None:
        self._columns()
        self.table.focus()

    def on_resize(self) -> None:
        wide = self.size.width >= WIDE
        if wide != self.wide or (wide and self.size.width != self._built_width):
            self._columns()
            if self.data:
                self.apply(self.data, record=False)

    def _columns(self) -> None:
        self.wide = self.size.width >= WIDE
        self._built_width = self.size.width
        table = self.table
        table.clear(columns=True)
        gpu_w = 31 if self.wide else 8
        table.add_column("Node", key="name", width=14 if self.wide else 12)
        table.add_column("State", key="state", width=8)
        if self.wide:
            table.add_column("GPUs", key="model", width=18)
        table.add_column("GPU util", key="util", width=gpu_w)
        table.add_column("GPU mem", key="mem", width=gpu_w)
        table.add_column("History", key="hist", width=20 if self.wide else 10)
        table.add_column("CPU", key="cpu", width=4)
        table.add_column("RAM", key="ram", width=4)
        # In wide mode the job list takes the room a big terminal has left.
        used = (14 + 8 + 18 + 2 * gpu_w + 20 + 4 + 4) + 2 * 9 + 2
        jobs_w = max(24, self.size.width - used) if self.wide else 4
        table.add_column("Jobs", key="jobs", width=jobs_w)

    async def fetch(self) -> Overview:
        return await self.source.overview()

    def apply(self, data: Overview, *, record: bool = True) -> None:
        self.data = data
        if record:
            for node in data.nodes:
                self.history[node.name].append(node_util(node))
        self._totals(data)
        term = self.query_one("#filter", Input).value.strip().lower()
        jobs_by_node: dict[str, list[api.Job]] = defaultdict(list)
        for job in data.running:
            if job.node:
                jobs_by_node[job.node].append(job)
        rows = []
        for node in sorted(data.nodes, key=lambda n: n.name):
            if term and not self._matches(node, term):
                continue
            rows.append((node.name, self._row(node, jobs_by_node[node.name])))
        self.table.sync(rows)

    @staticmethod
    def _matches(node: api.Node, term: str) -> bool:
        hay = " ".join(
            [node.name, node.state, *(f"{k}={v}" for k, v in node.labels.items())]
        ).lower()
        return all(part in hay for part in term.split())

    def _row(self, node: api.Node, jobs: list[api.Job]) -> list[object]:
        """The row's cells, rebuilt only when what they show changed (most polls change
        a few nodes; building Rich text for all of them was most of an idle poll)."""
        history = self.history[node.name]
        host = node.host
        key = (
            self.wide,
            node.state,
            node.draining,
            node.gpu_error,
            node.running_jobs,
            tuple((g.sample.util, g.sample.mem_used, g.sample.mem_total) for g in node.gpus),
            node.gpus[0].sample.name if node.gpus else "",
            (host.cpu_percent, host.mem_used, host.mem_total) if host else None,
            tuple(history)[-(20 if self.wide else 10) :],
            tuple((j.id, j.user) for j in jobs),
        )
        cached = self._row_cache.get(node.name)
        if cached is not None and cached[0] == key:
            return cached[1]
        cells = self._cells(node, jobs)
        self._row_cache[node.name] = (key, cells)
        return cells

    def _cells(self, node: api.Node, jobs: list[api.Job]) -> list[object]:
        state = "draining" if node.draining and node.state == "online" else node.state
        utils = [g.sample.util / 100 for g in node.gpus]
        mems = [mem_frac(g.sample.mem_used, g.sample.mem_total) for g in node.gpus]
        if self.wide:
            util_cell: Text = Text(" ").join(fmt.bar(u, 3) for u in utils)
            mem_cell: Text = Text(" ").join(fmt.bar(m, 3) for m in mems)
        else:
            util_cell = fmt.blocks(utils, colour_by=mems)
            mem_cell = fmt.blocks(mems)
        simulated = any(g.sample.simulated for g in node.gpus)
        if node.gpu_error and not node.gpus:
            util_cell = Text("no GPU", style="dim")
            mem_cell = Text("")
        host = node.host
        cpu = (
            Text(f"{host.cpu_percent:3.0f}%", style=fmt.level_style(host.cpu_percent / 100))
            if host
            else Text("-")
        )
        ram_frac = mem_frac(host.mem_used, host.mem_total) if host else 0.0
        ram = Text(fmt.pct(ram_frac), style=fmt.level_style(ram_frac)) if host else Text("-")
        name: object = node.name
        if simulated and not self.wide:  # no model column: say it beside the name
            name = Text(node.name) + Text(" sim", style="dim")
        cells: list[object] = [name, fmt.state_text(state)]
        if self.wide:
            model = gpu_model(node.gpus[0].sample.name) if node.gpus else ""
            count = f"{len(node.gpus)}x {model}" if node.gpus else "-"
            cells.append(f"{count} sim" if simulated else count)
        cells += [
            util_cell,
            mem_cell,
            fmt.sparkline(self.history[node.name], 20 if self.wide else 10),
        ]
        cells += [cpu, ram]
        if self.wide:
            cells.append(", ".join(f"{j.id}:{j.user}" for j in jobs) or Text("idle", style="dim"))
        else:
            cells.append(
                str(len(jobs) or node.running_jobs)
                if (jobs or node.running_jobs)
                else Text("-", style="dim")
            )
        return cells

    def _totals(self, data: Overview) -> None:
        s = data.summary
        free = s.gpus_total - s.gpus_busy
        text = Text()
        text.append(" Nodes ", style="bold")
        text.append(
            f"{s.nodes_online}/{s.nodes_total} online",
            style="green" if s.nodes_online == s.nodes_total else "yellow",
        )
        text.append("  GPUs ", style="bold")
        text.append(f"{free} free", style="green")
        text.append(f" {s.gpus_busy} busy", style="yellow")
        text.append(f" of {s.gpus_total}")
        text.append("  Jobs ", style="bold")
        text.append(f"{s.jobs_running} running", style="green")
        text.append(f" {s.jobs_queued} queued", style="cyan")
        text.append("\n GPU use now: ", style="bold")
        by_user = sorted(s.gpus_by_user.items(), key=lambda kv: (-kv[1], kv[0]))
        if by_user:
            text.append(" · ".join(f"{visible(user)} {n}" for user, n in by_user))
        else:
            text.append("nobody", style="dim")
        if text != self._totals_shown:
            self._totals_shown = text
            self.query_one("#totals", PlainStatic).update(text, layout=False)

    # ------------------------------------------------------------ actions
    def focus_main(self) -> None:
        self.table.focus()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("-shown")
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        event.input.set_class(bool(event.value), "-shown")
        if self.data:
            self.apply(self.data, record=False)

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.table.focus()

    def action_open(self) -> None:
        if key := self.table.current_key:
            self.mlsm.open_node(key)

    @on(DataTable.RowSelected, "#nodes")
    def _selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value:
            self.mlsm.open_node(event.row_key.value)

    def action_drain(self) -> None:
        if key := self.table.current_key:
            self.actions.node_action(key, "drain")

    def action_resume(self) -> None:
        if key := self.table.current_key:
            self.actions.node_action(key, "resume")
