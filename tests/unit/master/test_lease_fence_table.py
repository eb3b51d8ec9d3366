"""The master's half of the lease fence in the job table: a job requeued after its node was
lost waits out its fence before the scheduler sees it, a restarted master keeps the fence
(it is the row's ``not_before``), and only jobs with retries left are retried at all."""

from __future__ import annotations

import time
from pathlib import Path

from mlsm.master.db.models import Job as JobRow
from mlsm.master.jobspec import StoredJobSpec
from mlsm.master.services.joblogs import LogStore
from mlsm.master.services.jobs.fairshare import FairShare
from mlsm.master.services.jobs.lost import fence_after
from mlsm.master.services.jobs.table import JobTable, retries_left


def _table(tmp_path: Path) -> JobTable:
    return JobTable(FairShare(3600.0), LogStore(tmp_path))


def _row(job_id: int, *, retries: int = 1, not_before: float | None = None) -> JobRow:
    return JobRow(
        id=job_id,
        user="alice",
        name="",
        state="queued",
        spec=StoredJobSpec(argv=["true"]),
        priority=0,
        gpus=1,
        created_at=time.time(),
        attempt=1,
        retries=retries,
        reason="requeued after interruption: node r1 was lost",
        history=[],
        preemptions=0,
        not_before=not_before,
    )


def test_a_fenced_job_joins_the_queue_only_when_its_fence_has_passed(tmp_path: Path) -> None:
    table = _table(tmp_path)
    until = time.time() + 60
    table.load([_row(1, not_before=until), _row(2)], {})
    assert set(table.pending) == {2} and set(table.fenced) == {1}
    assert not table.release_fenced(until - 1) and 1 not in table.pending
    assert table.release_fenced(until) and 1 in table.pending and not table.fenced


def test_a_fence_in_the_past_does_not_hold_a_job(tmp_path: Path) -> None:
    table = _table(tmp_path)
    table.load([_row(1, not_before=time.time() - 1)], {})
    assert set(table.pending) == {1} and not table.fenced


def test_unqueue_forgets_a_fenced_job(tmp_path: Path) -> None:
    table = _table(tmp_path)
    table.load([_row(1, not_before=time.time() + 60)], {})
    table.unqueue(1)
    assert not table.fenced and not table.pending and not table.release_fenced(time.time() + 120)


def test_only_jobs_with_retries_left_are_stopped_when_lost() -> None:
    assert retries_left(_row(1, retries=2))  # attempt 1 of up to 3
    assert not retries_left(_row(1, retries=1))  # attempt 1 was its last retry
    preempted = _row(1, retries=1)
    preempted.preemptions = 1  # a preemption used no retry
    assert retries_left(preempted)


def test_the_fence_covers_the_lease_with_slack_the_stop_grace_and_a_margin() -> None:
    # The node stops such an attempt a lease after its last contact (its shim a quarter
    # lease later at most), then kills it after the grace: the retry waits for all of it.
    assert fence_after(100.0, 30.0) >= 100.0 + 30.0 * 1.25 + 10.0
    assert fence_after(100.0, 60.0) - fence_after(100.0, 30.0) == 60.0 * 1.25 - 30.0 * 1.25
