"""The job table: filter with ``/`` (words, or ``state:``, ``user:``, ``node:``), submit, cancel."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Input, Static

from mlsm.wire import api
from tui import fmt
from tui.screens.base import View
from tui.widgets.table import LabTable

#: ``s`` cycles through these quick state filters.
STATE_FILTERS = ("all", "active", "queued", "running", "failed", "finished")
WIDE = 120
#: Jobs one poll fetches (the master's most per list): newest first, the rest counted.
JOBS_SHOWN = 10_000


def parse_filter(text: str) -> tuple[dict[str, str], list[str]]:
    """``state:running user:alice resnet`` -> ({"state": "running", "user": "alice"}, ["resnet"])."""
    keyed: dict[str, str] = {}
    words: list[str] = []
    for part in text.lower().split():
        key, sep, value = part.partition(":")
        if sep and key in ("state", "user", "node", "id"):
            keyed[key] = value
        else:
            words.append(part)
    return keyed, words


def job_matches(job: api.Job, keyed: dict[str, str], words: list[str], quick: str) -> bool:
    if quick == "active" and job.state not in api.ACTIVE_STATES | api.PENDING_STATES:
        return False
    if quick == "queued" and job.state not in api.PENDING_STATES:
        return False
    if quick == "running" and job.state not in api.ACTIVE_STATES:
        return False
    if quick == "failed" and job.state not in ("failed", "interrupted"):
        return False
    if quick == "finished" and job.state not in api.FINAL_STATES:
        return False
    if "state" in keyed and not job.state.startswith(keyed["state"]):
        return False
    if "user" in keyed and job.user.lower() != keyed["user"]:
        return False
    if "node" in keyed and (job.node or job.node_req or "").lower() != keyed["node"]:
        return False
    if "id" in keyed and str(job.id) != keyed["id"]:
        return False
    if words:
        hay = " ".join(
            [str(job.id), job.name, job.user, job.state, job.node or "", *job.argv]
        ).lower()
        return all(w in hay for w in words)
    return True


class JobsScreen(View):
    TITLE = "Jobs"
    MUTATING = frozenset({"submit", "cancel_job"})
    BINDINGS = [
        Binding("enter", "open", "Open"),
        Binding("slash", "filter", "Filter"),
        Binding("s", "cycle_state", "State"),
        Binding("m", "mine", "Mine"),
        Binding("n", "submit", "Submit"),
        Binding("l", "log", "Log"),
        Binding("C", "cancel_job", "Cancel job"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.jobs: dict[int, api.Job] = {}
        self.total = 0
        self.quick = "all"
        self.mine = False
        self.wide = False
        #: Per job: what its row was built from (the job, its time cell, the width mode)
        #: and the cells, reused while equal. A poll of a 10,000-job lab changes few rows.
        self._row_cache: dict[int, tuple[tuple[object, ...], list[object]]] = {}

    def body(self) -> ComposeResult:
        yield Static(id="jobs-filter-line")
        yield Input(
            placeholder="filter: words, state:S user:U node:N (esc clears)",
            id="filter",
            classes="filter",
        )
        yield LabTable(id="jobs")

    @property
    def table(self) -> LabTable:
        return self.query_one("#jobs", LabTable)

    def setup(self) -> None:
        self._columns()
        self._filter_line()
        self.table.focus()

    def on_resize(self) -> None:
        if (self.size.width >= WIDE) != self.wide:
            self._columns()
            self._show()

    def _columns(self) -> None:
        self.wide = self.size.width >= WIDE
        table = self.table
        table.clear(columns=True)
        widths = [
            ("ID", "id", 6 if self.wide else 5),
            ("User", "user", 10 if self.wide else 8),
            ("Name", "name", 24 if self.wide else 10),
            ("State", "state", 11),
            ("Node", "node", 12 if self.wide else 7),
            ("GPU", "gpus", 3),
            ("Time", "time", 6),
        ]
        for label, key, width in widths:
            table.add_column(label, key=key, width=width)
        used = sum(w for _, _, w in widths) + 2 * (len(widths) + 1) + 2
        if self.wide:
            table.add_column("Why / exit", key="reason", width=36)
            table.add_column("Command", key="cmd", width=max(self.size.width - used - 38, 10))
        else:
            table.add_column("Why / exit", key="reason", width=max(self.size.width - used, 8))

    async def fetch(self) -> api.JobList:
        return await self.source.jobs(all=True, limit=JOBS_SHOWN)

    def apply(self, data: api.JobList) -> None:
        self.jobs = {job.id: job for job in data.jobs}
        self.total = data.total
        self._show()

    def shown_jobs(self) -> list[api.Job]:
        keyed, words = parse_filter(self.query_one("#filter", Input).value)
        me = self.mlsm.conn.user
        out = [
            j
            for j in self.jobs.values()
            if job_matches(j, keyed, words, self.quick) and (not self.mine or j.user == me)
        ]
        order = {"running": 0, "assigned": 1, "queued": 2, "held": 3}
        out.sort(key=lambda j: (order.get(j.state, 9), -j.id))
        return out

    def _show(self) -> None:
        now = self.mlsm.now()
        rows: list[tuple[str, list[object]]] = []
        cache, self._row_cache = self._row_cache, {}
        for job in self.shown_jobs():
            if job.started_at:
                time_cell = fmt.duration((job.ended_at or now) - job.started_at)
            else:
                time_cell = fmt.duration(now - job.created_at)
            warned = fmt.ago(job.idle_warned_at, now) if job.idle_warned_at is not None else ""
            key = (job, time_cell, warned, self.wide)
            cached = cache.get(job.id)
            if cached is None or cached[0] != key:
                cached = (key, self._cells(job, time_cell, now))
            self._row_cache[job.id] = cached
            rows.append((str(job.id), cached[1]))
        self.table.sync(rows)
        self._filter_line(len(rows))

    def _cells(self, job: api.Job, time_cell: str, now: float) -> list[object]:
        """One job's row (built only when what it shows changed)."""
        reason = job.reason
        if (
            job.exit_code is not None
            and job.state in api.FINAL_STATES
            and not reason.startswith("exit")
        ):
            reason = f"exit {job.exit_code} {reason}".strip()
        state = fmt.state_text(job.state)
        reason_cell = fmt.plain(reason, "dim")
        if job.idle_warned_at is not None and job.state == "running":
            # The idle-GPU policy's mark: warned, and stopped after the grace.
            state.append("!", style="bold yellow")
            reason_cell = fmt.plain(
                f"idle GPUs: warned {fmt.ago(job.idle_warned_at, now)}", "bold yellow"
            )
        cells: list[object] = [
            str(job.id),
            job.user,
            job.name or (job.argv[0] if job.argv else ""),
            state,
            job.node or fmt.plain(job.node_req or "-", "dim"),
            str(job.gpus),
            time_cell,
            reason_cell,
        ]
        if self.wide:
            cells.append(fmt.command(job.argv).replace("\n", " ⏎ "))
        return cells

    def _filter_line(self, shown: int | None = None) -> None:
        text = Text()
        text.append(" state: ", style="dim")
        for name in STATE_FILTERS:
            text.append(f"{name} ", style="reverse bold" if name == self.quick else "dim")
        text.append(" │ ", style="dim")
        text.append("mine" if self.mine else "everyone", style="bold")
        if shown is not None:
            text.append(f" │ {shown} of {len(self.jobs)} shown", style="dim")
            if self.total > len(self.jobs):  # the master holds more than one list carries
                text.append(f" (the newest {len(self.jobs)} of {self.total})", style="yellow")
        self.query_one("#jobs-filter-line", Static).update(text)

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
        self._show()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.table.focus()

    def action_cycle_state(self) -> None:
        i = STATE_FILTERS.index(self.quick)
        self.quick = STATE_FILTERS[(i + 1) % len(STATE_FILTERS)]
        self._show()

    def action_mine(self) -> None:
        self.mine = not self.mine
        self._show()

    def selected(self) -> api.Job | None:
        key = self.table.current_key
        return self.jobs.get(int(key)) if key else None

    def action_open(self) -> None:
        if job := self.selected():
            self.mlsm.open_job(job.id)

    def action_log(self) -> None:
        if job := self.selected():
            self.mlsm.open_job(job.id, tab="log")

    @on(DataTable.RowSelected, "#jobs")
    def _selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value:
            self.mlsm.open_job(int(event.row_key.value))

    def action_submit(self) -> None:
        self.actions.submit_job()

    def action_cancel_job(self) -> None:
        if job := self.selected():
            self.actions.cancel_job(job)
