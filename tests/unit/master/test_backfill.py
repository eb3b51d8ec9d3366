"""The scheduler's backfill with a reservation, holds (reservations) and preemption."""

from __future__ import annotations

import math

from mlsm.master.scheduler import Hold, PendingJob, Running, SchedContext, schedule
from tests.unit.master.test_scheduler import job, node, placed

NOW = 1_000_000.0
H = 3600.0


def ctx(**kw) -> SchedContext:
    kw.setdefault("now", NOW)
    return SchedContext(**kw)


def small(id: int, limit_h: float, **kw) -> PendingJob:
    return job(id, user="bob", gpus=1, time_limit_s=limit_h * H, **kw)


# ---------------------------------------------------------------- backfill reservation
def test_big_job_gets_a_reservation_and_an_expected_start():
    # 4 GPUs: 2 held by a job ending in 2 h, 2 free; the 4-GPU job must wait for them.
    running = [Running(job_id=1, node="gpu0", gpus=(0, 1), ends_at=NOW + 2 * H)]
    r = schedule(
        [job(10, gpus=4, submitted_at=1.0)],
        [node(gpus=4, busy=(0, 1))],
        ctx(running=running),
    )
    assert placed(r) == {}
    assert r.expected_start == {10: NOW + 2 * H}


def test_small_jobs_backfill_only_when_they_end_before_the_reservation():
    running = [Running(job_id=1, node="gpu0", gpus=(0, 1), ends_at=NOW + 2 * H)]
    jobs = [
        job(10, gpus=4, submitted_at=1.0, priority=5),
        small(11, limit_h=1),  # ends before the big job's start: backfills
        small(12, limit_h=3),  # would run past it: waits
        job(13, user="bob", gpus=1),  # no time limit: never ends, waits
    ]
    r = schedule(jobs, [node(gpus=4, busy=(0, 1))], ctx(running=running))
    assert list(placed(r)) == [11]
    assert "reserved for job 10" in r.reasons[12]
    assert "reserved for job 10" in r.reasons[13]


def test_without_a_reservation_later_small_jobs_would_take_the_gpus():
    """The same queue with the big job absent: both small jobs run (so the test above
    shows the reservation, not a lack of room)."""
    running = [Running(job_id=1, node="gpu0", gpus=(0, 1), ends_at=NOW + 2 * H)]
    r = schedule(
        [small(12, limit_h=3), job(13, user="bob", gpus=1)],
        [node(gpus=4, busy=(0, 1))],
        ctx(running=running),
    )
    assert set(placed(r)) == {12, 13}


def test_gpus_outside_the_reservation_stay_usable():
    # 8 GPUs, 6 busy until +1 h; the 4-GPU job reserves the 2 free and 2 of the busy ones.
    running = [
        Running(job_id=1, node="gpu0", gpus=(0, 1, 2), ends_at=NOW + 1 * H),
        Running(job_id=2, node="gpu0", gpus=(3, 4, 5), ends_at=NOW + 5 * H),
    ]
    r = schedule(
        [job(10, gpus=4, priority=5), job(11, user="bob", gpus=1)],
        [node(gpus=8, busy=range(6))],
        ctx(running=running),
    )
    assert r.expected_start == {10: NOW + 1 * H}
    assert placed(r) == {}  # both free GPUs are in the reservation (they free up first)
    # with 6 GPUs in the reservation's way, a 1-GPU job elsewhere on the node is fine:
    r = schedule(
        [job(10, gpus=2, priority=5), job(11, user="bob", gpus=1)],
        [node(gpus=8, busy=range(5))],
        ctx(running=running),
    )
    # 3 free; the 2-GPU job fits at once, the 1-GPU job too
    assert set(placed(r)) == {10, 11}


def test_no_reservation_when_the_gpus_never_free_up():
    running = [Running(job_id=1, node="gpu0", gpus=(0, 1), ends_at=math.inf)]
    r = schedule(
        [job(10, gpus=4, priority=5), job(11, user="bob", gpus=1)],
        [node(gpus=4, busy=(0, 1))],
        ctx(running=running),
    )
    assert r.expected_start == {}
    assert list(placed(r)) == [11]


def test_reservation_counts_jobs_placed_in_the_same_pass():
    # Job 10 takes the 2 free GPUs for 3 h; job 11 (4 GPUs) can start when both 10 and
    # the running job (2 h) are done: in 3 h.
    running = [Running(job_id=1, node="gpu0", gpus=(0, 1), ends_at=NOW + 2 * H)]
    r = schedule(
        [job(10, gpus=2, priority=9, time_limit_s=3 * H), job(11, gpus=4, priority=5)],
        [node(gpus=4, busy=(0, 1))],
        ctx(running=running),
    )
    assert list(placed(r)) == [10]
    assert r.expected_start == {11: NOW + 3 * H}


def test_the_reservation_goes_to_the_node_that_frees_up_first():
    running = [
        Running(job_id=1, node="a", gpus=(0, 1), ends_at=NOW + 5 * H),
        Running(job_id=2, node="b", gpus=(0, 1), ends_at=NOW + 1 * H),
    ]
    r = schedule(
        [job(10, gpus=2), small(11, limit_h=2), small(12, limit_h=2)],
        [node("a", gpus=2, busy=(0, 1)), node("b", gpus=3, busy=(0, 1))],
        ctx(running=running),
    )
    assert r.expected_start == {10: NOW + 1 * H}
    # b's free GPU is reserved (it is one of the first 2 to be free on b): 11 waits;
    # nothing else is free.
    assert placed(r) == {}


# ---------------------------------------------------------------- holds (reservations)
def test_an_active_reservation_takes_only_its_users_jobs():
    hold = Hold("gpu0", (0, 1), NOW - H, NOW + H, "alice", "alice's reservation 1")
    r = schedule(
        [job(1, user="bob", gpus=1), job(2, user="alice", gpus=2)],
        [node(gpus=2)],
        ctx(holds=[hold]),
    )
    assert list(placed(r)) == [2]
    assert "reserved for alice's reservation 1" in r.reasons[1]


def test_a_reservation_that_ended_frees_its_gpus():
    hold = Hold("gpu0", (0, 1), NOW - 2 * H, NOW - H, "alice")
    r = schedule([job(1, user="bob", gpus=2)], [node(gpus=2)], ctx(holds=[hold]))
    assert list(placed(r)) == [1]


def test_before_a_reservation_starts_only_jobs_that_end_in_time_run_on_it():
    hold = Hold("gpu0", (0,), NOW + 2 * H, NOW + 4 * H, "alice", "alice's reservation 1")
    r = schedule(
        [small(1, limit_h=1), small(2, limit_h=3)],
        [node(gpus=1)],
        ctx(holds=[hold]),
    )
    assert list(placed(r)) == [1]
    r = schedule([small(2, limit_h=3)], [node(gpus=1)], ctx(holds=[hold]))
    assert placed(r) == {}
    assert "would not end before it starts" in r.reasons[2]


def test_maintenance_takes_nobodys_jobs():
    hold = Hold("gpu0", (0, 1), NOW, NOW + H, None, "maintenance (reservation 2)")
    r = schedule([job(1, user="alice", gpus=1)], [node(gpus=2)], ctx(holds=[hold]))
    assert placed(r) == {}
    assert "maintenance" in r.reasons[1]


def test_other_gpus_of_a_reserved_node_stay_usable():
    hold = Hold("gpu0", (0, 1), NOW, NOW + H, "alice")
    r = schedule([job(1, user="bob", gpus=2)], [node(gpus=4)], ctx(holds=[hold]))
    assert placed(r) == {1: ("gpu0", (2, 3))}


# ---------------------------------------------------------------- preemption
def test_preemptible_jobs_go_after_every_other_job():
    r = schedule(
        [job(1, gpus=1, preemptible=True, priority=9), job(2, user="bob", gpus=1)],
        [node(gpus=1)],
        ctx(),
    )
    assert list(placed(r)) == [2]


def test_a_normal_job_preempts_a_preemptible_one():
    running = [
        Running(job_id=5, node="gpu0", gpus=(0,), preemptible=True, started_at=NOW - 60),
        Running(job_id=6, node="gpu0", gpus=(1,), preemptible=False, ends_at=math.inf),
    ]
    r = schedule([job(1, gpus=1)], [node(gpus=2, busy=(0, 1))], ctx(running=running))
    assert r.preempt == {5: 1}
    assert "preempting job 5" in r.reasons[1]
    assert r.expected_start == {}


def test_preemption_stops_the_fewest_and_keeps_free_gpus_for_the_preemptor():
    running = [
        Running(job_id=5, node="gpu0", gpus=(0,), preemptible=True, started_at=NOW - 600),
        Running(job_id=6, node="gpu0", gpus=(1,), preemptible=True, started_at=NOW - 60),
    ]
    # GPU 2 is free; the 2-GPU job needs one more: the most recently started (6) goes.
    r = schedule([job(1, gpus=2)], [node(gpus=3, busy=(0, 1))], ctx(running=running))
    assert r.preempt == {6: 1}
    # The free GPU is kept for job 1, not given to job 2, which preempts the other one.
    r = schedule(
        [job(1, gpus=2), job(2, user="bob", gpus=1, submitted_at=2.0)],
        [node(gpus=3, busy=(0, 1))],
        ctx(running=running),
    )
    assert placed(r) == {}
    assert r.preempt == {6: 1, 5: 2}


def test_jobs_already_stopping_are_chosen_again_first():
    running = [
        Running(job_id=5, node="gpu0", gpus=(0,), preemptible=True, started_at=NOW - 600),
        Running(
            job_id=6, node="gpu0", gpus=(1,), preemptible=True, started_at=NOW - 6000, stopping=True
        ),
    ]
    r = schedule([job(1, gpus=1)], [node(gpus=2, busy=(0, 1))], ctx(running=running))
    assert r.preempt == {6: 1}


def test_preemptible_jobs_never_preempt():
    running = [Running(job_id=5, node="gpu0", gpus=(0,), preemptible=True)]
    r = schedule(
        [job(1, gpus=1, preemptible=True)], [node(gpus=1, busy=(0,))], ctx(running=running)
    )
    assert r.preempt == {}


def test_preemptible_jobs_may_use_gpus_reserved_for_a_big_job():
    running = [Running(job_id=1, node="gpu0", gpus=(0, 1), ends_at=NOW + 2 * H)]
    r = schedule(
        [job(10, gpus=4, priority=5), job(11, user="bob", gpus=1, preemptible=True)],
        [node(gpus=4, busy=(0, 1))],
        ctx(running=running),
    )
    assert r.expected_start == {10: NOW + 2 * H}
    assert list(placed(r)) == [11]


def test_a_job_past_its_time_limit_keeps_the_reservation_while_it_stops():
    """The job holding the GPUs has overrun its limit (its agent is stopping it): the big
    job's reservation stays, so a long job does not backfill onto GPUs about to free up."""
    running = [Running(job_id=1, node="gpu0", gpus=(0,), ends_at=NOW - 5)]
    jobs = [job(10, gpus=2, submitted_at=1.0, priority=5), small(12, limit_h=1)]
    r = schedule(jobs, [node(gpus=2, busy=(0,))], ctx(running=running))
    assert placed(r) == {}
    assert NOW < r.expected_start[10] <= NOW + 60
    assert "reserved for job 10" in r.reasons[12]
