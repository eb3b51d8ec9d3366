"""The usage screen: Pilot tests over the fake lab (test double), and its snapshots."""

from __future__ import annotations

import pytest
from textual_plotext import PlotextPlot

from tests.tui.conftest import make_app
from tests.tui.fakes import NOW, FakeSource
from tests.tui.test_snapshots import SIZES, _setup
from tui.screens import UsageScreen
from tui.screens.usage import WINDOWS


async def settle(pilot, times: int = 4) -> None:
    for _ in range(times):
        await pilot.pause()


def head(app) -> str:
    return str(app.screen.query_one("#usage-head").render())


async def test_key_5_opens_usage_with_the_week_and_totals(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("5")
        await settle(pilot)
        assert isinstance(app.screen, UsageScreen)
        assert "last 7 days" in head(app) and "682.8 GPU-h" in head(app)
        assert ("usage_report", (NOW - 7 * 86400, NOW)) in fake.calls
        assert len(app.screen.query(PlotextPlot)) == 4


async def test_w_cycles_the_window(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("5")
        await settle(pilot)
        await pilot.press("w")
        await settle(pilot)
        assert "last 30 days" in head(app)
        assert ("usage_report", (NOW - WINDOWS[2][0], NOW)) in fake.calls
        await pilot.press("w")
        await settle(pilot)
        assert "last 24 h" in head(app)


async def test_a_member_sees_their_own_usage() -> None:
    fake = FakeSource(role="member", user="bob")
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("5")
        await settle(pilot)
        assert "bob's jobs" in head(app) and "201.0 GPU-h" in head(app)


async def test_command_line_reaches_usage(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("colon", *"usage", "enter")
        await settle(pilot)
        assert isinstance(app.screen, UsageScreen)


@pytest.mark.parametrize("size", SIZES)
def test_usage(snap_compare, size) -> None:
    assert snap_compare(make_app(FakeSource()), terminal_size=size, run_before=_setup("5"))
