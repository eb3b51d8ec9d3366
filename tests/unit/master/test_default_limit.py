"""The lab's default time limit reaches queued jobs that name none, copied once per job."""

from __future__ import annotations

from types import SimpleNamespace

from mlsm.master.scheduler import PendingJob
from mlsm.master.services.jobs.scheduling import SchedulingLoop
from mlsm.wire import api


def _loop(default_s: float) -> SchedulingLoop:
    loop = SchedulingLoop(None, None, None, None, None, None, None)
    loop.lab_settings = SimpleNamespace(current=api.LabSettings(default_time_limit_s=default_s))
    return loop


def test_jobs_without_a_limit_get_the_default_and_others_keep_theirs() -> None:
    loop = _loop(3600)
    mine = PendingJob(id=1, user="a", time_limit_s=60)
    out = loop._with_default_limit([PendingJob(id=2, user="a"), mine])
    assert [j.time_limit_s for j in out] == [3600, 60]
    assert out[1] is mine


def test_the_copy_is_reused_while_the_job_and_the_default_are_the_same() -> None:
    loop = _loop(3600)
    job = PendingJob(id=2, user="a")
    first = loop._with_default_limit([job])[0]
    assert loop._with_default_limit([job])[0] is first
    edited = PendingJob(id=2, user="a", gpus=1)  # the job was edited: a new record
    again = loop._with_default_limit([edited])[0]
    assert again.gpus == 1 and again.time_limit_s == 3600
    loop.lab_settings.current = api.LabSettings(default_time_limit_s=600)
    assert loop._with_default_limit([edited])[0].time_limit_s == 600


def test_without_a_default_the_queue_is_passed_as_it_is() -> None:
    loop = _loop(0)
    job = PendingJob(id=2, user="a")
    assert loop._with_default_limit([job])[0] is job
