"""Agent <-> master messages about a job's outputs and the node's disk (MessagePack).

A job's outputs stay on its node (``<agent data>/jobs/<id>/``). The master decides which
jobs are *finished* (it alone knows a job will not be retried there); the agent decides what
is *in use* (a running attempt, a fetch being served) and measures what each directory holds.
So removal is a conversation:

* the master sends :class:`SweepJobDirs` now and then (the node's finished jobs with their
  end times, and the lab's retention settings), and :class:`PurgeJobDir` when a person asks;
* the agent removes what the rules allow, never a pinned directory, and tells the master
  what it removed (and what it kept, and why) with :class:`JobDirsRemoved` on
  ``POST /agent/v1/outputs/removed``; the master audits every removal and marks the job.

:class:`NodeDisk` is the agent's disk report, carried in its node info.

These are the commands of protocol version 3 (``mlsm.COMMAND_SINCE``): the master sends
them only to agents that speak it. Evolution rules as in :mod:`mlsm.wire.agent`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from mlsm.wire.ints import Count, Int64

LongStr = Annotated[str, Meta(max_length=4096)]
ShortStr = Annotated[str, Meta(max_length=256)]

#: Finished jobs named in one sweep (the oldest first; the next sweep names the rest).
MAX_SWEEP_JOBS = 2_000
#: Removals (or refusals) reported in one message.
MAX_REMOVED_REPORT = 2_000

RemovalReason = Literal["retention", "disk", "purge"]


class NodeDisk(Struct, kw_only=True, omit_defaults=True):
    """What mlsm keeps on a node's disk, measured by its agent now and then."""

    data_dir: LongStr = ""  # the agent's data dir: jobs/<id>/ is a job's output directory
    jobs_bytes: Count = 0  # every job directory (outputs and logs)
    jobs_count: Count = 0
    projects_bytes: Count = 0
    code_cache_bytes: Count = 0
    fs_total: Count = 0  # the filesystem that holds the data dir
    fs_free: Count = 0  # bytes available to the agent there
    measured_at: float = 0.0  # unix seconds


class FinishedJob(Struct, kw_only=True, array_like=True):
    job_id: Int64
    ended_at: float


class SweepJobDirs(Struct, tag="sweep_job_dirs", kw_only=True):
    """Remove finished jobs' directories that retention allows (master -> agent).

    ``jobs`` are this node's finished jobs whose directories the master believes are still
    there, oldest end first. A directory goes when its job ended more than ``retention_s``
    ago (``0``: never by age), or, while the data dir's filesystem is fuller than
    ``high_pct`` percent (``0``: no threshold), oldest first until it is not. A directory
    in use (a running attempt, a fetch) is never removed; a job not named is never touched.
    """

    id: Int64
    jobs: Annotated[list[FinishedJob], Meta(max_length=MAX_SWEEP_JOBS)] = []
    retention_s: Annotated[float, Meta(ge=0)] = 0.0
    high_pct: Annotated[float, Meta(ge=0, le=100)] = 0.0


class PurgeJobDir(Struct, tag="purge_job_dir", kw_only=True):
    """Remove one finished job's directory now (``mlsm job purge``), unless it is in use."""

    id: Int64
    job_id: Int64
    requested_by: ShortStr = ""


class RemovedDir(Struct, kw_only=True, omit_defaults=True):
    job_id: Int64
    reason: RemovalReason
    bytes: Count = 0  # what the directory held
    files: Count = 0
    by: ShortStr = ""  # a purge: who asked


class KeptDir(Struct, kw_only=True, omit_defaults=True):
    """A directory a purge asked for that stays, and why (in words)."""

    job_id: Int64
    why: LongStr


class JobDirsRemoved(Struct, kw_only=True, omit_defaults=True):
    """Agent -> master: what a sweep or purge removed (``command_id``: the command's id)."""

    command_id: Int64
    removed: Annotated[list[RemovedDir], Meta(max_length=MAX_REMOVED_REPORT)] = []
    kept: Annotated[list[KeptDir], Meta(max_length=MAX_REMOVED_REPORT)] = []
    gone: Annotated[list[Int64], Meta(max_length=MAX_REMOVED_REPORT)] = []  # already absent
    disk: NodeDisk | None = None  # the disk report after the removals


decode_job_dirs_removed = msgspec.msgpack.Decoder(JobDirsRemoved).decode
