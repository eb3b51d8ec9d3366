"""How polled data reaches the screen: changed cells repaint, unchanged ones are left
alone, and log chunks that split lines anywhere are joined (fake lab, a test double)."""

from __future__ import annotations

import msgspec
import pytest
from textual.geometry import Region

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


async def test_a_value_that_moves_without_changing_its_bar_does_not_repaint(
    fake: FakeSource,
) -> None:
    """Cells are compared by what they draw: a GPU at 2 % and at 4 % both draw an empty
    bar, so that poll repaints nothing there; at 95 % the bar changes and repaints."""
    app = make_app(fake)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot_until(pilot, lambda: app.first_data_at is not None, "first data")
        table = app.screen.query_one("#nodes", LabTable)

        async def poll_with_util(util: float) -> None:
            node = fake._nodes["gpu002"]
            gpus = [
                msgspec.structs.replace(
                    g, sample=msgspec.structs.replace(g.sample, util=util if i == 0 else 0.0)
                )
                for i, g in enumerate(node.gpus)
            ]
            fake._nodes["gpu002"] = msgspec.structs.replace(node, gpus=gpus)
            last = table._synced["gpu002"]
            app.poll_now()
            await pilot_until(pilot, lambda: table._synced["gpu002"] is not last, "a poll")

        def util_version() -> int:
            return next(
                n
                for (row, column), n in table._cell_versions.items()
                if (row.value, column.value) == ("gpu002", "util")
            )

        await poll_with_util(2.0)
        assert "█" not in str(table.get_cell("gpu002", "util"))
        before = util_version()
        await poll_with_util(4.0)
        assert util_version() == before
        await poll_with_util(95.0)
        assert util_version() > before
        assert str(table.get_cell("gpu002", "util")).startswith("███")


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


async def test_a_poll_repaints_the_changed_cells_alone_and_keeps_the_other_lines(
    fake: FakeSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A changed cell does not invalidate the table: its update counter (row offsets, row
    order, every line's cache key) stays, the other rows' cached lines are kept, and only
    the changed cells' regions are repainted."""
    app = make_app(fake)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot_until(pilot, lambda: app.first_data_at is not None, "first data")
        table = app.screen.query_one("#nodes", LabTable)
        await pilot.pause()
        assert "online" in row_text(table, "gpu002") and "online" in row_text(table, "gpu001")
        y_unchanged = table.get_row_index("gpu001") + 1
        kept = [key for key in table._line_cache.keys() if key[0] == y_unchanged]
        assert kept
        count = table._update_count
        regions: list[Region] = []
        refresh_region = table._refresh_region

        def record(region: Region) -> LabTable:
            regions.append(region)
            return refresh_region(region)

        monkeypatch.setattr(table, "_refresh_region", record)
        before = dict(table._cell_versions)
        fake._nodes["gpu002"] = msgspec.structs.replace(fake._nodes["gpu002"], state="offline")
        app.poll_now()
        await pilot_until(pilot, lambda: "offline" in row_text(table, "gpu002"), "gpu002 offline")
        assert table._update_count == count
        changed = [cell for cell, n in table._cell_versions.items() if before.get(cell, 0) != n]
        assert len(regions) == len(changed) and all(r.height == 1 for r in regions)
        state_x = sum(
            c.get_render_width(table)
            for c in table.ordered_columns[: table.get_column_index("state")]
        )
        y = table.get_row_index("gpu002") + 1
        assert any(r.y == y and r.x == state_x for r in regions)
        if not any(column.value == "hist" and row.value == "gpu001" for row, column in changed):
            assert all(key in table._line_cache for key in kept)


async def test_a_click_on_a_shared_cell_selects_its_own_row(fake: FakeSource) -> None:
    """Cells that look alike share one render; each drawn cell still carries its own row
    and column, so a click on a cell selects the row it is on."""
    app = make_app(fake)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot_until(pilot, lambda: app.first_data_at is not None, "first data")
        table = app.screen.query_one("#nodes", LabTable)
        await pilot.pause()
        keys = [str(row.key.value) for row in table.ordered_rows]
        online = [key for key in keys if str(table.get_cell(key, "state")) == "online"]
        assert len(online) >= 2  # the same look in two rows or more
        x = sum(
            c.get_render_width(table)
            for c in table.ordered_columns[: table.get_column_index("state")]
        )
        for key in reversed(online):
            y = table.get_row_index(key) + 1  # + the header line
            await pilot.click(table, offset=(x + 1, y))
            await pilot_until(pilot, lambda k=key: table.current_key == k, f"{key} selected")
