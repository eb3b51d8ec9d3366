"""The Events screen and the idle-GPU mark, driven by Pilot over the fake lab (test
double), with SVG snapshots at both sizes."""

from __future__ import annotations

import msgspec
import pytest

from tests.tui.conftest import make_app
from tests.tui.fakes import NOW, FakeSource
from tui.screens import EventsScreen, JobScreen, JobsScreen, NodeScreen
from tui.widgets.table import LabTable

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48")]


async def _settle(pilot, times: int = 4) -> None:
    for _ in range(times):
        await pilot.pause()


def _keys(app, table_id: str) -> list[str]:
    table = app.screen.query_one(table_id, LabTable)
    return [row.key.value for row in table.ordered_rows]


def _warned(fake: FakeSource) -> FakeSource:
    """Job 101 (running) as the idle-GPU policy leaves it: warned two minutes ago."""
    fake._jobs[101] = msgspec.structs.replace(fake._jobs[101], idle_warned_at=NOW - 120)
    return fake


async def _open_events(pilot) -> None:
    """``:events`` on the command line (the palette has it too)."""
    await _settle(pilot)
    await pilot.press("colon")
    await _settle(pilot, 2)
    for ch in "events":
        await pilot.press(ch)
    await pilot.press("enter")
    await _settle(pilot)


async def test_events_view_lists_newest_first_and_enter_opens_their_job_or_node() -> None:
    app = make_app(FakeSource())
    async with app.run_test(size=(160, 48)) as pilot:
        await _open_events(pilot)
        assert isinstance(app.screen, EventsScreen)
        assert _keys(app, "#events") == ["7", "6", "5", "4", "3", "2", "1"]
        table = app.screen.query_one("#events", LabTable)
        table.move_cursor(row=1)  # 6: job 102 failed
        await pilot.press("enter")
        await _settle(pilot)
        assert isinstance(app.screen, JobScreen) and app.screen.job_id == 102
        await pilot.press("escape")
        await _settle(pilot)
        table = app.screen.query_one("#events", LabTable)
        table.move_cursor(row=0)  # 7: a node's disk
        await pilot.press("enter")
        await _settle(pilot)
        assert isinstance(app.screen, NodeScreen)


async def test_a_warned_job_is_marked_in_the_jobs_list() -> None:
    app = make_app(_warned(FakeSource()))
    async with app.run_test(size=(160, 48)) as pilot:
        await _settle(pilot)
        await pilot.press("2")
        await _settle(pilot)
        assert isinstance(app.screen, JobsScreen)
        table = app.screen.query_one("#jobs", LabTable)
        row = [str(c) for c in table.get_row("101")]
        assert "running!" in row
        assert any(c.startswith("idle GPUs: warned 2m") for c in row), row
        other = [str(c) for c in table.get_row("100")]
        assert "running" in other and not any("idle" in c for c in other)


@pytest.mark.parametrize("size", SIZES)
def test_events_snapshot(snap_compare, size) -> None:
    async def run_before(pilot) -> None:
        await _open_events(pilot)

    assert snap_compare(make_app(FakeSource()), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_jobs_with_an_idle_warning_snapshot(snap_compare, size) -> None:
    async def run_before(pilot) -> None:
        await _settle(pilot)
        await pilot.press("2")
        await _settle(pilot)

    assert snap_compare(make_app(_warned(FakeSource())), terminal_size=size, run_before=run_before)
