"""Static and Label for data: what they show is never markup and never a terminal command.

A plain ``Static("job [/x]")`` parses Rich markup (a job named ``[/x]`` crashed the
dashboard) and passes control characters through to the terminal (a job name with an OSC
sequence retitled the window). These two pass their content through :func:`tui.fmt.safe`
on the way in, whether it came with the constructor or with ``update``: every widget that
shows something from a user or the master is one of them.
"""

from __future__ import annotations

from typing import Any

from textual.visual import VisualType
from textual.widgets import Label, Static

from tui import fmt


class PlainStatic(Static):
    def __init__(self, content: VisualType = "", **kwargs: Any) -> None:
        kwargs["markup"] = False
        super().__init__(fmt.safe(content), **kwargs)

    def update(self, content: VisualType = "", *, layout: bool = True) -> None:
        super().update(fmt.safe(content), layout=layout)


class PlainLabel(Label):
    def __init__(self, content: VisualType = "", **kwargs: Any) -> None:
        kwargs["markup"] = False
        super().__init__(fmt.safe(content), **kwargs)

    def update(self, content: VisualType = "", *, layout: bool = True) -> None:
        super().update(fmt.safe(content), layout=layout)
