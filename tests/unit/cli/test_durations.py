"""Durations and times typed by people: words with digits that ``int``/``float`` refuse
(a superscript two passes ``str.isdigit``) are a clear refusal, never a traceback."""

from __future__ import annotations

import click
import pytest

from mlsm.cli.common import parse_duration
from mlsm.cli.usage import parse_time
from mlsm.errors import ValidationError


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90.0), ("15m", 900.0), ("1h30m", 5400.0), ("1.5d", 129600.0)]
)
def test_durations_in_the_documented_forms(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["\u00b2h", "1\u00b2m", "\u2460h", "h", "2w", "1.2.3h"])
def test_a_word_that_is_not_a_duration_is_refused_as_one(text: str) -> None:
    with pytest.raises(click.BadParameter, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["\u00b2d", "\u00b2", "+\u00b2h", "31/01/2027"])
def test_a_word_that_is_not_a_time_is_refused_as_one(text: str) -> None:
    with pytest.raises((ValidationError, click.BadParameter)):
        parse_time(text, now=1_800_000_000.0)


def test_times_in_the_documented_forms() -> None:
    now = 1_800_000_000.0
    assert parse_time("30d", now=now) == now - 30 * 86400
    assert parse_time("+2h", now=now) == now + 7200
    assert parse_time("now", now=now) == now
