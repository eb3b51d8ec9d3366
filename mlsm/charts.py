"""The usage charts, drawn once for both faces: ``mlsm usage --plot`` (plotext in a
terminal) and the dashboard's usage screen (textual-plotext's widget, whose ``plt`` speaks
plotext's API). Pure: each function draws given figures on the plot it is handed.

Time runs along x as hours (or days, for windows over three days) before the window's end,
so the axis reads the same at any width, 80 columns included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from mlsm.wire import usage as wu

#: Bars shown at most (the largest users), and node lines besides the total.
MAX_BARS = 8
MAX_NODE_LINES = 4
_DAYS_AFTER_S = 3 * 86400.0


class Plot(Protocol):
    """What the charts use of plotext (the module, or textual-plotext's ``plt``)."""

    def clear_data(self) -> None: ...
    def title(self, label: str) -> None: ...
    def xlabel(self, label: str) -> None: ...
    def bar(self, *args: Any, **kwargs: Any) -> None: ...
    def plot(self, *args: Any, **kwargs: Any) -> None: ...


def _axis(tl: wu.UsageTimeline) -> tuple[list[float], str]:
    days = tl.until - tl.since > _DAYS_AFTER_S
    unit = 86400.0 if days else 3600.0
    return [(t - tl.until) / unit for t in tl.ts], ("days" if days else "hours") + " before end"


def _points(xs: Sequence[float], ys: Sequence[float | None]) -> tuple[list[float], list[float]]:
    pairs = [(x, y) for x, y in zip(xs, ys, strict=False) if y is not None]
    return [x for x, _ in pairs], [y for _, y in pairs]


def gpu_hours_bars(plt: Plot, report: wu.UsageReport) -> None:
    """GPU-hours per group (the largest first), as horizontal bars."""
    plt.clear_data()
    rows = report.rows[:MAX_BARS]
    plt.title(f"GPU-hours by {report.by}")
    if rows:
        plt.bar(
            [r.key[:14] for r in reversed(rows)],
            [round(r.gpu_hours, 2) for r in reversed(rows)],
            orientation="horizontal",
            width=0.4,
        )


def utilisation_lines(plt: Plot, tl: wu.UsageTimeline) -> None:
    """Mean GPU utilisation over time: the lab's, and its busiest nodes'."""
    plt.clear_data()
    xs, label = _axis(tl)
    plt.title("GPU utilisation %")
    plt.xlabel(label)
    busiest = sorted(
        tl.util_by_node.items(), key=lambda kv: -sum(v for v in kv[1] if v is not None)
    )[:MAX_NODE_LINES]
    for name, ys in busiest:
        px, py = _points(xs, ys)
        if px:
            plt.plot(px, py, label=name[:12])
    px, py = _points(xs, tl.util_total)
    if px:
        plt.plot(px, py, label="all", marker="braille")


def queue_lines(plt: Plot, tl: wu.UsageTimeline) -> None:
    """Jobs waiting over time."""
    plt.clear_data()
    xs, label = _axis(tl)
    plt.title("jobs waiting")
    plt.xlabel(label)
    if xs:
        plt.plot(xs, [float(q) for q in tl.queue_length])


def wait_lines(plt: Plot, tl: wu.UsageTimeline) -> None:
    """Median wait (minutes) of the jobs that started in each step."""
    plt.clear_data()
    xs, label = _axis(tl)
    plt.title("median wait (min)")
    plt.xlabel(label)
    px, py = _points(xs, [None if w is None else w / 60.0 for w in tl.wait_median_s])
    if px:
        plt.plot(px, py)
