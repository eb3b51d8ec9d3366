"""Reusable dashboard widgets; each carries its own ``DEFAULT_CSS``. Each loads when first
asked for (the log view is the job screen's, not the first screen's)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tui.lazy import lazy_attributes

if TYPE_CHECKING:
    from tui.widgets.confirm import ConfirmModal
    from tui.widgets.logview import LogView
    from tui.widgets.status import StatusBar
    from tui.widgets.table import LabTable

_MODULES = {
    "ConfirmModal": "confirm",
    "LabTable": "table",
    "LogView": "logview",
    "StatusBar": "status",
}


__getattr__ = lazy_attributes(__name__, _MODULES)


__all__ = ["ConfirmModal", "LabTable", "LogView", "StatusBar"]
