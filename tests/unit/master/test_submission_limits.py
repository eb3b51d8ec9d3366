"""Bounds on what one submission may make the master build and store."""

from __future__ import annotations

import msgspec
import pytest

from mlsm.errors import PayloadTooLarge, ValidationError
from mlsm.master.jobspec import (
    MAX_ARRAY_TASKS,
    MAX_SUBMISSION_STORED_BYTES,
    StoredJobSpec,
    check_stored_size,
    parse_array,
)
from mlsm.wire.ints import INT64_MAX


def test_array_forms() -> None:
    assert parse_array("3") == (range(0, 3), 0)
    assert parse_array("5-9%2") == (range(5, 10), 2)
    assert parse_array("0-3%100") == (range(0, 4), 4)  # a throttle above the count: no limit


@pytest.mark.parametrize(
    "spec",
    [
        "0-99999999999999999999",  # counted, never built
        "99999999999999999999",
        f"0-{MAX_ARRAY_TASKS}",
        f"{INT64_MAX}-{INT64_MAX + 1}",  # two tasks, but an index no database holds
        "9-5",
        "0",
    ],
)
def test_array_bounds(spec: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_array(spec)
    assert info.value.details["path"] == "array"


def test_largest_array_is_accepted() -> None:
    indices, _ = parse_array(f"0-{MAX_ARRAY_TASKS - 1}")
    assert len(indices) == MAX_ARRAY_TASKS


def _spec_of_size(size: int) -> StoredJobSpec:
    """A stored spec whose JSON encoding is exactly ``size`` bytes: {"v":2,"argv":["xxx..."]}."""
    empty = len(msgspec.json.encode(StoredJobSpec(argv=[""])))
    return StoredJobSpec(argv=["x" * (size - empty)])


def test_stored_size_at_the_limit_is_accepted_and_past_it_refused() -> None:
    tasks = 1000
    each = MAX_SUBMISSION_STORED_BYTES // tasks
    check_stored_size(_spec_of_size(each), tasks)
    with pytest.raises(PayloadTooLarge) as info:
        check_stored_size(_spec_of_size(each + 1), tasks)
    assert info.value.details == {
        "limit_bytes": MAX_SUBMISSION_STORED_BYTES,
        "stored_bytes": (each + 1) * tasks,
        "tasks": tasks,
    }
