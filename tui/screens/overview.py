"""Lab overview: every node with GPU bars, a history sparkline, CPU/RAM and jobs; lab totals."""

from __future__ import annotations

from collections import defaultdict, deque
from functools import partial
from operator import attrgetter

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
from tui.widgets.table import LabTable, Lazy, Row

#: Samples kept per node for its sparkline (one per poll).
HISTORY_POINTS = 60
WIDE = 120


def node_util(node: api.NodeRow) -> float:
    """What the sparkline shows: mean GPU utilisation, or CPU on GPU-less nodes."""
    if gpus := node.gpus:
        return sum([g.util for g in gpus]) / len(gpus)
    return node.cpu_percent or 0.0


def gpu_model(name: str) -> str:
    """``NVIDIA A100-SXM4-80GB`` -> ``A100-SXM4-80GB``: the vendor (or "Simulated") is noise
    in a column of models."""
    for prefix in ("NVIDIA ", "Simulated "):
        name = name.removeprefix(prefix)
    return name


_by_name = attrgetter("name")


def mem_frac(used: int, total: int) -> float:
    return used / total if total else 0.0


def _util_cell(utils: tuple[float, ...], mems: tuple[float, ...], wide: bool) -> Text:
    if wide:
        return Text(" ").join(fmt.bar(u, 3) for u in utils)
    return fmt.blocks(utils, colour_by=mems)


def _mem_cell(mems: tuple[float, ...], wide: bool) -> Text:
    if wide:
        return Text(" ").join(fmt.bar(m, 3) for m in mems)
    return fmt.blocks(mems)


def _bars_look(fracs: tuple[float, ...], colour_by: tuple[float, ...], wide: bool) -> object:
    """What the bars (wide) or blocks of ``fracs`` look like: the cell's key, so a value
    that moved without changing what is drawn does not repaint the cell."""
    if wide:
        return tuple(fmt.bar_look(f, 3) for f in fracs)
    return tuple((fmt.block(f), fmt.level_style(c)) for f, c in zip(fracs, colour_by, strict=True))


def _text(value: str, style: str = "") -> Lazy:
    return Lazy(("text", value, style), partial(Text, value, style=style))


def _name_cell(name: str, sim: bool) -> Text:
    return Text(name) + Text(" sim", style="dim") if sim else Text(name)


def _cpu_cell(percent: float | None) -> Lazy:
    if percent is None:
        return _text("-")
    return _text(f"{percent:3.0f}%", fmt.level_style(percent / 100))


def _ram_cell(frac: float | None) -> Lazy:
    if frac is None:
        return _text("-")
    return _text(fmt.pct(frac), fmt.level_style(frac))


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
        """Record each node's point of history and hand the table one builder per row:
        only the rows on screen are built and compared now (the others when they come
        into view), so a poll of a 1,000-node lab costs what a screenful of rows does."""
        self.data = data
        if record:
            history = self.history
            for node in data.nodes:
                history[node.name].append(node_util(node))
        self._totals(data)
        term = self.query_one("#filter", Input).value.strip().lower()
        cells = self._cells
        rows: list[Row] = [
            (node.name, partial(cells, node))
            for node in sorted(data.nodes, key=_by_name)
            if not term or self._matches(node, term)
        ]
        self.table.sync(rows)

    @staticmethod
    def _matches(node: api.NodeRow, term: str) -> bool:
        hay = " ".join(
            [node.name, node.state, *(f"{k}={v}" for k, v in node.labels.items())]
        ).lower()
        return all(part in hay for part in term.split())

    def _cells(self, node: api.NodeRow) -> list[object]:
        """The row's cells, built when the row is on screen. Each is :class:`Lazy`, keyed
        by what it looks like (a bar's length and colour, the sparkline's characters, the
        figure's text): a cell whose look did not change is not repainted, and Rich text
        is built only for cells drawn."""
        state = "draining" if node.draining and node.state == "online" else node.state
        utils = tuple(g.util / 100 for g in node.gpus)
        mems = tuple(mem_frac(g.mem_used, g.mem_total) for g in node.gpus)
        wide = self.wide
        simulated = node.simulated
        if node.gpu_error and not node.gpus:
            util_cell: object = Text("no GPU", style="dim")
            mem_cell: object = Text("")
        else:
            util_look = _bars_look(utils, mems, wide)
            util_cell = Lazy(("util", util_look), partial(_util_cell, utils, mems, wide))
            mem_look = _bars_look(mems, mems, wide)
            mem_cell = Lazy(("mem", mem_look), partial(_mem_cell, mems, wide))
        width = 20 if wide else 10
        spark = fmt.spark_chars(tuple(self.history[node.name])[-width:], width)
        host = node.cpu_percent is not None
        ram_frac = mem_frac(node.mem_used, node.mem_total) if host else None
        sim = simulated and not wide  # no model column: say it beside the name
        cells: list[object] = [
            Lazy(("name", node.name, sim), partial(_name_cell, node.name, sim)),
            Lazy(("state", state), partial(fmt.state_text, state)),
        ]
        if wide:
            model = gpu_model(node.gpu_model) if node.gpus else ""
            count = f"{len(node.gpus)}x {model}" if node.gpus else "-"
            cells.append(_text(f"{count} sim" if simulated else count))
        cells += [util_cell, mem_cell, _text(spark, "cyan")]
        cells += [_cpu_cell(node.cpu_percent), _ram_cell(ram_frac)]
        if wide:
            jobs = ", ".join(f"{job_id}:{user}" for job_id, user in node.jobs)
            cells.append(_text(jobs) if jobs else _text("idle", "dim"))
        else:
            count = str(len(node.jobs) or node.running_jobs)
            cells.append(_text(count) if node.jobs or node.running_jobs else _text("-", "dim"))
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
