"""Usage: GPU-hours per user as bars, the lab's utilisation over time as lines (per node and
in all), jobs waiting and the median wait over time. Four textual-plotext charts in a 2x2
grid, drawn by :mod:`mlsm.charts` (the same charts ``mlsm usage --plot`` prints), readable
at 80x24; ``w`` cycles the window (a day, a week, 30 days)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid
from textual_plotext import PlotextPlot

from mlsm import charts
from mlsm.wire import usage as wu
from tui.screens.base import View
from tui.widgets.plain import PlainStatic

#: Windows ``w`` cycles through: (seconds, words).
WINDOWS: tuple[tuple[float, str], ...] = (
    (86400.0, "last 24 h"),
    (7 * 86400.0, "last 7 days"),
    (30 * 86400.0, "last 30 days"),
)
#: Points per line: one per step of the window.
TIMELINE_STEPS = 48


@dataclass
class UsageData:
    report: wu.UsageReport
    timeline: wu.UsageTimeline


class UsageScreen(View):
    POLL_S: ClassVar[float | None] = 30.0
    BINDINGS = [
        *View.BINDINGS,
        Binding("w", "window", "Window"),
        Binding("r", "refresh_now", "Refresh"),
    ]
    DEFAULT_CSS = """
    UsageScreen #usage-head { height: 1; padding: 0 1; }
    UsageScreen Grid { grid-size: 2 2; grid-gutter: 0 1; height: 1fr; }
    UsageScreen PlotextPlot { height: 1fr; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.window = 1  # a week

    def body(self) -> ComposeResult:
        yield PlainStatic("", id="usage-head")
        with Grid():
            yield PlotextPlot(id="usage-bars")
            yield PlotextPlot(id="usage-util")
            yield PlotextPlot(id="usage-queue")
            yield PlotextPlot(id="usage-wait")

    async def fetch(self) -> UsageData:
        now = self.mlsm.now()
        since = now - WINDOWS[self.window][0]
        report, timeline = await asyncio.gather(
            self.source.usage_report(since=since, until=now),
            self.source.usage_timeline(since=since, until=now, steps=TIMELINE_STEPS),
        )
        return UsageData(report=report, timeline=timeline)

    def apply(self, data: UsageData) -> None:
        r = data.report
        whose = f"{r.user}'s jobs" if r.user else "all users"
        self.query_one("#usage-head", PlainStatic).update(
            f"Usage, {WINDOWS[self.window][1]} ({whose}): {r.total.gpu_hours:.1f} GPU-h, "
            f"{r.total.util_gpu_hours:.1f} used, {r.total.jobs} jobs, "
            f"{r.total.energy_kwh:.1f} kWh   [w] window"
        )
        tl = data.timeline
        bars, util = (
            self.query_one("#usage-bars", PlotextPlot),
            self.query_one("#usage-util", PlotextPlot),
        )
        queue, wait = (
            self.query_one("#usage-queue", PlotextPlot),
            self.query_one("#usage-wait", PlotextPlot),
        )
        charts.gpu_hours_bars(bars.plt, r)
        charts.utilisation_lines(util.plt, tl)
        charts.queue_lines(queue.plt, tl)
        charts.wait_lines(wait.plt, tl)
        for plot in (bars, util, queue, wait):
            plot.refresh()

    def action_window(self) -> None:
        self.window = (self.window + 1) % len(WINDOWS)
        self.refresh_now()

    def action_refresh_now(self) -> None:
        self.refresh_now()
