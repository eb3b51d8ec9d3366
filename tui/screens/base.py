"""The base of every section screen: polled by the app while it is on top."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, cast

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Input

from tui.actions import ActionHost, Actions
from tui.source import DataSource
from tui.widgets.status import StatusBar


class Dashboard(ActionHost, Protocol):
    """What a screen needs of the app (:class:`tui.app.MlsmApp` is one): its clock, its
    actions, and the detail screens it opens."""

    actions: Actions

    def now(self) -> float: ...
    def open_job(self, job_id: int, tab: str = ...) -> None: ...
    def open_node(self, name: str) -> None: ...


class View(Screen[None]):
    """A screen that shows master data. ``fetch`` runs in the app's poll worker,
    ``apply`` on the UI thread inside ``batch_update``; only the screen on top is polled."""

    #: Actions that change something: hidden in read-only mode.
    MUTATING: ClassVar[frozenset[str]] = frozenset()
    #: Actions only admins see.
    ADMIN: ClassVar[frozenset[str]] = frozenset()
    #: Seconds between polls while this screen is on top.
    POLL_S: ClassVar[float | None] = None

    BINDINGS = [Binding("escape", "back", "Back", show=False)]

    @property
    def mlsm(self) -> Dashboard:
        return cast(Dashboard, self.app)

    @property
    def source(self) -> DataSource:
        return self.mlsm.source

    @property
    def actions(self) -> Actions:
        return self.mlsm.actions

    #: True once ``setup`` ran (columns exist): data is applied only then.
    ready = False

    def on_mount(self) -> None:
        self.setup()
        self.ready = True

    def setup(self) -> None:
        """Build what ``compose`` could not (table columns); runs once, before any data."""

    def body(self) -> ComposeResult:
        yield from ()

    def compose(self) -> ComposeResult:
        yield from self.body()
        yield Footer()
        yield StatusBar()

    async def fetch(self) -> Any:
        return None

    def apply(self, data: Any) -> None:
        """Show fetched data; called inside ``app.batch_update()``."""

    def set_stale(self, stale: bool) -> None:
        self.set_class(stale, "-stale")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in self.MUTATING and self.mlsm.readonly:
            return False
        if action in self.ADMIN and not self.mlsm.is_admin:
            return False
        return True

    def on_screen_resume(self) -> None:
        self.mlsm.poll_now()

    def action_back(self) -> None:
        focused = self.focused
        if isinstance(focused, Input) and focused.has_class("filter"):
            focused.value = ""
            self.focus_main()
            return
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()

    def focus_main(self) -> None:
        """Put the focus back on the screen's main table."""

    def refresh_now(self) -> None:
        self.mlsm.poll_now()
