"""One screen per section (modes) plus detail screens pushed on top of them.

Each screen's module loads when the screen is first asked for (the usage screen's charts,
the job screen's log view): the dashboard's first screen does not wait for the others."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tui.lazy import lazy_attributes

if TYPE_CHECKING:
    from tui.screens.admin import AdminScreen
    from tui.screens.datasets import DatasetsScreen
    from tui.screens.events import EventsScreen
    from tui.screens.job import JobScreen
    from tui.screens.jobs import JobsScreen
    from tui.screens.node import NodeScreen
    from tui.screens.overview import OverviewScreen
    from tui.screens.usage import UsageScreen

_MODULES = {
    "AdminScreen": "admin",
    "DatasetsScreen": "datasets",
    "EventsScreen": "events",
    "JobScreen": "job",
    "JobsScreen": "jobs",
    "NodeScreen": "node",
    "OverviewScreen": "overview",
    "UsageScreen": "usage",
}


__getattr__ = lazy_attributes(__name__, _MODULES)


__all__ = [
    "AdminScreen",
    "DatasetsScreen",
    "EventsScreen",
    "JobScreen",
    "JobsScreen",
    "NodeScreen",
    "OverviewScreen",
    "UsageScreen",
]
