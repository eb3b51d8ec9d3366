"""The dashboard app: sections as modes, keys and the palette, one poll worker for the screen
on top. What the dashboard does to the lab lives in :mod:`tui.actions`."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.notifications import SeverityLevel
from textual.reactive import reactive
from textual.screen import Screen
from textual.timer import Timer

from mlsm.errors import AuthenticationError, MlsmError, UnavailableError
from mlsm.termsafe import visible
from mlsm.wire import api
from tui import screens
from tui.actions import Actions
from tui.screens.base import Dashboard, View
from tui.screens.overview import OverviewScreen
from tui.source import DataSource
from tui.widgets.help import CommandLine, HelpScreen, LoginModal
from tui.widgets.status import Connection, StatusBar, StatusHost

#: Seconds between polls of the screen on top.
POLL_S = 2.0
#: Longest wait between reconnect attempts while the master is away.
MAX_BACKOFF_S = 30.0
#: Retry delay when data arrived before the screen finished composing.
COMPOSE_RETRY_S = 0.05
VIEW_NAMES = ("nodes", "jobs", "datasets", "admin", "usage", "events")


class MlsmApp(App[None]):
    """ML Server Manager dashboard. ``source`` is any :class:`~tui.source.DataSource`."""

    TITLE = "mlsm"
    CSS_PATH = str(Path(__file__).with_name("mlsm.tcss"))
    # The first screen's class; the others load when first shown (see tui.screens).
    MODES = {
        "nodes": OverviewScreen,
        "jobs": lambda: screens.JobsScreen(),
        "datasets": lambda: screens.DatasetsScreen(),
        "admin": lambda: screens.AdminScreen(),
        "usage": lambda: screens.UsageScreen(),
        "events": lambda: screens.EventsScreen(),
    }
    DEFAULT_MODE = "nodes"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help"),
        Binding("colon", "command_line", "Go to", key_display=":"),
        Binding("1", "view('nodes')", "Nodes", show=False),
        Binding("2", "view('jobs')", "Jobs", show=False),
        Binding("3", "view('datasets')", "Datasets", show=False),
        Binding("4", "view('admin')", "Admin", show=False),
        Binding("5", "view('usage')", "Usage", show=False),
        Binding("ctrl+t", "toggle_theme", "Light/dark", show=False),
        Binding("ctrl+r", "refresh", "Refresh now", show=False),
    ]

    #: No repaint of its own: the status bar watches it and repaints itself when its line changes.
    conn: reactive[Connection] = reactive(Connection, always_update=True, repaint=False)

    def __init__(
        self,
        source: DataSource,
        *,
        readonly: bool = False,
        clock: Callable[[], float] = time.time,
        poll_s: float = POLL_S,
        light: bool = False,
    ) -> None:
        super().__init__()
        self.source = source
        self.readonly = readonly
        self.clock = clock
        self.poll_s = poll_s
        self.light = light
        self._timer: Timer | None = None
        self._fails = 0
        self._asking_login = False
        self._stale_ticker: Timer | None = None
        self.first_data_at: float | None = None
        self._frozen = False  # see _freeze_start_up
        self._polled = False  # a poll was asked for (the first one starts once)
        self.actions = Actions(self)

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """Every toast (a widget's ``notify`` lands here too) shows its text as it is: job
        names and the master's messages are never markup, and their controls are visible."""
        super().notify(
            visible(message), title=visible(title), severity=severity, timeout=timeout, markup=False
        )

    # ------------------------------------------------------------ state
    def now(self) -> float:
        return self.clock()

    @property
    def is_admin(self) -> bool:
        return api.ROLE_RANK.get(self.conn.role, 0) >= api.ROLE_RANK["admin"]

    def on_mount(self) -> None:
        self.theme = "textual-light" if self.light else "textual-dark"
        self.conn = replace(self.conn, url=self.source.url)  # a first poll may be under way
        if not self._polled:  # the first screen's resume usually started the first poll
            self.poll_now()

    async def on_unmount(self) -> None:
        if self._frozen:
            gc.unfreeze()  # back to the collector: it frees them as the app goes
            self._frozen = False
        await self.source.aclose()

    def _freeze_start_up(self) -> None:
        """Once the first data is drawn: the objects alive now (modules, widgets, styles,
        the first rows) stay for the app's life, so the cyclic collector stops walking
        them. Each poll's garbage made it walk all of them, more often than not: half of
        an idle overview's CPU on a 1,000-node lab."""
        if self._frozen:
            return
        gc.collect()
        gc.freeze()
        self._frozen = True

    def watch_conn(self, conn: Connection) -> None:
        stale = conn.state == "stale"
        for screen in self.screen_stack:
            if isinstance(screen, View):
                screen.set_stale(stale)
        if stale and self._stale_ticker is None:
            self._stale_ticker = self.set_interval(1.0, self._tick_status)
        elif not stale and self._stale_ticker is not None:
            self._stale_ticker.stop()
            self._stale_ticker = None

    def _tick_status(self) -> None:
        for bar in self.screen.query(StatusBar):
            bar._show()

    def top_view(self) -> View | None:
        return next((s for s in reversed(self.screen_stack) if isinstance(s, View)), None)

    # ------------------------------------------------------------ polling
    def poll_now(self) -> None:
        """Poll the screen on top now (and from then on every few seconds)."""
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self._polled = True
        self.poll()

    @work(exclusive=True, group="poll")
    async def poll(self) -> None:
        view = self.top_view()
        delay = (view.POLL_S if view and view.POLL_S else None) or self.poll_s
        try:
            if not self.conn.user:  # who we are and the view's data: one round trip
                me, data = await self._me_and(view)
                self.conn = replace(self.conn, user=me.username, role=me.role, state="live")
                self.refresh_bindings()
            else:
                data = await view.fetch() if view is not None else None
        except AuthenticationError:
            self.conn = replace(self.conn, state="login", user="", role="")
            self._ask_login()
            return
        except UnavailableError as exc:
            self._fails += 1
            delay = min(self.poll_s * 2 ** min(self._fails, 5), MAX_BACKOFF_S)
            self.conn = replace(
                self.conn, state="stale", message=exc.message, retry_at=self.now() + delay
            )
        except MlsmError as exc:
            self.notify(exc.message, title="master", severity="error", timeout=4)
        else:
            self._fails = 0
            self.conn = replace(
                self.conn, state="live", last_ok=self.now(), retry_at=None, message=""
            )
            if view is not None and not view.ready:
                delay = COMPOSE_RETRY_S
            elif view is not None and data is not None and view.is_attached:
                try:
                    with self.batch_update():
                        view.apply(data)
                except NoMatches:  # the screen is still composing; try again in a moment
                    delay = COMPOSE_RETRY_S
                else:
                    if self.first_data_at is None:
                        self.first_data_at = time.monotonic()
                        self.call_after_refresh(self._freeze_start_up)
        self._timer = self.set_timer(delay, self.poll)

    async def _me_and(self, view: View | None) -> tuple[api.Me, Any]:
        """The signed-in user and ``view``'s data, asked for together (the first screen
        waits for one round trip, not two); the first error raised, the user's first."""
        got = await asyncio.gather(
            self.source.me(),
            view.fetch() if view is not None else asyncio.sleep(0),
            return_exceptions=True,
        )
        for result in got:
            if isinstance(result, BaseException):
                raise result
        me, data = got
        assert isinstance(me, api.Me)
        return me, data

    def _ask_login(self) -> None:
        if self._asking_login:
            return
        self._asking_login = True

        def done(ok: bool | None) -> None:
            self._asking_login = False
            if ok:
                self.conn = replace(self.conn, user="", role="")
                self.poll_now()

        self.push_screen(LoginModal(self.source.url, self.source.login), done)

    # ------------------------------------------------------------ navigation
    def action_view(self, name: str) -> None:
        if name == "admin" and not self.is_admin:
            self.notify("the admin view is for admins", severity="warning")
            return
        if name not in VIEW_NAMES:
            self.notify(f"no view {name!r}: try {', '.join(VIEW_NAMES)}", severity="warning")
            return
        self.switch_mode(name)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))

    def action_command_line(self) -> None:
        self.push_screen(CommandLine(), self.run_command)

    def action_toggle_theme(self) -> None:
        self.light = not self.light
        self.theme = "textual-light" if self.light else "textual-dark"

    def action_refresh(self) -> None:
        self.poll_now()

    def run_command(self, text: str | None) -> None:
        """Run a ``:`` command: a view name, ``job ID``, ``node NAME``, ``theme`` or ``q``."""
        if not text:
            return
        word, _, arg = text.strip().partition(" ")
        word = word.lower()
        aliases = {
            "node": "nodes",
            "overview": "nodes",
            "job": "jobs",
            "dataset": "datasets",
            "ds": "datasets",
        }
        if word in ("q", "quit", "exit"):
            self.exit()
        elif word == "theme":
            self.action_toggle_theme()
        elif word in ("job", "j") and arg.strip().isdecimal():
            self.open_job(int(arg))
        elif word in ("node", "n") and arg.strip():
            self.open_node(arg.strip())
        else:
            self.action_view(aliases.get(word, word))

    def open_node(self, name: str) -> None:
        self.push_screen(screens.NodeScreen(name))

    def open_job(self, job_id: int, tab: str = "details") -> None:
        self.push_screen(screens.JobScreen(job_id, tab))

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """The palette reaches every view and every binding of the screen it was opened on."""
        yield from super().get_system_commands(screen)
        for name in VIEW_NAMES:
            if name != "admin" or self.is_admin:
                yield SystemCommand(
                    f"Go to {name}",
                    f"switch to the {name} view (:{name})",
                    partial(self.action_view, name),
                )
        yield SystemCommand(
            "Light/dark theme", "switch between light and dark (ctrl+t)", self.action_toggle_theme
        )
        yield SystemCommand(
            "Refresh now", "fetch from the master now (ctrl+r)", self.action_refresh
        )
        seen = {"quit", "help", "command_line", "toggle_theme", "refresh", "command_palette"}
        for key, active in screen.active_bindings.items():
            binding = active.binding
            if (
                not active.enabled
                or not binding.description
                or binding.action in seen
                or binding.action.startswith("view(")
            ):
                continue
            seen.add(binding.action)
            yield SystemCommand(
                binding.description,
                f"key {self.get_key_display(binding) or key}",
                partial(self.run_action, binding.action, active.node),
            )


if TYPE_CHECKING:  # the screens and the status bar see the app through protocols: mypy
    # checks here that it is what they take it for
    _as_screens_see_it: type[Dashboard] = MlsmApp
    _as_status_bar_sees_it: type[StatusHost] = MlsmApp
