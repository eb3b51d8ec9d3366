"""Everything the CLI writes to a terminal: messages, tables, JSON, prompts, error lines, logs.

This is the one module of ``mlsm.cli`` that writes (a test holds the others to it), because
almost every line the CLI prints carries text that came from a user or a remote host: job
names and commands, token names, audit targets, node facts an agent reported, a master's
error message. All of it goes through :func:`mlsm.termsafe.visible` here, so no escape
sequence, control or bidi character in that text can reach the terminal. The CLI's own
styling (the bold table header, the live progress line) is added after that.

Lines are written as ``click.echo`` writes them (the text, a newline, a flush); click
itself is imported only where its terminal handling is needed (styles, prompts, text
that is not ASCII), so that the hot calls (:mod:`mlsm.cli.fast`) run without it.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

import msgspec

from mlsm.termsafe import LogFilter, is_unsafe, visible

if TYPE_CHECKING:
    import click


def echo(message: object = "", *, err: bool = False, nl: bool = True, lines: bool = False) -> None:
    """Print one message. Newlines inside it are shown as ``\\n`` (a value cannot fake a
    second line) unless ``lines`` says the text is several lines the CLI itself built."""
    text = "" if message is None else str(message)
    _write(visible(text, "\n" if lines else ""), err=err, nl=nl)


def _write(text: str, *, err: bool = False, nl: bool = True) -> None:
    """``click.echo(text)``. ASCII text without escape sequences (all that :func:`visible`
    leaves of plain text) is written to the stream as click writes it; anything else goes
    through click, which also fixes a stream that cannot encode it."""
    if not text.isascii() or "\x1b" in text:
        import click

        click.echo(text, err=err, nl=nl)
        return
    stream = sys.stderr if err else sys.stdout
    if stream is None:  # no terminal at all (click writes nowhere then, too)
        return
    stream.write(text + "\n" if nl else text)
    stream.flush()


def error(message: str) -> None:
    """The one ``mlsm: error: ...`` line of a failed command."""
    echo(f"mlsm: error: {message}", err=True)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    """A plain, aligned table: readable in a terminal, greppable in a script. Every cell is
    shown with its controls visible, tabs and newlines too, so a row is one line."""
    cells = [[visible(str(h)) for h in headers]] + [
        ["" if c is None else visible(str(c)) for c in r] for r in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, r in enumerate(cells):
        line = "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        if n == 0 and sys.stdout.isatty():
            import click

            line = click.style(line, bold=True)
        _write(line)


def emit_json(data: Any) -> None:
    """Exact JSON. Characters a terminal would act upon are written as ``\\uXXXX`` escapes
    (C0 controls already are; DEL, C1 and format characters are escaped here): the same
    JSON value, safe to print."""
    text = msgspec.json.format(msgspec.json.encode(data), indent=2).decode()
    _write(_json_escape(text))


def emit_json_line(data: Any) -> None:
    """One compact JSON value on one line (a stream of them is JSON Lines), escaped like
    :func:`emit_json`; flushed, so a pipe reads each line as it comes."""
    _write(_json_escape(msgspec.json.encode(data).decode()))
    sys.stdout.flush()


def _json_escape(text: str) -> str:
    if visible(text, "\n") == text:
        return text
    # Outside strings JSON has only ASCII punctuation, digits, letters and whitespace, so
    # an unsafe character here is inside a string, where \uXXXX means the same character.
    return "".join(_json_char(ch) if ch != "\n" and is_unsafe(ch) else ch for ch in text)


def _json_char(ch: str) -> str:
    code = ord(ch)
    if code > 0xFFFF:
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def confirm(question: str) -> None:
    """Ask yes/no on the terminal; abort on no. The question may name remote things."""
    import click

    click.confirm(visible(question), abort=True)


def prompt_secret(prompt: str, *, confirm: bool = False) -> str:
    import click

    return str(click.prompt(visible(prompt), hide_input=True, confirmation_prompt=confirm))


def status_line(text: str) -> None:
    """Redraw the one live progress line on stderr (a terminal)."""
    import click

    click.echo("\r\x1b[2K" + visible(text), nl=False, err=True)


def clear_status_line() -> None:
    import click

    click.echo("\r\x1b[2K", nl=False, err=True)


def show_click_error(exc: click.ClickException) -> None:
    """Click's own usage and error text, with whatever value it quotes made visible."""
    buf = io.StringIO()
    exc.show(file=buf)
    echo(buf.getvalue(), err=True, nl=False, lines=True)


class LogSink:
    """Where ``mlsm logs`` writes a job's bytes: unchanged, or through a :class:`LogFilter`
    when they go to a terminal (see :func:`log_sink`)."""

    def __init__(self, out: IO[bytes], filtered: bool) -> None:
        self._out = out
        self._filter = LogFilter() if filtered else None

    def write(self, data: bytes) -> None:
        self._out.write(self._filter.feed(data) if self._filter else data)

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        if self._filter:
            self._out.write(self._filter.end())
        self._out.flush()


def log_sink(raw: bool) -> LogSink:
    """Logs to a terminal are filtered unless ``--raw``; to a pipe or a file they are the
    exact bytes the job wrote."""
    out = sys.stdout.buffer
    return LogSink(out, filtered=not raw and sys.stdout.isatty())


__all__ = [
    "LogSink",
    "clear_status_line",
    "confirm",
    "echo",
    "emit_json",
    "error",
    "log_sink",
    "prompt_secret",
    "show_click_error",
    "status_line",
    "table",
]
