"""Jobs on the master, one module per responsibility.

- :mod:`.service`: the lifecycle (submit, views, cancel, release, agents' reports, lost and
  removed nodes): :class:`JobService`;
- :mod:`.commands`: what people do to many jobs or to a job that exists (cancel a selection,
  bulk submit, dry run, edit, hold, restart): :class:`JobCommands`;
- :mod:`.table`: the open jobs in memory and the state changes of a job row;
- :mod:`.scheduling`: the scheduling loop around the pure :mod:`mlsm.master.scheduler`;
- :mod:`.capacity`: what a node offers the scheduler (its GPUs, whose jobs it takes);
- :mod:`.fairshare`: users' decayed GPU-hours;
- :mod:`.launch`: the accounts a job runs as, and the StartJob an agent gets;
- :mod:`.follow`: logs in (from agents) and out (read, follow);
- :mod:`.views`: a job as people see it.

The stored spec and its parsing live in :mod:`mlsm.master.jobspec` (the database column
decodes it).
"""

from mlsm.master.services.jobs.commands import JobCommands
from mlsm.master.services.jobs.fairshare import FairShare
from mlsm.master.services.jobs.follow import JobLogs
from mlsm.master.services.jobs.launch import KILL_GRACE_S, Accounts, Launcher
from mlsm.master.services.jobs.scheduling import SchedulingLoop
from mlsm.master.services.jobs.service import JobService
from mlsm.master.services.jobs.table import Active, JobTable

__all__ = [
    "KILL_GRACE_S",
    "Accounts",
    "Active",
    "FairShare",
    "JobCommands",
    "JobLogs",
    "JobService",
    "JobTable",
    "Launcher",
    "SchedulingLoop",
]
