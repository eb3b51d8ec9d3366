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
from mlsm.master.security import Principal
from mlsm.wire import api

__all__ = ["JobAsk", "check_limits", "effective_default_time_limit"]


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
