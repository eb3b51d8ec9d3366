"""``mlsm.termsafe``: what untrusted text may put on a terminal, and how the rest is shown."""

from __future__ import annotations

import unicodedata

import pytest

from mlsm.termsafe import SGR_RESET, LogFilter, escape_char, is_unsafe, strip_sgr, visible

OSC_TITLE = "\x1b]2;PWNED\x07"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("evil" + OSC_TITLE, "evil\\x1b]2;PWNED\\x07"),
        ("a\x1b[2Jb", "a\\x1b[2Jb"),  # CSI clear screen
        ("a\x9b31mb", "a\\x9b31mb"),  # C1 CSI
        ("a\x90qb\x9c", "a\\x90qb\\x9c"),  # C1 DCS ... ST
        ("del\x7f", "del\\x7f"),
        ("nul\x00", "nul\\x00"),
        ("bell\x07back\x08", "bell\\x07back\\x08"),
        ("tab\there", "tab\\there"),
        ("two\nlines\r", "two\\nlines\\r"),
        ("abc\u202edcba", "abc\\u202edcba"),  # right-to-left override
        ("x\u2066y\u2069", "x\\u2066y\\u2069"),  # isolates
        ("ad\u200bmin", "ad\\u200bmin"),  # zero-width space
        ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),  # line and paragraph separators
        ("tag\U000e0041", "tag\\U000e0041"),  # an invisible tag character
        ("lone\udcff", "lone\\udcff"),  # a lone surrogate (undecodable byte)
        ("\x85next line", "\\x85next line"),
    ],
)
def test_every_control_format_and_separator_is_shown_as_an_escape(raw: str, shown: str) -> None:
    assert visible(raw) == shown


@pytest.mark.parametrize(
    "text",
    [
        "",
        "train-resnet50 --lr=0.1",
        "[/x] [bold]not markup[/bold]",
        "Grüße, 日本語, 한국어, עברית, العربية",
        "emoji 🚀 and flags 🇩🇪",
        "no\u00a0break and\u3000ideographic space",
        "private use \ue000",
        "back\\slash \\x1b stays as typed",
    ],
)
def test_printable_text_is_returned_unchanged(text: str) -> None:
    assert visible(text) == text


def test_keep_lets_named_characters_through() -> None:
    assert visible("a\tb\nc\x1bd", "\n\t") == "a\tb\nc\\x1bd"


def test_the_unsafe_set_is_the_unicode_categories_a_terminal_acts_upon() -> None:
    """Spot-check against the Unicode database over the whole BMP: every Cc/Cf/Cs/Zl/Zp
    code point is escaped, and nothing else."""
    for code in range(0x10000):
        ch = chr(code)
        unsafe = unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Zl", "Zp"}
        assert is_unsafe(ch) is unsafe, hex(code)
        assert (visible(ch) != ch) is unsafe, hex(code)


def test_escape_notation_is_python_style() -> None:
    assert escape_char("\x1b") == "\\x1b"
    assert escape_char("\u202e") == "\\u202e"
    assert escape_char("\U000e0001") == "\\U000e0001"
    assert escape_char("\t") == "\\t"


def test_strip_sgr_removes_only_colour_and_style() -> None:
    assert strip_sgr("\x1b[1;31mred\x1b[0m \x1b]2;t\x07") == "red \x1b]2;t\x07"


# ------------------------------------------------------------------ LogFilter
def _filtered(*chunks: bytes) -> bytes:
    f = LogFilter()
    return b"".join(f.feed(c) for c in chunks) + f.end()


def test_log_filter_keeps_newlines_tabs_carriage_returns_and_colours() -> None:
    log = b"epoch 1\tloss 0.5\n\r 10%|#   |\r 20%|##  |\n\x1b[32mok\x1b[0m\n"
    assert _filtered(log) == log + SGR_RESET.encode()


def test_log_filter_shows_every_other_sequence() -> None:
    log = (
        "title" + OSC_TITLE + " clear\x1b[2J up\x1b[A dcs\x1bPq\x1b\\ bell\x07 rlo\u202e 8bit\x9b1m"
    ).encode()
    out = _filtered(log)
    assert b"\x1b" not in out and b"\x07" not in out and "\u202e".encode() not in out
    assert b"\xc2\x9b" not in out
    assert out.decode() == (
        "title\\x1b]2;PWNED\\x07 clear\\x1b[2J up\\x1b[A dcs\\x1bPq\\x1b\\ bell\\x07"
        " rlo\\u202e 8bit\\x9b1m"
    )


def test_log_filter_sees_through_any_chunking() -> None:
    """UTF-8 characters and SGR sequences split across chunks are joined, and an escape
    sequence split across chunks is still shown, byte by byte as one string."""
    log = "é 🚀 \x1b[1;31mred\x1b[0m " + OSC_TITLE + " end\n"
    data = log.encode()
    whole = _filtered(data)
    assert _filtered(*(data[i : i + 1] for i in range(len(data)))) == whole
    for cut in range(len(data) + 1):
        assert _filtered(data[:cut], data[cut:]) == whole, cut
    assert whole.decode() == ("é 🚀 \x1b[1;31mred\x1b[0m \\x1b]2;PWNED\\x07 end\n" + SGR_RESET)


def test_log_filter_shows_bytes_that_are_not_utf8() -> None:
    assert _filtered(b"bin \xff\xfe ok\n") == b"bin \\xff\\xfe ok\n"


def test_log_filter_shows_an_unfinished_sequence_at_the_end() -> None:
    assert _filtered(b"tail \x1b[3") == b"tail \\x1b[3"


def test_log_filter_resets_style_only_after_a_colour() -> None:
    assert _filtered(b"plain\n") == b"plain\n"
