"""Untrusted text made safe to show on a terminal.

Job names, commands, token names, audit targets, error messages from a master or an HTTP
server, log output: any of them may carry bytes a terminal acts upon (an OSC sequence that
retitles the window, a CSI sequence that moves the cursor or clears the screen, a bidi
override that shows ``exe.txt`` as ``txt.exe``). Every place that shows such text, the CLI
and the dashboard alike, passes it through :func:`visible` first.

The notation is Python's backslash escapes, one per character, so a person can read and
search for what is there: ``\\t`` ``\\n`` ``\\r`` for tab, newline and carriage return,
``\\x1b`` for other C0/C1 controls and DEL, ``\\u202e`` (``\\U000e0041`` beyond the BMP)
for Unicode format characters, separators and lone surrogates. A literal backslash is
left as it is: the view is for reading; ``--json`` gives exact values.

:class:`LogFilter` is the streaming form for ``mlsm logs`` on a terminal: it keeps what a
researcher's log needs (newline, tab, carriage return for progress bars, colour and style
SGR sequences) and makes everything else visible.
"""

from __future__ import annotations

import codecs
import functools
import re
import unicodedata

#: Unicode categories a terminal acts upon or does not show: controls (C0, C1, DEL),
#: format characters (bidi embeddings, overrides and isolates, zero-width characters,
#: tags), lone surrogates, and the line and paragraph separators.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}

#: What ``mlsm logs`` passes to a terminal unchanged besides SGR sequences.
LOG_KEEP = "\n\t\r"
#: A colour or style sequence (SGR): ESC [ parameters m. Nothing else a terminal reads
#: from a log is let through. The bound keeps a held-back partial sequence small.
SGR_MAX_PARAMS = 64
_SGR = re.compile(rf"\x1b\[[0-9;:]{{0,{SGR_MAX_PARAMS}}}m")
_SGR_PREFIX = re.compile(rf"\x1b(?:\[[0-9;:]{{0,{SGR_MAX_PARAMS}}})?\Z")
#: Written after the log when it used SGR, so its colours do not leak into the shell.
SGR_RESET = "\x1b[0m"
#: Characters worth a look: everything but printable ASCII (a cheap first filter).
_CANDIDATE = re.compile(r"[^\x20-\x7e]")


def escape_char(ch: str) -> str:
    """The visible form of one character."""
    short = _SHORT.get(ch)
    if short is not None:
        return short
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def is_unsafe(ch: str) -> bool:
    """True for a character a terminal acts upon or hides (see ``UNSAFE_CATEGORIES``)."""
    return not ch.isprintable() and unicodedata.category(ch) in UNSAFE_CATEGORIES


def visible(text: str, keep: str = "") -> str:
    """``text`` with every unsafe character written as an escape, except those in ``keep``.

    Printable text (almost all of it) is returned as it is without a per-character pass;
    otherwise only characters outside printable ASCII are looked at. Non-breaking and other
    spaces, private-use and unassigned characters are kept: a terminal prints them as
    glyphs."""
    if text.isprintable() or (keep and text.translate(_dropping(keep)).isprintable()):
        return text

    def shown(m: re.Match[str]) -> str:
        ch = m.group()
        return escape_char(ch) if ch not in keep and is_unsafe(ch) else ch

    return _CANDIDATE.sub(shown, text)


@functools.cache
def _dropping(keep: str) -> dict[int, None]:
    return dict.fromkeys(map(ord, keep))


def strip_sgr(text: str) -> str:
    """``text`` without its colour and style sequences (the dashboard shows logs plain)."""
    return _SGR.sub("", text)


class LogFilter:
    """Log bytes, chunk by chunk, made safe for a terminal.

    Newline, tab and carriage return pass (progress bars such as tqdm's redraw their line
    with ``\\r``), and so do SGR colour/style sequences; every other control, escape
    sequence (OSC, DCS, cursor movement, ...) and format character is shown as an escape.
    Chunks may split a UTF-8 character or an SGR sequence anywhere: both are held back
    until the next chunk. Bytes that are not UTF-8 are shown as ``\\xNN``."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("backslashreplace")
        self._held = ""
        self._styled = False

    def feed(self, data: bytes) -> bytes:
        text = self._held + self._decoder.decode(data)
        partial = _SGR_PREFIX.search(text)
        cut = partial.start() if partial else len(text)
        self._held = text[cut:]
        return self._render(text[:cut]).encode()

    def end(self) -> bytes:
        """What is left, and a style reset if the log set a colour."""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        out = self._render(text)
        if self._styled:
            out += SGR_RESET
            self._styled = False
        return out.encode()

    def _render(self, text: str) -> str:
        out: list[str] = []
        pos = 0
        for m in _SGR.finditer(text):
            out.append(visible(text[pos : m.start()], LOG_KEEP))
            out.append(m.group())
            self._styled = True
            pos = m.end()
        out.append(visible(text[pos:], LOG_KEEP))
        return "".join(out)
