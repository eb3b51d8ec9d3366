"""Reusable dashboard widgets; each carries its own ``DEFAULT_CSS``."""

from tui.widgets.confirm import ConfirmModal
from tui.widgets.logview import LogView
from tui.widgets.status import StatusBar
from tui.widgets.table import LabTable

__all__ = ["ConfirmModal", "LabTable", "LogView", "StatusBar"]
