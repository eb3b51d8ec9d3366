"""The dashboard at a lab's size (over the fake lab, a test double): the overview builds
Rich text only for the rows on screen, the jobs screen shows every job a list of the
master carries, and says when the master holds more."""

from __future__ import annotations

import msgspec
import pytest

from mlsm.wire import api
from tests.support.wait import pilot_until
from tests.tui.conftest import make_app
from tests.tui.fakes import FakeSource, big_lab
from tui.screens import JobsScreen, OverviewScreen
from tui.screens import jobs as jobs_screen
from tui.source import DataSource
from tui.widgets.table import LabTable, Lazy

#: More nodes than a 160x48 screen shows at once.
NODES = 200


def _table(app, table_id: str) -> LabTable | None:
    found = app.screen.query(table_id).results(LabTable)
    return next((t for t in found if t.row_count), None)


async def test_overview_builds_cells_only_for_rows_on_screen() -> None:
    app = make_app(FakeSource(lab=big_lab(NODES, 10)))
    async with app.run_test(size=(160, 48)) as pilot:
        table = await pilot_until(pilot, lambda: _table(app, "#nodes"), "node rows")
        assert isinstance(app.screen, OverviewScreen) and table.row_count == NODES
        await pilot.pause()
        first = table.get_cell("gpu001", "util")
        last = table.get_cell(f"gpu{NODES:03d}", "util")
        assert isinstance(first, Lazy) and isinstance(last, Lazy)
        assert first.built is not None  # drawn
        assert last.built is None  # below the screen: never built
        table.action_last()
        await pilot_until(pilot, lambda: last.built is not None, "the last row drawn")
        assert len(str(last).split()) == 8  # one bar per GPU


async def test_a_poll_builds_only_the_rows_on_screen_and_a_row_scrolled_to_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each poll hands the table a builder per row; only the rows on screen are built
    (compared, repainted), and one that scrolls into view is built then, from the
    newest poll."""
    built: list[str] = []
    cells = OverviewScreen._cells

    def counting(self: OverviewScreen, node: api.NodeRow) -> list[object]:
        built.append(node.name)
        return cells(self, node)

    monkeypatch.setattr(OverviewScreen, "_cells", counting)
    source = FakeSource(lab=big_lab(NODES, 10))
    app = make_app(source)
    async with app.run_test(size=(160, 48)) as pilot:
        table = await pilot_until(pilot, lambda: _table(app, "#nodes"), "node rows")
        last = f"gpu{NODES:03d}"
        assert built and last not in built
        source._nodes[last] = msgspec.structs.replace(source._nodes[last], state="offline")
        before = table._synced[last]
        built.clear()
        app.poll_now()
        await pilot_until(pilot, lambda: table._synced[last] is not before, "a poll")
        assert 0 < len(built) < 60 and last not in built  # a screenful: 48 lines
        table.action_last()
        await pilot_until(pilot, lambda: last in built, "the last row built once in view")
        assert "offline" in str(table.get_cell(last, "state"))


async def test_overview_row_is_equal_to_one_built_from_the_whole_lists() -> None:
    """The master's compact rows and the rows the fake builds from whole node and job
    lists come from one function: a row carries the jobs running on its node."""
    source = FakeSource(lab=big_lab(6, 30))
    overview = await DataSource.overview(source)
    by_name = {r.name: r for r in overview.nodes}
    running = [j for j in source._jobs.values() if j.state == "running" and j.node]
    assert running
    for job in running:
        assert job.node is not None
        assert (job.id, job.user) in by_name[job.node].jobs
    node = source._nodes["gpu001"]
    row = by_name["gpu001"]
    assert [g.util for g in row.gpus] == [g.sample.util for g in node.gpus]
    assert row.gpu_model == node.gpus[0].sample.name and row.simulated
    assert isinstance(row, api.NodeRow)


async def test_jobs_screen_shows_more_jobs_than_the_old_2000() -> None:
    app = make_app(FakeSource(lab=big_lab(3, 2500)))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("2")
        table = await pilot_until(pilot, lambda: _table(app, "#jobs"), "job rows")
        await pilot_until(pilot, lambda: table.row_count == 2500, "every job")
        assert isinstance(app.screen, JobsScreen)
        line = str(app.screen.query_one("#jobs-filter-line").render())
        assert "2500 of 2500 shown" in line and "newest" not in line


async def test_jobs_screen_says_when_the_master_holds_more_than_one_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(jobs_screen, "JOBS_SHOWN", 40)
    app = make_app(FakeSource(lab=big_lab(3, 100)))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("2")
        table = await pilot_until(pilot, lambda: _table(app, "#jobs"), "job rows")
        assert table.row_count == 40
        line = str(app.screen.query_one("#jobs-filter-line").render())
        assert "the newest 40 of 100" in line


async def test_start_up_objects_are_frozen_for_the_app_s_life_and_released_after() -> None:
    """Once the first data is drawn the collector stops walking what lives as long as the
    app (each poll's garbage made it walk every widget and module); when the app ends
    they go back, so it frees them."""
    import gc

    app = make_app(FakeSource(lab=big_lab(20, 10)))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot_until(pilot, lambda: app.first_data_at is not None, "first data")
        await pilot_until(pilot, lambda: gc.get_freeze_count() > 0, "start-up frozen")
    assert gc.get_freeze_count() == 0
