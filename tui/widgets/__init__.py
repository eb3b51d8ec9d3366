"""Reusable dashboard widgets; each carries its own ``DEFAULT_CSS``. Each loads when first
asked for (the log view is the job screen's, not the first screen's)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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


def __getattr__(name: str) -> object:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = ["ConfirmModal", "LabTable", "LogView", "StatusBar"]
