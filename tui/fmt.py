"""Pure formatting helpers: numbers, ages and tiny bar charts as Rich ``Text``, and
:func:`plain` / :func:`safe`, through which every string from a user or the master reaches
the screen.

Everything time-based takes ``now`` so snapshots stay deterministic.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import TypeVar, overload

from rich.text import Span, Text

from mlsm.termsafe import visible

C = TypeVar("C")

BLOCKS = " ▁▂▃▄▅▆▇█"
SPARK = "▁▂▃▄▅▆▇█"


def plain(value: object, style: str = "") -> Text:
    """Data (a job name, a message from the master) as ``Text``: never parsed as markup, so
    ``[/x]`` shows as itself, and every control character shown as an escape (``\\x1b``),
    so nothing in it reaches the terminal as a command."""
    return Text(visible(str(value)), style=style)


@overload
def safe(content: str | Text) -> Text: ...
@overload
def safe(content: C) -> C: ...
def safe(content: object) -> object:
    """What a widget may show: a string becomes :func:`plain` text; ``Text`` gets its control
    characters made visible, styles kept, except the newlines its builder put between lines
    (so a builder passes data strings through ``visible`` itself). Other renderables (bars,
    sparklines, grids of safe cells) pass as they are."""
    if isinstance(content, str):
        return plain(content)
    if isinstance(content, Text):
        return _safe_text(content)
    return content


def _safe_text(text: Text) -> Text:
    if visible(text.plain, "\n") == text.plain:
        return text
    out = text.blank_copy()
    cuts = sorted({i for span in text.spans for i in (span.start, span.end)} - {0, len(text)})
    for piece in text.divide(cuts):
        shown = visible(piece.plain, "\n")
        start = len(out)
        out.append(shown)
        out.spans.extend(Span(start, start + len(shown), span.style) for span in piece.spans)
    return out


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T", "P"):
        if abs(value) < 1024 or unit == "P":
            return f"{value:.0f}{unit}" if unit == "B" or value >= 100 else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}P"  # pragma: no cover


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def ago(ts: float | None, now: float) -> str:
    if not ts:
        return "never"
    return f"{duration(now - ts)} ago"


def level_style(frac: float) -> str:
    """Green, yellow, red by how full something is."""
    if frac >= 0.9:
        return "red"
    if frac >= 0.6:
        return "yellow"
    return "green"


def bar_look(frac: float, width: int) -> tuple[int, str]:
    """What :func:`bar` draws for ``frac``: how many cells are full, and their colour. Two
    values with the same look draw the same bar (a screen compares looks, not values)."""
    frac = min(max(frac, 0.0), 1.0)
    return round(frac * width), level_style(frac)


def bar(frac: float, width: int, *, label: str = "") -> Text:
    """A horizontal bar ``██████░░░░`` with an optional label after it."""
    full, style = bar_look(frac, width)
    text = Text()
    text.append("█" * full, style=style)
    text.append("░" * (width - full), style="dim")
    if label:
        text.append(f" {label}")
    return text


def block(frac: float) -> str:
    """One vertical block character for a 0..1 value (``▁`` is shown even for 0)."""
    frac = min(max(frac, 0.0), 1.0)
    return BLOCKS[max(1, round(frac * (len(BLOCKS) - 1)))]


def blocks(
    fracs: Sequence[float], *, colour_by: Sequence[float] | None = None, sep: str = ""
) -> Text:
    """One block per value (per GPU); coloured by ``colour_by`` (or by the value)."""
    text = Text()
    for i, frac in enumerate(fracs):
        if i and sep:
            text.append(sep)
        text.append(block(frac), style=level_style(colour_by[i] if colour_by else frac))
    return text


def spark_chars(values: Sequence[float], width: int, *, top: float = 100.0) -> str:
    """What :func:`sparkline` shows: the last ``width`` values as characters, padded on
    the left."""
    tail = list(values)[-width:]
    chars = [
        SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1) + 0.5))] if top else SPARK[0]
        for v in tail
    ]
    return " " * (width - len(chars)) + "".join(chars)


def sparkline(values: Sequence[float], width: int, *, top: float = 100.0) -> Text:
    """The last ``width`` values as a one-line sparkline, padded on the left."""
    return Text(spark_chars(values, width, top=top), style="cyan")


def pct(frac: float) -> str:
    return f"{frac * 100:3.0f}%"


STATE_STYLE = {
    "online": "green",
    "stale": "yellow",
    "offline": "red",
    "draining": "magenta",
    "queued": "cyan",
    "held": "magenta",
    "assigned": "blue",
    "running": "green",
    "succeeded": "dim green",
    "failed": "red",
    "cancelled": "dim",
    "interrupted": "yellow",
    "pending": "cyan",
}


def state_text(state: str) -> Text:
    return Text(visible(state), style=STATE_STYLE.get(state, ""))


def command(argv: Sequence[str]) -> str:
    """The argv as a person would type it: plain words bare, the rest quoted, preferring
    double quotes (``'"'"'`` soup is correct shell but unreadable)."""
    out = []
    for arg in argv:
        if arg and shlex.quote(arg) == arg:
            out.append(arg)
        elif not any(c in arg for c in '"$`\\'):
            out.append(f'"{arg}"')
        else:
            out.append(shlex.quote(arg))
    return " ".join(out)
