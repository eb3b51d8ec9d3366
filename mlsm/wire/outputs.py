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

:class:`NodeDisk` is the agent's disk report, carried in its node info (defined in
:mod:`mlsm.wire.node`, re-exported here).

Reading a job's outputs (``mlsm outputs``) goes through the master's relay pipes
(:mod:`mlsm.master.services.bulk`): :class:`ListOutputs`, :class:`OutputsManifest` and
:class:`ServeOutputs` carry a ``pipe_id`` and the agent pushes its answer into that pipe
(an :class:`OutputListing`, a MessagePack :class:`~mlsm.bulk.Manifest`, a frame stream).
Paths are relative to the job's directory, ``/``-separated, checked on both sides
(:func:`mlsm.bulk.check_path`: no ``..``, nothing absolute, no NUL); the agent reads the
tree by descriptor and never follows a link.

These are the commands of protocol version 3 (``mlsm.COMMAND_SINCE``): the master sends
them only to agents that speak it. Evolution rules as in :mod:`mlsm.wire.agent`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from mlsm.bulk.manifest import check_path
from mlsm.bulk.want import Want
from mlsm.wire.bulk import PipeId
from mlsm.wire.ints import Count, Int64
from mlsm.wire.node import NodeDisk as NodeDisk

LongStr = Annotated[str, Meta(max_length=4096)]
ShortStr = Annotated[str, Meta(max_length=256)]

#: Finished jobs named in one sweep (the oldest first; the next sweep names the rest).
MAX_SWEEP_JOBS = 2_000
#: Removals (or refusals) reported in one message.
MAX_REMOVED_REPORT = 2_000

RemovalReason = Literal["retention", "disk", "purge"]
OutputPath = Annotated[str, Meta(max_length=4096)]  # "" = the job's directory itself
#: Paths one fetch may name.
MAX_FETCH_PATHS = 256
#: Entries one listing holds (a bigger tree is listed in part, ``truncated``).
MAX_LISTING_ENTRIES = 20_000


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


# ---------------------------------------------------------------- reading outputs
def check_output_path(path: str) -> str:
    """``path`` inside a job's directory as both sides use it (``""``: the directory
    itself; a trailing ``/`` is dropped); ``..``, an absolute path, a NUL or an empty
    component is refused (:class:`~mlsm.errors.UnsafeTree`, a 400 naming it)."""
    path = path.rstrip("/") if path not in ("", "/") else ""
    if path in ("", "."):
        return ""
    return check_path(path)


OutputKind = Literal["f", "d", "l", "o"]


class OutputEntry(Struct, kw_only=True, array_like=True):
    """One entry of a job's outputs: path (relative to the job's directory), kind (``f``
    file, ``d`` directory, ``l`` symlink, never followed, ``o`` other), size, mtime."""

    path: str
    kind: OutputKind
    size: Count = 0
    mtime: float = 0.0


class OutputListing(Struct, kw_only=True):
    """The files under ``path`` of job ``job_id``'s directory on ``node``, recursively."""

    job_id: Int64
    node: str = ""
    path: str = ""
    entries: list[OutputEntry] = []
    truncated: bool = False  # more than MAX_LISTING_ENTRIES: the first ones only


class ListOutputs(Struct, tag="list_outputs", kw_only=True):
    """Push an :class:`OutputListing` of ``path`` in the job's directory into the pipe."""

    id: Int64
    pipe_id: PipeId
    job_id: Int64
    path: OutputPath = ""


#: A code snapshot's digest, or "" (none).
SnapshotDigest = Annotated[str, Meta(pattern="^([0-9a-f]{64})?$")]


class OutputsManifest(Struct, tag="outputs_manifest", kw_only=True):
    """Push the manifest of ``paths`` (all of the job's directory when empty).

    ``skip_code``: the job's code snapshot; the files of its copy (``code/``) that the job
    left as they came (same size and mtime as in the snapshot) are left out, with the
    directories that then hold nothing. An agent that no longer has that snapshot's
    manifest leaves nothing out."""

    id: Int64
    pipe_id: PipeId
    job_id: Int64
    paths: Annotated[list[OutputPath], Meta(max_length=MAX_FETCH_PATHS)] = []
    skip_code: SnapshotDigest = ""


class ServeOutputs(Struct, tag="serve_outputs", kw_only=True):
    """Push the frames answering ``want`` against the manifest ``manifest_digest`` of
    ``paths`` (a manifest changed since: ``source_changed``)."""

    id: Int64
    pipe_id: PipeId
    job_id: Int64
    paths: Annotated[list[OutputPath], Meta(max_length=MAX_FETCH_PATHS)] = []
    manifest_digest: Annotated[str, Meta(max_length=64)]
    want: Want
    skip_code: SnapshotDigest = ""  # as in OutputsManifest: the same tree


# ---------------------------------------------------------------- the people's API
class OutputsFetch(Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /api/v1/jobs/{id}/outputs/manifest`` (``paths`` only) and ``.../frames``
    (the manifest's digest and a want against it)."""

    paths: Annotated[list[OutputPath], Meta(max_length=MAX_FETCH_PATHS)] = []
    manifest_digest: Annotated[str, Meta(max_length=64)] = ""
    want: Want | None = None
    #: A fetch of all outputs (no ``paths``) leaves out the files of the job's code copy
    #: (``code/``) that the job did not change; True fetches them too.
    include_code: bool = False


decode_job_dirs_removed = msgspec.msgpack.Decoder(JobDirsRemoved).decode
decode_listing = msgspec.msgpack.Decoder(OutputListing).decode
