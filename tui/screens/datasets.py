"""Datasets by node with sizes and tags; detail; import with live progress; copy, move, delete."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Input, Label

from mlsm.wire import api
from tui import fmt
from tui.screens.base import View
from tui.widgets.forms import MessageModal
from tui.widgets.plain import PlainStatic
from tui.widgets.table import LabTable

#: Widest the dataset name column gets on a big terminal.
NAME_MAX_W = 40


@dataclass
class DatasetsData:
    datasets: list[api.Dataset]
    transfers: list[api.Transfer]


def dataset_details(ds: api.Dataset, now: float) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()

    def row(label: str, *lines: str) -> None:
        grid.add_row(fmt.plain(label), Text("\n").join(fmt.plain(line) for line in lines))

    row("Name", ds.name)
    row("Description", ds.description or "-")
    row("Tags", ", ".join(ds.tags) or "-")
    row("Owner", ds.owner or "-")
    row("Used by jobs", ", ".join(map(str, ds.used_by)) or "-")
    for copy in ds.copies:
        lines = [
            copy.path,
            f"{fmt.human_bytes(copy.size)}, {copy.files} files, modified {fmt.ago(copy.modified, now)}",
        ]
        if copy.digest:
            lines.append(copy.digest)
        if copy.top:
            lines.append(f"top: {', '.join(copy.top[:8])}")
        row(f"on {copy.node}", *lines)
    return grid


#: Columns of the transfers table before its status (widths and gaps).
TRANSFER_FIXED_W = 4 + 6 + 14 + 10 + 9 + 15 + 8 + 2 * 8 + 2


def progress(t: api.Transfer) -> Text:
    if t.total_bytes:
        frac = t.done_bytes / t.total_bytes
        return fmt.bar(frac, 10, label=f"{frac * 100:3.0f}%")
    return Text(fmt.human_bytes(t.done_bytes))


class DatasetsScreen(View):
    TITLE = "Datasets"
    MUTATING = frozenset({"import_dataset", "copy", "move", "delete"})
    ADMIN = frozenset({"import_dataset", "copy", "move", "delete"})
    BINDINGS = [
        Binding("enter", "open", "Detail"),
        Binding("slash", "filter", "Filter"),
        Binding("i", "import_dataset", "Import"),
        Binding("c", "copy", "Copy"),
        Binding("m", "move", "Move"),
        Binding("D", "delete", "Delete"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.data: DatasetsData | None = None

    def body(self) -> ComposeResult:
        yield Input(
            placeholder="filter: name, node or tag (esc clears)", id="filter", classes="filter"
        )
        yield LabTable(id="datasets")
        yield Label(" Transfers", id="transfers-title")
        yield LabTable(id="transfers")

    @property
    def table(self) -> LabTable:
        return self.query_one("#datasets", LabTable)

    def setup(self) -> None:
        others = [
            ("Node", "node", 11),
            ("Size", "size", 7),
            ("Files", "files", 7),
            ("Tags", "tags", 12),
            ("Modified", "mod", 9),
        ]
        used = sum(w for _, _, w in others) + 2 * (len(others) + 1) + 2
        name_w = min(max(self.size.width - used, 12), NAME_MAX_W)
        for label, key, width in [("Name", "key", name_w), *others]:
            self.table.add_column(label, key=key, width=width)
        tr = self.query_one("#transfers", LabTable)
        for label, key, width in (
            ("ID", "id", 4),
            ("Kind", "kind", 6),
            ("Dataset", "ds", 14),
            ("Node", "node", 10),
            ("State", "state", 9),
            ("Progress", "prog", 15),
            ("Rate", "rate", 8),
        ):
            tr.add_column(label, key=key, width=width)
        # What the transfer is doing in words: the path a copy takes ("direct", "via master
        # relay: source not reachable (...)"), a resume, why it failed.
        tr.add_column("Status", key="msg", width=max(self.size.width - TRANSFER_FIXED_W, 20))
        self.table.focus()

    async def fetch(self) -> DatasetsData:
        datasets, transfers = await asyncio.gather(self.source.datasets(), self.source.transfers())
        return DatasetsData(datasets, transfers)

    def apply(self, data: DatasetsData) -> None:
        self.data = data
        now = self.mlsm.now()
        term = self.query_one("#filter", Input).value.strip().lower()
        rows = []
        for ds in sorted(data.datasets, key=lambda d: d.name):
            for copy in sorted(ds.copies, key=lambda c: c.node):
                hay = " ".join([ds.name, copy.node, *ds.tags]).lower()
                if term and not all(w in hay for w in term.split()):
                    continue
                key = f"{ds.name}@{copy.node}"
                node_style = "" if copy.node_state in ("", "online") else "dim"
                rows.append(
                    (
                        key,
                        [
                            ds.name,
                            fmt.plain(copy.node, node_style),
                            fmt.human_bytes(copy.size),
                            str(copy.files),
                            ",".join(ds.tags),
                            fmt.ago(copy.modified, now).replace(" ago", ""),
                        ],
                    )
                )
        self.table.sync(rows)
        transfers = sorted(data.transfers, key=lambda t: -t.id)[:20]
        self.query_one("#transfers", LabTable).sync(
            [
                (
                    str(t.id),
                    [
                        str(t.id),
                        t.kind,
                        t.dataset,
                        t.node,
                        fmt.state_text(t.state),
                        progress(t),
                        f"{fmt.human_bytes(t.rate_bps)}/s" if t.rate_bps else "-",
                        fmt.plain(t.message),
                    ],
                )
                for t in transfers
            ]
        )
        self.set_class(bool(transfers), "-has-transfers")

    # ------------------------------------------------------------ actions
    def focus_main(self) -> None:
        self.table.focus()

    def selected(self) -> tuple[api.Dataset, api.DatasetCopy] | None:
        key = self.table.current_key
        if not key or not self.data:
            return None
        name, _, node = key.rpartition("@")
        for ds in self.data.datasets:
            if ds.name == name:
                for copy in ds.copies:
                    if copy.node == node:
                        return ds, copy
        return None

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("-shown")
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        event.input.set_class(bool(event.value), "-shown")
        if self.data:
            self.apply(self.data)

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.table.focus()

    def action_open(self) -> None:
        if sel := self.selected():
            self.app.push_screen(DatasetDetail(sel[0], self.mlsm.now()))

    @on(DataTable.RowSelected, "#datasets")
    def _selected(self) -> None:
        self.action_open()

    def action_import_dataset(self) -> None:
        sel = self.selected()
        self.actions.import_dataset(node=sel[1].node if sel else "")

    def action_copy(self) -> None:
        if sel := self.selected():
            self.actions.transfer_dataset(sel[0].name, sel[1].node, move=False)

    def action_move(self) -> None:
        if sel := self.selected():
            self.actions.transfer_dataset(sel[0].name, sel[1].node, move=True)

    def action_delete(self) -> None:
        if sel := self.selected():
            self.actions.delete_dataset(sel[0].name, sel[1].node)


class DatasetDetail(MessageModal):
    def __init__(self, ds: api.Dataset, now: float) -> None:
        super().__init__(f"Dataset {ds.name}", "")
        self.ds = ds
        self.now = now

    def on_mount(self) -> None:
        self.query_one("#secret", PlainStatic).update(dataset_details(self.ds, self.now))
