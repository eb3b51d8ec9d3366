"""A bounded, searchable log view with follow and wrap (toolong / k9s habits).

A job writes what it likes into its log. Each line is shown as a terminal would leave it
after carriage returns (a progress bar's last state), without its colour sequences, and
with every other control character or escape sequence shown as an escape (``\\x1b]0;...``):
nothing in a log reaches the terminal, and markup in it is text.
"""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.reactive import reactive
from textual.widgets import Input, RichLog

from mlsm.termsafe import strip_sgr, visible
from tui.widgets.plain import PlainStatic

#: Lines kept in memory; older ones fall off the top.
MAX_LOG_LINES = 10_000


def display_line(line: str) -> str:
    """One log line as the view shows it: colours dropped, carriage returns applied the way
    a terminal applies them (each overwrites the line from its start), then every control
    character left shown as an escape. Tabs stay tabs."""
    line = strip_sgr(line)
    if "\r" in line:
        shown = ""
        for part in line.split("\r"):
            shown = part + shown[len(part) :]
        line = shown
    return visible(line, "\t")


class LogView(Vertical, can_focus=False):
    DEFAULT_CSS = """
    LogView { height: 1fr; }
    LogView > #log-info { height: 1; background: $boost; color: $text-muted; }
    LogView > RichLog { height: 1fr; background: $surface; }
    LogView > #log-search { display: none; height: 3; }
    LogView.-searching > #log-search { display: block; }
    """
    BINDINGS = [
        Binding("f", "toggle_follow", "Follow"),
        Binding("w", "toggle_wrap", "Wrap"),
        Binding("g", "top", "Top", show=False),
        Binding("G", "bottom", "Bottom", show=False),
        Binding("slash", "search", "Search"),
        Binding("n", "next_match", "Next", show=False),
        Binding("N", "prev_match", "Prev", show=False),
        Binding("escape", "close_search", "Close search", show=False),
    ]

    follow: reactive[bool] = reactive(True)
    wrap: reactive[bool] = reactive(False)

    def __init__(self, *, max_lines: int = MAX_LOG_LINES, id: str | None = None) -> None:
        super().__init__(id=id)
        self.max_lines = max_lines
        self.lines: deque[str] = deque(maxlen=max_lines)
        self.dropped = 0
        self.ended: str | None = None
        self.term = ""
        self._partial = ""
        self._match = -1

    def compose(self) -> ComposeResult:
        yield PlainStatic(id="log-info")
        yield RichLog(max_lines=self.max_lines, wrap=False, auto_scroll=True, id="log-text")
        yield Input(placeholder="search the log; enter to find, esc to close", id="log-search")

    @property
    def text_log(self) -> RichLog:
        return self.query_one("#log-text", RichLog)

    def on_mount(self) -> None:
        self._show_info()

    def focus_log(self) -> None:
        self.text_log.focus()

    # ------------------------------------------------------------ data in
    @property
    def pending(self) -> str:
        """The unfinished last line, held back until its newline arrives."""
        return self._partial

    def append(self, chunk: str) -> None:
        """Add text; only whole lines are shown, in one batched write. Chunks may split
        lines (and ``\\r\\n``) anywhere: the unfinished tail waits for the next chunk."""
        data = self._partial + chunk
        if data.endswith("\r"):  # maybe half of a \r\n: decide with the next chunk
            data, held = data[:-1], "\r"
        else:
            held = ""
        parts = data.replace("\r\n", "\n").split("\n")
        self._partial = parts.pop() + held
        if not parts:
            return
        parts = [display_line(part) for part in parts]
        over = len(self.lines) + len(parts) - self.max_lines
        if over > 0:
            self.dropped += over
        self.lines.extend(parts)
        self.text_log.write(self._styled(parts[-self.max_lines :]), scroll_end=self.follow)
        self._show_info()

    def end(self, state: str) -> None:
        if self._partial:
            self.append("\n")
            self._partial = ""
        self.ended = state
        self._show_info()

    def _styled(self, lines: list[str]) -> Text:
        text = Text("\n".join(lines))
        if self.term:
            text.highlight_words([self.term], style="reverse yellow", case_sensitive=False)
        return text

    def _rerender(self) -> None:
        log = self.text_log
        log.clear()
        if self.lines:
            log.write(self._styled(list(self.lines)), scroll_end=self.follow)

    def _show_info(self) -> None:
        parts = [f"{len(self.lines)} lines"]
        if self.dropped:
            parts.append(f"{self.dropped} older dropped")
        parts.append("follow ON" if self.follow else "follow off")
        parts.append("wrap ON" if self.wrap else "wrap off")
        if self.term:
            parts.append(f"search {self.term!r}")
        if self.ended:
            parts.append(f"ended: {self.ended}")
        self.query_one("#log-info", PlainStatic).update(" " + " · ".join(parts), layout=False)

    # ------------------------------------------------------------ actions
    def watch_follow(self, follow: bool) -> None:
        if not self.is_mounted:
            return
        self.text_log.auto_scroll = follow
        if follow:
            self.text_log.scroll_end(animate=False)
        self._show_info()

    def watch_wrap(self, wrap: bool) -> None:
        if not self.is_mounted:
            return
        self.text_log.wrap = wrap
        self._rerender()
        self._show_info()

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow

    def action_toggle_wrap(self) -> None:
        self.wrap = not self.wrap

    def action_top(self) -> None:
        self.follow = False
        self.text_log.scroll_home(animate=False)

    def action_bottom(self) -> None:
        self.text_log.scroll_end(animate=False)

    def action_search(self) -> None:
        self.add_class("-searching")
        box = self.query_one("#log-search", Input)
        box.value = self.term
        box.focus()

    @on(Input.Submitted, "#log-search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.term = event.value.strip()
        self.remove_class("-searching")
        self.focus_log()
        self._rerender()
        self._match = -1
        self.action_next_match()
        self._show_info()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "close_search":
            return self.has_class("-searching")
        return True

    def action_close_search(self) -> None:
        self.remove_class("-searching")
        self.focus_log()

    def matches(self) -> list[int]:
        if not self.term:
            return []
        term = self.term.lower()
        return [i for i, line in enumerate(self.lines) if term in line.lower()]

    def _goto_match(self, step: int) -> None:
        found = self.matches()
        if not found:
            if self.term:
                self.app.notify(f"{self.term!r} not found", severity="warning")
            return
        if self._match < 0:
            self._match = len(found) - 1 if step < 0 else 0
        else:
            self._match = (self._match + step) % len(found)
        self.follow = False
        line = found[self._match]
        log = self.text_log
        y = line if not self.wrap else int(line / max(len(self.lines), 1) * log.virtual_size.height)
        log.scroll_to(y=max(y - 2, 0), animate=False)

    def action_next_match(self) -> None:
        self._goto_match(+1)

    def action_prev_match(self) -> None:
        self._goto_match(-1)
