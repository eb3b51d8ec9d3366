"""How polled data reaches the screen: changed cells repaint, unchanged ones are left
alone, and log chunks that split lines anywhere are joined (fake lab, a test double)."""

from __future__ import annotations

import msgspec

from tests.support.wait import pilot_until
from tests.tui.conftest import make_app
from tests.tui.fakes import FakeSource
from tui.screens import JobScreen, OverviewScreen
from tui.widgets.logview import LogView
from tui.widgets.table import LabTable


def row_text(table: LabTable, key: str) -> str:
    y = table.get_row_index(key) + 1  # + the header line
    return table.render_line(y).text


async def test_a_changed_cell_repaints_and_the_others_keep_their_render(
    fake: FakeSource,
) -> None:
    app = make_app(fake)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot_until(pilot, lambda: app.first_data_at is not None, "first data")
        assert isinstance(app.screen, OverviewScreen)
        table = app.screen.query_one("#nodes", LabTable)
        assert "online" in row_text(table, "gpu002")
        before = dict(table._cell_versions)
        fake._nodes["gpu002"] = msgspec.structs.replace(fake._nodes["gpu002"], state="offline")
        app.poll_now()
        await pilot_until(pilot, lambda: "offline" in row_text(table, "gpu002"), "gpu002 offline")
        changed = {
            (row.value, column.value)
            for (row, column), n in table._cell_versions.items()
            if before.get((row, column), 0) != n
        }
        # gpu002's state cell, and the history sparklines (one point more per poll)
        assert ("gpu002", "state") in changed
        assert {column for _, column in changed} <= {"state", "hist"}
        assert "online" in row_text(table, "gpu001")


async def test_log_chunks_split_anywhere_are_joined_into_lines(fake: FakeSource) -> None:
    fake.log_lines = 0
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        app.open_job(100, tab="log")
        await pilot_until(
            pilot, lambda: isinstance(app.screen, JobScreen) and app.screen.ready, "job screen"
        )
        view = app.screen.query_one(LogView)
        for chunk in (
            "epo",
            "ch 1 lo",
            "ss 0.5\r",
            "\nepoch 2",
            " loss 0.4\n",
            "tail without newline",
        ):
            await fake.follow_queue.put(("log", chunk))
        await pilot_until(pilot, lambda: len(view.lines) == 2, "two whole lines")
        assert list(view.lines) == ["epoch 1 loss 0.5", "epoch 2 loss 0.4"]
        assert view.pending == "tail without newline"
        await fake.follow_queue.put(("end", "succeeded"))
        await pilot_until(pilot, lambda: view.ended == "succeeded", "the end")
        assert list(view.lines)[-1] == "tail without newline"
