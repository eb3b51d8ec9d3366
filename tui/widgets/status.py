"""The bottom line: which view, who is logged in, and whether the data is live."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, cast

from rich.text import Text

from mlsm.termsafe import visible
from tui.fmt import duration
from tui.widgets.plain import PlainStatic

VIEWS = (("nodes", "1 Nodes"), ("jobs", "2 Jobs"), ("datasets", "3 Datasets"), ("admin", "4 Admin"))


@dataclass(frozen=True)
class Connection:
    """State of the link to the master, as the status bar shows it."""

    state: str = "connecting"  # connecting | live | stale | login
    user: str = ""
    role: str = ""
    url: str = ""
    message: str = ""
    last_ok: float | None = None
    retry_at: float | None = None


class StatusHost(Protocol):
    """What the status bar reads of the app (:class:`tui.app.MlsmApp` is one)."""

    readonly: bool

    @property
    def conn(self) -> Connection: ...
    @property
    def is_admin(self) -> bool: ...
    @property
    def current_mode(self) -> str: ...
    def now(self) -> float: ...


class StatusBar(PlainStatic):
    DEFAULT_CSS = """
    StatusBar { dock: top; height: 1; background: $panel; color: $text; }
    """

    _shown: Text | None = None

    def on_mount(self) -> None:
        self.watch(self.app, "conn", self._show, init=True)

    def _show(self, _conn: Connection | None = None) -> None:
        """Repaint only when the line changes: every poll sets ``conn``, most change nothing."""
        text = self.render_status()
        if text != self._shown:
            self._shown = text
            self.update(text, layout=False)

    def render_status(self) -> Text:
        app = cast(StatusHost, self.app)
        conn = app.conn
        now = app.now()
        text = Text()
        narrow = self.size.width < 100
        url = visible(conn.url.split("://", 1)[-1] if narrow else conn.url)
        current = app.current_mode
        for mode, label in VIEWS:
            if mode == "admin" and not app.is_admin:
                continue
            style = "reverse bold" if mode == current else "dim"
            text.append(f" {label} ", style=style)
        text.append("  ")
        if conn.state == "live":
            text.append("● ", style="green")
            who = visible(f"{conn.user} ({conn.role})") if conn.user else "?"
            text.append(f"{who} @ {url}")
        elif conn.state == "connecting":
            text.append("◌ connecting to ", style="yellow")
            text.append(url)
        elif conn.state == "login":
            text.append("● login needed at ", style="yellow")
            text.append(url)
        elif narrow:  # the same facts in the 40 columns an 80-column terminal leaves
            text.append("✗ unreachable", style="bold red")
            if conn.last_ok is not None:
                text.append(f" · data {duration(now - conn.last_ok)} old", style="red")
            if conn.retry_at is not None:
                text.append(f" · retry {duration(conn.retry_at - now)}", style="red")
        else:
            text.append("✗ master unreachable", style="bold red")
            if conn.last_ok is not None:
                text.append(f", data {duration(now - conn.last_ok)} old", style="red")
            if conn.retry_at is not None:
                text.append(f", retry in {duration(conn.retry_at - now)}", style="red")
        if app.readonly:
            text.append(" [read-only]", style="bold magenta")
        return text

    def on_resize(self) -> None:
        self._shown = None
        self._show()
