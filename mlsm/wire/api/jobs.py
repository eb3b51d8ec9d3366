"""JSON API structs for jobs: submitting (one, many, a dry run), listing, cancelling, editing, purging."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from mlsm.wire.api.base import (
    JOB_STATES,
    JobState,
    LabelKey,
    LabelVal,
    LongStr,
    NodeName,
    ShortStr,
    UserName,
)
from mlsm.wire.ints import Count, DbId

# ---------------------------------------------------------------- jobs
#: The default priority, and the highest a member may give a job (admins: any).
DEFAULT_PRIORITY = 0
Priority = Annotated[int, Meta(ge=-1000, le=1000)]
#: Longest grace a preemptible job may ask for between SIGTERM and SIGKILL.
MAX_PREEMPT_GRACE_S = 3600.0
#: What a job is for: a batch command, or an interactive session (``mlsm session``).
JobKind = Literal["batch", "session"]


class JobSubmit(Struct, kw_only=True, forbid_unknown_fields=True):
    argv: Annotated[
        list[Annotated[str, Meta(max_length=8192)]], Meta(min_length=1, max_length=4096)
    ]
    name: ShortStr = ""
    gpus: Annotated[int, Meta(ge=0, le=64)] = 0
    gpu_mem_gib: Annotated[float, Meta(ge=0, le=4096)] = 0.0
    cpus: Annotated[float, Meta(ge=0, le=4096)] = 0.0
    mem_gib: Annotated[float, Meta(ge=0, le=65536)] = 0.0
    node: NodeName | None = None
    labels: dict[LabelKey, LabelVal] = {}
    datasets: Annotated[
        list[Annotated[str, Meta(min_length=1, max_length=128)]], Meta(max_length=16)
    ] = []
    env_kind: Literal["process", "venv", "conda", "docker"] = "process"
    venv: LongStr = ""
    conda: ShortStr = ""
    image: ShortStr = ""
    mounts: Annotated[list[LongStr], Meta(max_length=32)] = []
    keep_container: bool = False
    workdir: LongStr = ""
    env: dict[
        Annotated[str, Meta(min_length=1, max_length=256, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")],
        LongStr,
    ] = {}
    priority: Priority = DEFAULT_PRIORITY
    # JOBID[:ok|any]; the id is checked against INT64_MAX where it is parsed (jobs service)
    after: Annotated[
        list[Annotated[str, Meta(max_length=32, pattern=r"^[0-9]{1,19}(:(ok|any))?$")]],
        Meta(max_length=256),
    ] = []
    retries: Annotated[int, Meta(ge=0, le=100)] = 0
    timeout_s: Annotated[float, Meta(ge=0, le=365 * 86400)] = 0.0
    array: Annotated[str, Meta(max_length=64, pattern=r"^([0-9]+(-[0-9]+)?(%[0-9]+)?)?$")] = ""
    hold: bool = False
    # The code snapshot to run in (a manifest digest the submitter uploaded: see
    # mlsm.wire.code); "" = none (the job runs in --workdir, or its output directory).
    code: Annotated[str, Meta(pattern=r"^([0-9a-f]{64})?$")] = ""
    # Run in this project of the submitter's (mlsm project push): placed on its node.
    project: Annotated[str, Meta(max_length=64, pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]*)?$")] = ""
    # Runs only on GPUs no other job wants: a normal job that needs its GPUs stops it
    # (SIGTERM, then SIGKILL after preempt_grace_s) and it is requeued, its retries untouched.
    preemptible: bool = False
    preempt_grace_s: Annotated[float, Meta(ge=0, le=MAX_PREEMPT_GRACE_S)] = 0.0  # 0 = 10 s
    # "session" (mlsm session): an interactive allocation whose command only holds the GPUs
    # while people work in its shell; it gets the lab's default time limit when it names
    # none, and it ends when its last shell leaves unless ``session_keep``.
    kind: JobKind = "batch"
    session_keep: bool = False


class JobEvent(Struct, kw_only=True, array_like=True):
    ts: float
    state: str
    message: str = ""


class Job(Struct, kw_only=True):
    id: int
    name: str
    user: str
    state: JobState
    argv: list[str]
    created_at: float
    priority: int = 0
    gpus: int = 0
    gpu_mem_gib: float = 0.0
    cpus: float = 0.0
    mem_gib: float = 0.0
    env_kind: str = "process"
    venv: str = ""
    conda: str = ""
    image: str = ""
    workdir: str = ""
    env: dict[str, str] | None = None  # only for the owner and admins
    node_req: str | None = None
    labels: dict[str, str] = {}
    datasets: list[str] = []
    after: list[str] = []
    retries: int = 0
    attempt: int = 0
    timeout_s: float = 0.0
    array_parent: int | None = None
    array_index: int | None = None
    array_throttle: int = 0
    node: str | None = None
    gpu_indices: list[int] = []
    reason: str = ""  # why it waits, or why it ended
    exit_code: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    log_size: int = 0
    history: list[JobEvent] = []
    # Where the job's files live: <agent data>/jobs/<id>/ on ``node`` ("" before it ran
    # anywhere). Gone once ``outputs_removed_at`` is set (retention, disk or a purge).
    output_dir: str = ""
    outputs_removed_at: float | None = None
    outputs_removed_why: str = ""  # "retention", "disk", "purge by alice", "missing"
    log_removed_at: float | None = None  # the shipped log, removed by retention
    code: str = ""  # the code snapshot it runs in (digest), "" = none
    project: str = ""  # the project it runs in, "" = none
    restarted_from: int | None = None  # the job this one re-runs (mlsm restart)
    idle_exempt: bool = False  # an admin exempted it from the idle-GPU policy
    idle_warned_at: float | None = None  # when the idle-GPU policy warned it (still idle)
    preemptible: bool = False
    preempt_grace_s: float = 0.0  # its own grace before SIGKILL when preempted (0: 10 s)
    preemptions: int = 0  # times it was preempted and requeued (not counted as retries)
    # Queued: when the scheduler expects it to start (the GPUs it reserved for it free up
    # by running jobs' time limits); None when nothing is reserved for it.
    expected_start: float | None = None
    kind: JobKind = "batch"  # "session": an interactive allocation (mlsm session)
    session_keep: bool = False  # a session that outlives its last shell


class JobList(Struct, kw_only=True):
    jobs: list[Job]
    total: int


MAX_CANCEL_IDS = 10_000  # ids in one cancel request (and in one `mlsm cancel A-B` range)


#: Arrays named by task in one cancel request (``12_[0-3]``).
MAX_CANCEL_ARRAYS = 256
#: A ``--name`` pattern: fnmatch's * ? [...] over the job's name.
NameGlob = Annotated[str, Meta(max_length=256)]


class ArrayTasks(Struct, kw_only=True, forbid_unknown_fields=True):
    """Tasks of one array by index (``12_3``, ``12_[0-3]``): ``array`` is the array's id."""

    array: DbId
    indices: Annotated[list[Count], Meta(min_length=1, max_length=MAX_CANCEL_IDS)]


class CancelRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """A selection of jobs to cancel, resolved on the master in one call.

    ``ids`` and ``tasks`` name jobs (an array's id names every task of it); ``user``,
    ``name`` and ``states`` filter them, or, when nothing is named, select every job that
    matches (a member's filters reach only their own jobs). ``preview`` answers what would
    be cancelled and changes nothing."""

    ids: Annotated[list[DbId], Meta(max_length=MAX_CANCEL_IDS)] = []
    tasks: Annotated[list[ArrayTasks], Meta(max_length=MAX_CANCEL_ARRAYS)] = []
    user: UserName | None = None
    name: NameGlob = ""
    states: Annotated[list[JobState], Meta(max_length=len(JOB_STATES))] = []
    preview: bool = False


class CancelResult(Struct, kw_only=True):
    cancelled: list[int]  # cancelled (with ``preview``: would be)
    skipped: dict[str, str] = {}  # id (or "12_7" for a task) -> why not
    preview: bool = False


class PurgeResult(Struct, kw_only=True):
    """``mlsm job purge``: what became of one finished job's directory on its node."""

    job_id: int
    node: str
    state: Literal["removed", "absent", "requested"]
    bytes: int = 0  # what the directory held (removed)
    message: str = ""


class SubmitReply(Struct, kw_only=True):
    job: Job  # the job, or the first task of an array
    ids: list[int] = []  # every job id created (one, or each array task)
    #: Set when no node of the lab could run the job even if it were empty (it will wait).
    warning: str = ""


MAX_BULK_JOBS = 10_000  # jobs in one bulk submission (``mlsm submit --from``)


class BulkSubmit(Struct, kw_only=True, forbid_unknown_fields=True):
    """Many submissions in one call: all are checked before any is stored."""

    jobs: Annotated[list[JobSubmit], Meta(min_length=1, max_length=MAX_BULK_JOBS)]


class BulkSubmitReply(Struct, kw_only=True):
    ids: list[int]  # one per submission: the job's id, or its array's id
    tasks: int = 0  # jobs created in all (array tasks counted)


class SubmitPlan(Struct, kw_only=True):
    """``mlsm submit --dry-run``: what the scheduler would do with the job now."""

    start_now: bool
    node: str | None = None
    gpu_indices: list[int] = []
    reason: str = ""  # why it would wait (or never run)
    never: bool = False  # it would be cancelled (a dependency that cannot be met)
    warning: str = ""  # no node could ever run it


class JobEdit(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """``mlsm job edit``: a queued or held job's request (None = unchanged)."""

    priority: Priority | None = None
    gpus: Annotated[int, Meta(ge=0, le=64)] | None = None
    timeout_s: Annotated[float, Meta(ge=0, le=365 * 86400)] | None = None
    name: ShortStr | None = None
    hold: bool | None = None  # True: hold it; False: release it
