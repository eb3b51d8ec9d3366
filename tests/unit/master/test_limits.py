"""The lab's limits on a job (one rule for submit and edit: check_limits)."""

from __future__ import annotations

import pytest

from mlsm.errors import LimitExceeded
from mlsm.master.security import Principal
from mlsm.master.services.jobs.limits import JobAsk, check_limits
from mlsm.wire import api

MEMBER = Principal(kind="user", name="alice", role="member")
ADMIN = Principal(kind="user", name="root", role="admin")
LAB = api.LabSettings(
    max_gpus_per_job=2, max_time_limit_s=7200, default_time_limit_s=3600, member_max_priority=10
)


@pytest.mark.parametrize(
    ("ask", "limit"),
    [
        (JobAsk(gpus=3, priority=0, time_limit_s=0), "max_gpus_per_job"),
        (JobAsk(gpus=1, priority=0, time_limit_s=7201), "max_time_limit_s"),
        (JobAsk(gpus=1, priority=11, time_limit_s=0), "member_max_priority"),
    ],
)
def test_a_member_over_a_limit_is_refused_with_the_limit_named(ask, limit) -> None:
    with pytest.raises(LimitExceeded) as err:
        check_limits(ask, MEMBER, LAB)
    assert limit in err.value.message
    assert err.value.details["limit"] == limit
    assert err.value.code == "limit_exceeded" and err.value.status == 403


def test_within_the_limits_the_default_time_limit_is_filled_in() -> None:
    got = check_limits(JobAsk(gpus=2, priority=10, time_limit_s=0), MEMBER, LAB)
    assert got == JobAsk(gpus=2, priority=10, time_limit_s=3600)


def test_without_a_default_the_maximum_is_the_time_limit() -> None:
    lab = api.LabSettings(max_time_limit_s=7200)
    assert check_limits(JobAsk(1, 0, 0), MEMBER, lab).time_limit_s == 7200


def test_no_limits_set_changes_nothing() -> None:
    """With every limit off (the default lab, and a member ceiling at the top), a member's
    ask passes as it is."""
    ask = JobAsk(gpus=64, priority=1000, time_limit_s=0)
    assert check_limits(ask, MEMBER, api.LabSettings(member_max_priority=1000)) == ask
    within = JobAsk(gpus=64, priority=0, time_limit_s=0)
    assert check_limits(within, MEMBER, api.LabSettings()) == within


def test_admins_are_held_to_no_limit_but_get_the_default() -> None:
    got = check_limits(JobAsk(gpus=8, priority=1000, time_limit_s=0), ADMIN, LAB)
    assert got == JobAsk(gpus=8, priority=1000, time_limit_s=3600)


def test_a_member_may_always_lower_a_value_set_before_the_limit() -> None:
    before = JobAsk(gpus=4, priority=500, time_limit_s=86400)
    lowered = JobAsk(gpus=3, priority=400, time_limit_s=43200)
    assert check_limits(lowered, MEMBER, LAB, before=before) == lowered
    with pytest.raises(LimitExceeded):
        check_limits(JobAsk(gpus=3, priority=501, time_limit_s=43200), MEMBER, LAB, before=before)
    with pytest.raises(LimitExceeded):
        check_limits(JobAsk(gpus=5, priority=400, time_limit_s=43200), MEMBER, LAB, before=before)


def test_negative_priorities_are_always_allowed() -> None:
    assert check_limits(JobAsk(1, -1000, 60), MEMBER, LAB).priority == -1000


def test_by_default_members_may_lower_priority_but_not_raise_it() -> None:
    """The lab's default: no member raises a job above the default priority (an admin may,
    and a member may then lower it again without going back to the ceiling)."""
    lab = api.LabSettings()
    assert lab.member_max_priority == api.DEFAULT_PRIORITY
    check_limits(JobAsk(gpus=1, priority=-3, time_limit_s=0), MEMBER, lab)
    with pytest.raises(LimitExceeded, match=r"priority 1: .*at most 0"):
        check_limits(JobAsk(gpus=1, priority=1, time_limit_s=0), MEMBER, lab)
    check_limits(JobAsk(gpus=1, priority=1000, time_limit_s=0), ADMIN, lab)
    was = JobAsk(gpus=1, priority=7, time_limit_s=0)  # an admin raised it
    check_limits(JobAsk(gpus=1, priority=4, time_limit_s=0), MEMBER, lab, before=was)
    with pytest.raises(LimitExceeded):
        check_limits(JobAsk(gpus=1, priority=8, time_limit_s=0), MEMBER, lab, before=was)
