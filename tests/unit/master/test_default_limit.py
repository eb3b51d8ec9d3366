"""The lab's default time limit reaches queued jobs that name none, copied once per job."""

from __future__ import annotations

from mlsm.master.scheduler import PendingJob
from mlsm.master.services.jobs.limits import DefaultLimitCopies


def test_jobs_without_a_limit_get_the_default_and_others_keep_theirs() -> None:
    mine = PendingJob(id=1, user="a", time_limit_s=60)
    out = DefaultLimitCopies().apply([PendingJob(id=2, user="a"), mine], 3600)
    assert [j.time_limit_s for j in out] == [3600, 60]
    assert out[1] is mine


def test_the_copy_is_reused_while_the_job_and_the_default_are_the_same() -> None:
    copies = DefaultLimitCopies()
    job = PendingJob(id=2, user="a")
    first = copies.apply([job], 3600)[0]
    assert copies.apply([job], 3600)[0] is first
    edited = PendingJob(id=2, user="a", gpus=1)  # the job was edited: a new record
    again = copies.apply([edited], 3600)[0]
    assert again.gpus == 1 and again.time_limit_s == 3600
    assert copies.apply([edited], 600)[0].time_limit_s == 600


def test_without_a_default_the_queue_is_passed_as_it_is() -> None:
    job = PendingJob(id=2, user="a")
    assert DefaultLimitCopies().apply([job], 0)[0] is job
