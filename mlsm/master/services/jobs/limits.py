"""The lab's limits on a job: GPUs per job, time limit, and the priority a member may give.

One function, :func:`check_limits`, decides them for every way a job's request is made or
changed (``mlsm submit``, and ``mlsm job edit`` of a queued job), so the two never disagree.
Admins are held to none of the limits (they set them); the default time limit applies to
everyone's jobs that ask for none. A limit that is set and exceeded raises
:class:`~mlsm.errors.LimitExceeded` naming the setting and its value.

Rules:

* ``max_gpus_per_job`` (0: none): a member's job asks for at most that many GPUs.
* ``max_time_limit_s`` (0: none): a member's job runs at most that long; a job that asks
  for no time limit gets ``default_time_limit_s``, or, with no default, the maximum (as
  Slurm gives a partition's MaxTime when it has no DefaultTime), so no member's job escapes
  the maximum by asking for nothing.
* ``member_max_priority``: the highest ``--priority`` a member may give. A member may
  always lower a priority: on an edit, a value above the limit is accepted when it is not
  higher than the job's value before (``before``); the same holds for GPUs and time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mlsm.errors import LimitExceeded
from mlsm.master import scheduler as sched
from mlsm.master.security import Principal
from mlsm.wire import api

__all__ = ["DefaultLimitCopies", "JobAsk", "check_limits", "effective_default_time_limit"]


@dataclass(frozen=True, slots=True)
class JobAsk:
    """What a job asks for that the lab limits (``time_limit_s`` 0: no limit asked)."""

    gpus: int
    priority: int
    time_limit_s: float


def effective_default_time_limit(lab: api.LabSettings) -> float:
    """The time limit a job that names none gets (0: none)."""
    return lab.default_time_limit_s or lab.max_time_limit_s


def _dur(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def check_limits(
    ask: JobAsk, principal: Principal, lab: api.LabSettings, *, before: JobAsk | None = None
) -> JobAsk:
    """Refuse ``ask`` if it is over a lab limit for ``principal``; return it with the
    default time limit filled in. ``before``: the job's values before an edit (a member
    may keep or lower a value that is over a limit set since)."""
    if not ask.time_limit_s:
        default = effective_default_time_limit(lab)
        if default:
            ask = replace(ask, time_limit_s=default)
    if principal.is_admin:
        return ask
    cap = lab.max_gpus_per_job
    if cap and ask.gpus > cap and not (before is not None and ask.gpus <= before.gpus):
        raise LimitExceeded(
            f"the job asks for {ask.gpus} GPUs; the lab's limit is {cap} GPU"
            f"{'s' if cap != 1 else ''} per job (max_gpus_per_job)",
            details={
                "limit": "max_gpus_per_job",
                "allowed": cap,
                "asked": ask.gpus,
                "path": "gpus",
            },
        )
    longest = lab.max_time_limit_s
    if (
        longest
        and ask.time_limit_s > longest
        and not (before is not None and 0 < ask.time_limit_s <= before.time_limit_s)
    ):
        raise LimitExceeded(
            f"the job asks for a time limit of {_dur(ask.time_limit_s)}; the lab's maximum "
            f"is {_dur(longest)} (max_time_limit_s)",
            details={
                "limit": "max_time_limit_s",
                "allowed": longest,
                "asked": ask.time_limit_s,
                "path": "timeout_s",
            },
        )
    top = lab.member_max_priority
    if ask.priority > top and not (before is not None and ask.priority <= before.priority):
        raise LimitExceeded(
            f"priority {ask.priority}: members may give their jobs a priority of at most "
            f"{top} (member_max_priority); a lower one is always allowed, and an admin can "
            "raise it (mlsm job edit JOB --priority N)",
            details={
                "limit": "member_max_priority",
                "allowed": top,
                "asked": ask.priority,
                "path": "priority",
            },
        )
    return ask


class DefaultLimitCopies:
    """The queue as a pass sees it: the lab's default time limit on jobs that name none
    (jobs queued before the lab had a default get it too). Each such job is copied once,
    not once a pass: the copy is kept while the job and the default are the same."""

    def __init__(self) -> None:
        self._kept: dict[int, tuple[sched.PendingJob, sched.PendingJob]] = {}

    def apply(self, pending: list[sched.PendingJob], default_s: float) -> list[sched.PendingJob]:
        if not default_s:
            self._kept.clear()
            return pending
        kept = self._kept
        out = []
        for j in pending:
            if j.time_limit_s:
                out.append(j)
                continue
            hit = kept.get(j.id)
            if hit is None or hit[0] is not j or hit[1].time_limit_s != default_s:
                hit = kept[j.id] = (j, replace(j, time_limit_s=default_s))
            out.append(hit[1])
        if len(kept) > 2 * len(out):  # forget the jobs that left the queue
            queued = {j.id for j in pending}
            self._kept = {k: v for k, v in kept.items() if k in queued}
        return out
