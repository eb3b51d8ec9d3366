"""One screen per section (modes) plus detail screens pushed on top of them."""

from tui.screens.admin import AdminScreen
from tui.screens.datasets import DatasetsScreen
from tui.screens.events import EventsScreen
from tui.screens.job import JobScreen
from tui.screens.jobs import JobsScreen
from tui.screens.node import NodeScreen
from tui.screens.overview import OverviewScreen
from tui.screens.usage import UsageScreen

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
