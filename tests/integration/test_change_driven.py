"""A change-driven queue (``schedule_change_driven_jobs``, here 0: every queue is one), end to
end: a real master, a real agent on simulated GPUs. New jobs get passes of their own, and a
full pass runs only when something changed or a time came; nothing waits for the 30 s
safety pass: a submission starts at once, the backfill reservation holds against new jobs,
its expected start comes by itself, and a reservation's end frees its GPUs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mlsm.wire import usage as wu
from tests.integration.lab import Lab
from tests.support.wait import wait_until

JOB_WAIT_S = 20.0  # well below the 30 s safety pass


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("changes")) as lab:
        lab.start_master(MLSM_SCHEDULE_CHANGE_DRIVEN_JOBS="0")
        lab.start_agent("ca", gpus="2xA100-80GB")
        yield lab


@pytest.fixture(autouse=True)
def _idle_after(lab: Lab) -> Iterator[None]:
    yield
    lab.end_all(60)


def _submit(lab: Lab, *args: str) -> int:
    return lab.submit("--no-code", *args)


def test_a_submission_starts_and_the_backfill_reservation_holds_against_new_jobs(
    lab: Lab,
) -> None:
    first = _submit(lab, "--gpus", "1", "--timeout", "6s", "--", "sleep", "300")
    lab.wait_job(first, "running", JOB_WAIT_S)
    big = _submit(lab, "--gpus", "2", "--priority", "5", "--", "sleep", "300")
    j = wait_until(lambda: (x := lab.job(big)).expected_start and x, JOB_WAIT_S, "a reservation")
    assert j.expected_start is not None
    # passes over the new jobs only keep the big job's GPUs: one that would not end in
    # time waits (though a GPU is free), one that does backfills
    late = _submit(lab, "--gpus", "1", "--timeout", "60s", "--", "sleep", "300")
    wait_until(lambda: "reserved" in lab.job(late).reason, JOB_WAIT_S, "a verdict on it")
    fits = _submit(lab, "--gpus", "1", "--timeout", "2s", "--", "sleep", "1")
    assert lab.wait_job(fits, "succeeded", JOB_WAIT_S).started_at is not None
    b = lab.wait_job(big, "running", JOB_WAIT_S)
    assert b.started_at is not None and b.started_at >= j.expected_start - 1.0
    lj = lab.job(late)
    assert lj.state == "queued" and lj.started_at is None


def test_a_reservations_end_frees_its_gpus_without_a_kick(lab: Lab) -> None:
    made = lab.admin.reservations.create(
        wu.ReservationCreate(gpus=2, node="ca", duration_s=4, maintenance=True)
    )
    waiting = _submit(lab, "--gpus", "1", "--", "sleep", "300")
    w = wait_until(
        lambda: (x := lab.job(waiting)).reason != "waiting for the scheduler" and x,
        JOB_WAIT_S,
        "a verdict",
    )
    assert w.state == "queued" and f"reservation {made.id}" in w.reason, w.reason
    lab.wait_job(waiting, "running", JOB_WAIT_S)
