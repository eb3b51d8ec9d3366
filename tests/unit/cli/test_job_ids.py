"""`mlsm cancel ID|A-B...`: ids and ranges, bounded before anything is built."""

from __future__ import annotations

import pytest

from mlsm.cli.jobs import parse_job_ids
from mlsm.errors import ValidationError
from mlsm.wire.api import MAX_CANCEL_IDS
from mlsm.wire.ints import INT64_MAX


def test_ids_and_ranges() -> None:
    assert parse_job_ids(("7", "5-9", "12-12")) == [7, 5, 6, 7, 8, 9, 12]


@pytest.mark.parametrize(
    "arg",
    [
        "99999999999999999999999",
        f"1-{INT64_MAX + 1}",
        "0",
        "9-5",
        f"1-{MAX_CANCEL_IDS + 1}",
        "1-99999999999999999999999999",  # refused, not expanded
        "abc",
        "-3",
    ],
)
def test_bad_ids_are_one_readable_error(arg: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_job_ids((arg,))
    assert "\n" not in info.value.message


def test_the_total_is_bounded_across_arguments() -> None:
    half = MAX_CANCEL_IDS // 2
    with pytest.raises(ValidationError):
        parse_job_ids((f"1-{half}", f"{half + 1}-{MAX_CANCEL_IDS + 1}"))
