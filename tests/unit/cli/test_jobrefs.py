"""Job references (`mlsm cancel 4-7 4,9,12_[0-3]`, `mlsm job show 12_3`): parsed once,
bounded before anything is built, one readable error each."""

from __future__ import annotations

import pytest

from mlsm.cli.jobrefs import JobRef, parse_ref, parse_selection
from mlsm.errors import ValidationError
from mlsm.wire.api import MAX_CANCEL_IDS
from mlsm.wire.ints import INT64_MAX


def test_ids_ranges_lists_and_tasks() -> None:
    sel = parse_selection(("7", "5-9", "12-12", "4,20,30-31", "40_3", "41_[0-2,5]"))
    assert sel.ids == [7, 5, 6, 8, 9, 12, 4, 20, 30, 31]  # each once, in order
    assert sel.tasks == {40: [3], 41: [0, 1, 2, 5]}
    req = sel.request(states=["queued"])
    assert [(t.array, t.indices) for t in req.tasks] == [(40, [3]), (41, [0, 1, 2, 5])]


@pytest.mark.parametrize(
    "arg",
    [
        "99999999999999999999999",
        f"1-{INT64_MAX + 1}",
        "0",
        "9-5",
        "7-4",
        f"1-{MAX_CANCEL_IDS + 1}",
        "1-99999999999999999999999999",  # refused, not expanded
        "1" * 5000,
        "abc",
        "-3",
        "5_",
        "5_[]",
        "5_[a]",
        "5_[3-1]",
        f"5_[0-{MAX_CANCEL_IDS}]",
        f"5_{INT64_MAX + 1}",
        "0_1",
    ],
)
def test_bad_references_are_one_readable_error(arg: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_selection((arg,))
    assert "\n" not in info.value.message and len(info.value.message) < 200


def test_the_total_is_bounded_across_arguments() -> None:
    half = MAX_CANCEL_IDS // 2
    with pytest.raises(ValidationError):
        parse_selection((f"1-{half}", f"{half + 1}-{MAX_CANCEL_IDS + 1}"))
    with pytest.raises(ValidationError):
        parse_selection((f"1-{half}", f"9_[0-{half}]"))


def test_one_job_is_an_id_or_a_task() -> None:
    assert parse_ref("12") == JobRef(12)
    assert parse_ref("12_3") == JobRef(12, 3)
    assert str(parse_ref("12_3")) == "12_3"
    for bad in ("4-7", "1,2", "12_[0-3]", "x", "0"):
        with pytest.raises(ValidationError):
            parse_ref(bad)
