"""``?`` help, the ``:`` command line, and the login dialog."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import ActiveBinding, Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Input, Label, Static

from mlsm.errors import MlsmError
from tui.widgets.plain import PlainLabel, PlainStatic

COMMANDS_HELP = [
    (":nodes", "lab overview"),
    (":jobs", "the job table"),
    (":datasets", "datasets by node"),
    (":admin", "users, join tokens, nodes, audit (admins)"),
    (":usage", "GPU-hours, utilisation, queue and wait charts"),
    (":job ID", "open one job"),
    (":node NAME", "open one node"),
    (":theme", "switch dark / light"),
    (":q", "quit"),
]


class HelpScreen(ModalScreen[None]):
    """Every binding of the screen below, and the ``:`` commands."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 76; max-width: 100%; height: auto; max-height: 100%; border: thick $primary; background: $surface; padding: 0 1; }
    """
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]

    def __init__(self, screen: Screen[object]) -> None:
        super().__init__()
        self.target = screen

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        seen: set[str] = set()
        self.entries: list[tuple[str, str]] = []

        def rank(item: tuple[str, ActiveBinding]) -> int:
            node = item[1].node
            return 0 if node is self.target else 1 if node is self.app else 2

        # One row per action, under the key the footer shows for it: Textual's own ctrl+q
        # quits too, but the footer says q, so help must not say ^q.
        chosen: dict[str, tuple[str, ActiveBinding]] = {}
        for key, active in sorted(self.target.active_bindings.items(), key=rank):
            action = active.binding.action
            if action not in chosen or (active.binding.show and not chosen[action][1].binding.show):
                chosen[action] = (key, active)
        for key, active in sorted(chosen.values(), key=rank):
            binding = active.binding
            if not binding.description or binding.action in seen:
                continue
            seen.add(binding.action)
            style = "" if active.enabled else "dim"
            shown = self.app.get_key_display(binding) or key
            self.entries.append((shown, binding.description))
            table.add_row(shown, Text(binding.description, style=style))
        commands = Table.grid(padding=(0, 2))
        commands.add_column(style="bold cyan")
        commands.add_column()
        for cmd, what in COMMANDS_HELP:
            commands.add_row(cmd, what)
        with VerticalScroll():
            yield PlainLabel(
                f"Keys on this screen ({self.target.title or type(self.target).__name__})",
                classes="title",
            )
            yield Static(table)
            yield Label("\nCommand line (press :)")
            yield Static(commands)
            yield Label("\nctrl+p opens the palette: every action by name. esc closes this.")

    def action_close(self) -> None:
        self.dismiss(None)


class CommandLine(ModalScreen[str | None]):
    """A one-line prompt at the bottom, like vim's ``:``."""

    DEFAULT_CSS = """
    CommandLine { align: left bottom; background: transparent; }
    CommandLine > Input { dock: bottom; width: 100%; border: none; height: 1; padding: 0; background: $panel; }
    """
    BINDINGS = [Binding("escape", "close", "Close")]

    def compose(self) -> ComposeResult:
        yield Input(placeholder=":nodes :jobs :datasets :admin :job ID :node NAME :q", id="cmd")

    @on(Input.Submitted)
    def _run(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip().lstrip(":"))

    def action_close(self) -> None:
        self.dismiss(None)


class LoginModal(ModalScreen[bool]):
    """Log in when the dashboard has no valid token."""

    DEFAULT_CSS = """
    LoginModal { align: center middle; }
    LoginModal > Vertical { width: 60; max-width: 100%; height: auto; border: thick $primary; background: $surface; padding: 1 2; }
    LoginModal Input { margin-bottom: 1; }
    LoginModal #problem { color: $error; height: auto; }
    """
    BINDINGS = [Binding("escape", "quit_app", "Quit")]

    def __init__(self, url: str, login: Callable[[str, str], Awaitable[object]]) -> None:
        super().__init__()
        self.url = url
        self.login = login

    def compose(self) -> ComposeResult:
        with Vertical():
            yield PlainLabel(f"Log in to {self.url}")
            yield Input(placeholder="user name", id="user")
            yield Input(placeholder="password", password=True, id="password")
            yield PlainStatic("", id="problem")
            yield Button("Log in", id="ok", variant="primary")

    @on(Input.Submitted, "#user")
    def _next(self) -> None:
        self.query_one("#password", Input).focus()

    @on(Input.Submitted, "#password")
    @on(Button.Pressed, "#ok")
    def _go(self) -> None:
        self._login()

    @work(exclusive=True)
    async def _login(self) -> None:
        user = self.query_one("#user", Input).value.strip()
        password = self.query_one("#password", Input).value
        try:
            await self.login(user, password)
        except MlsmError as exc:
            self.query_one("#problem", PlainStatic).update(exc.message)
            return
        self.dismiss(True)

    def action_quit_app(self) -> None:
        self.app.exit()
