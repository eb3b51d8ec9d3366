"""The lab's recent events (yours and the nodes'; admins: all), newest first: what ended,
what went offline, which jobs the idle-GPU policy warned. Enter opens the event's job or
node."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable

from mlsm.wire.events import Event
from tui import fmt
from tui.screens.base import View
from tui.widgets.table import LabTable

#: Events the screen keeps (the newest); older ones are in `mlsm events`.
SHOWN = 200
#: Fixed columns before the message (widths and gaps).
FIXED_W = 6 + 10 + 20 + 10 + 2 * 5 + 2

_STYLES = {
    "job.failed": "bold red",
    "job.interrupted": "red",
    "job.cancelled": "yellow",
    "job.idle_warning": "bold yellow",
    "job.succeeded": "green",
    "node.offline": "bold red",
    "node.stale": "yellow",
    "node.disk_full": "bold yellow",
    "dataset.transfer_failed": "red",
}


class EventsScreen(View):
    TITLE = "Events"
    BINDINGS = [Binding("enter", "open", "Open job/node")]

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Event] = []

    def body(self) -> ComposeResult:
        yield LabTable(id="events")

    @property
    def table(self) -> LabTable:
        return self.query_one("#events", LabTable)

    def setup(self) -> None:
        msg_w = max(self.size.width - FIXED_W, 20)
        for label, key, width in (
            ("ID", "id", 6),
            ("When", "when", 10),
            ("Kind", "kind", 20),
            ("User/node", "who", 10),
            ("What", "msg", msg_w),
        ):
            self.table.add_column(label, key=key, width=width)
        self.table.focus()

    async def fetch(self) -> list[Event]:
        return await self.source.events(SHOWN)

    def apply(self, data: list[Event]) -> None:
        self.events = data
        now = self.mlsm.now()
        rows = [
            (
                str(ev.id),
                [
                    str(ev.id),
                    fmt.ago(ev.ts, now),
                    fmt.plain(ev.kind, _STYLES.get(ev.kind, "")),
                    fmt.plain(ev.user or ev.node),
                    fmt.plain(ev.message),
                ],
            )
            for ev in sorted(data, key=lambda e: -e.id)
        ]
        self.table.sync(rows)

    def focus_main(self) -> None:
        self.table.focus()

    @on(DataTable.RowSelected, "#events")
    def _selected(self) -> None:
        self.action_open()

    def action_open(self) -> None:
        key = self.table.current_key
        ev = next((e for e in self.events if str(e.id) == key), None)
        if ev is None:
            return
        if ev.job_id is not None:
            self.mlsm.open_job(ev.job_id)
        elif ev.node:
            self.mlsm.open_node(ev.node)
