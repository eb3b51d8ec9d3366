"""Attempts lost with their node: the fence before a retry, and what the node says later.

When a node misses its lease the master cannot tell a dead node from a cut link, so both
sides follow one rule (the lease fence):

- An attempt the master would run again elsewhere (the job has retries left) is started
  with :attr:`~mlsm.wire.agent.JobSpec.stop_when_lost`: its agent stops it once it has had
  no contact with the master for the lease. The master requeues it when the lease ends but
  lets the new attempt start only after :func:`fence_after` (the lease counted from the
  node's last contact, the stop's grace and a margin), so the two never run at once.
- An attempt the master would not run again is left running through any outage. The job is
  ``interrupted`` when the lease ends; if the node comes back and says the attempt still
  runs, it runs again in the master's view (:func:`settle_late`); if it says the attempt
  ended, that end (exit code, signal, reason) becomes the job's real end.
"""

from __future__ import annotations

import time

from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncSession

from mlsm.master.db.models import Job as JobRow
from mlsm.master.db.models import JobRun
from mlsm.master.services.jobs.launch import KILL_GRACE_S
from mlsm.master.services.jobs.table import JobTable, rows_by_id
from mlsm.master.services.livenode import LiveNode
from mlsm.wire import agent as w
from mlsm.wire.api import JobState

#: A job's shim keeps the fence when its agent is dead, a quarter lease late at most (it
#: reads a file the agent rewrites at most every quarter lease: agent/runtimes/process/shim.py).
FENCE_SLACK = 1.25
#: Beyond that and the stop's grace: the shim's and the agent's check periods, a
#: container's stop, and a request that was on its way when the link went.
FENCE_MARGIN_S = 5.0

_RUNNING = ("starting", "running")


def fence_after(last_seen: float | None, lease: float) -> float:
    """When an attempt lost with a node last heard at ``last_seen`` has surely stopped."""
    return (last_seen or time.time()) + lease * FENCE_SLACK + KILL_GRACE_S + FENCE_MARGIN_S


def lost_reason(node: str, lease: float) -> str:
    return f"node {node} was lost (no heartbeat for {lease:.0f} s)"


def lost_here(r: JobRow, node: str, attempt: int) -> bool:
    """The row ended ``interrupted`` because ``node`` was lost while it ran ``attempt``
    there, and no newer attempt exists."""
    return (
        r.state == "interrupted"
        and r.node == node
        and r.attempt == attempt
        and r.reason.startswith(f"node {node} was lost")
    )


def end_of(rep: w.JobReport) -> tuple[JobState, str]:
    """The job state and reason an agent's report of a finished attempt means."""
    if rep.state == "failed_to_start":
        return "failed", rep.reason or "failed to start"
    code = rep.exit_code
    state: JobState
    if rep.end_kind == "cancelled":
        state = "cancelled"
    elif rep.end_kind in ("timeout", "oom", "error"):
        state = "failed"
    else:
        state = "succeeded" if code == 0 else "failed"
    return state, rep.reason or (f"exit code {code}" if code is not None else state)


async def settle_late(
    s: AsyncSession, table: JobTable, node: LiveNode, reports: list[w.JobReport]
) -> set[tuple[int, int]]:
    """Reports of attempts the master gave up with their node (see the module docstring):
    a running one runs again, an ended one's end becomes the job's. Returns the
    ``(job, attempt)`` pairs taken back, which must not be cancelled as stale."""
    rows = await rows_by_id(s, [rep.job_id for rep in reports])
    now = time.time()
    taken: set[tuple[int, int]] = set()
    for rep in reports:
        r = rows.get(rep.job_id)
        if r is None or not lost_here(r, node.name, rep.attempt):
            continue
        if rep.state in _RUNNING:
            r.started_at = r.started_at or rep.started_at or now
            await _revive(s, table, r, node, now)
        elif rep.state == "lost" or rep.end_kind == "lost":
            continue  # it was lost after all: the row already says so
        else:
            await _real_end(s, table, r, node, rep, now)
        taken.add((rep.job_id, rep.attempt))
    return taken


async def _revive(s: AsyncSession, table: JobTable, r: JobRow, node: LiveNode, now: float) -> None:
    """The node is back and the attempt ran on: the job runs again where it was. Its usage
    row for the attempt goes; the attempt's real end writes it."""
    await s.execute(delete(JobRun).where(JobRun.job_id == r.id, JobRun.attempt == r.attempt))
    table.resume(r, node.id, now, f"node {node.name} is back; the attempt ran on there")


async def _real_end(
    s: AsyncSession, table: JobTable, r: JobRow, node: LiveNode, rep: w.JobReport, now: float
) -> None:
    """The attempt ended while its node was away: that end is the job's."""
    state, reason = end_of(rep)
    ended = rep.ended_at or now
    await s.execute(
        update(JobRun)
        .where(JobRun.job_id == r.id, JobRun.attempt == r.attempt)
        .values(state=state, ended_at=max(ended, r.started_at or ended))
    )
    table.correct_end(r, state, reason, ended, rep.exit_code, node.name)
