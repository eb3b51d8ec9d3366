"""JSON API structs (``/api/v1``), shared by the master, the CLI and the dashboard.

Request structs carry their validation (msgspec ``Meta`` constraints) so bad input is
refused at the edge with a 400 naming the field. Every field added later gets a default.

Over 400 lines, as one piece: it is the people's API contract, which the OpenAPI schema,
the typed client and docs/api.md are read against; one module keeps every request and
answer, and their shared constraints, in one place to review when the contract changes.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

import msgspec
from msgspec import Meta, Struct

from mlsm.errors import ValidationError
from mlsm.wire.ints import Count, DbId
from mlsm.wire.node import GpuSample, HostSample, NodeInfo

Role = Literal["member", "admin", "superadmin"]
ROLE_RANK: dict[str, int] = {"member": 1, "admin": 2, "superadmin": 3}

UserName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[a-z_][a-z0-9_.-]*$")]
NodeName = Annotated[
    str, Meta(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
Password = Annotated[str, Meta(min_length=8, max_length=1024)]
ShortStr = Annotated[str, Meta(max_length=256)]
LongStr = Annotated[str, Meta(max_length=4096)]
LabelKey = Annotated[
    str, Meta(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
]
LabelVal = Annotated[str, Meta(max_length=128)]

JobState = Literal[
    "queued", "held", "assigned", "running", "succeeded", "failed", "cancelled", "interrupted"
]
ACTIVE_STATES: frozenset[str] = frozenset({"assigned", "running"})
PENDING_STATES: frozenset[str] = frozenset({"queued", "held"})
FINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "interrupted"})
JOB_STATES: tuple[JobState, ...] = get_args(JobState)


def parse_job_states(text: str) -> list[JobState]:
    """``"running,QUEUED"`` -> the job states it names (any case); a word that is no job
    state is a :class:`~mlsm.errors.ValidationError` listing the valid ones, so a typo
    is never an empty answer. The CLI checks before it asks; the master checks again."""
    out: list[JobState] = []
    for word in (w.strip().lower() for w in text.split(",")):
        if not word:
            continue
        if word not in JOB_STATES:
            raise ValidationError(
                f"state: {word!r} is not a job state; use one of {', '.join(JOB_STATES)}",
                path="state",
            )
        if word not in out:
            out.append(word)
    return out


NodeState = Literal["online", "stale", "offline", "draining"]
TokenKind = Literal["session", "api"]
AuditOutcome = Literal["ok", "denied", "failed", "error"]
TransferKind = Literal["import", "copy", "move", "delete", "digest"]
TransferState = Literal["pending", "running", "succeeded", "failed", "cancelled"]


# ---------------------------------------------------------------- auth
class LoginRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    username: UserName
    password: Annotated[str, Meta(min_length=1, max_length=1024)]


class LoginReply(Struct, kw_only=True):
    token: str
    username: str
    role: Role
    expires_at: float


class PasswordChange(Struct, kw_only=True, forbid_unknown_fields=True):
    """A user changing their own password; their other sessions end."""

    current_password: Annotated[str, Meta(min_length=1, max_length=1024)]
    new_password: Password
    revoke_api_tokens: bool = False  # end the user's API tokens too


class PasswordChanged(Struct, kw_only=True):
    revoked: int  # tokens that ended with the change (other sessions, API tokens if asked)


class Me(Struct, kw_only=True):
    username: str
    role: Role
    token_kind: TokenKind


# ---------------------------------------------------------------- users
class User(Struct, kw_only=True):
    id: int
    username: str
    role: Role
    disabled: bool
    created_at: float
    unix_user: str = ""
    gpu_cap: int | None = None
    last_login: float | None = None


class UserCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    username: UserName
    password: Password
    role: Role = "member"
    unix_user: Annotated[str, Meta(max_length=32, pattern=r"^([a-z_][a-z0-9_-]*)?$")] = ""


class UserUpdate(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    role: Role | None = None
    disabled: bool | None = None
    password: Password | None = None
    unix_user: Annotated[str, Meta(max_length=32, pattern=r"^([a-z_][a-z0-9_-]*)?$")] | None = None
    gpu_cap: Annotated[int, Meta(ge=0, le=100000)] | None = None
    clear_gpu_cap: bool = False
    revoke_api_tokens: bool = False  # end the user's API tokens (and sessions) too


# ---------------------------------------------------------------- API tokens
class ApiToken(Struct, kw_only=True):
    id: int
    name: str
    username: str
    created_at: float
    expires_at: float | None
    last_used: float | None = None
    kind: TokenKind = "api"


class ApiTokenCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    ttl_s: Annotated[float, Meta(gt=0, le=10 * 365 * 86400)] | None = None


class ApiTokenCreated(Struct, kw_only=True):
    token: str  # shown once
    info: ApiToken


# ---------------------------------------------------------------- join tokens
class JoinTokenCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    ttl_s: Annotated[float, Meta(gt=0, le=365 * 86400)] = 24 * 3600.0
    uses: Annotated[int, Meta(ge=1, le=10000)] = 1
    note: ShortStr = ""


class JoinToken(Struct, kw_only=True):
    id: int
    created_by: str
    created_at: float
    expires_at: float
    uses: int
    used: int
    revoked: bool
    note: str = ""


class JoinTokenCreated(Struct, kw_only=True):
    token: str  # shown once; "<secret>" or "<secret>@<fingerprint>" when the master has TLS
    info: JoinToken


# ---------------------------------------------------------------- audit
class AuditEntry(Struct, kw_only=True):
    id: int
    ts: float
    actor: str
    role: str
    action: str
    target: str
    outcome: AuditOutcome
    client: str
    request_id: str
    details: dict[str, object] = {}
    hash: str = ""


class AuditVerify(Struct, kw_only=True):
    ok: bool
    rows: int
    first_broken: int | None = None
    message: str = ""
    chain_only: int = 0  # rows from before audit MACs, checked by the hash chain alone


# ---------------------------------------------------------------- nodes
class GpuView(Struct, kw_only=True):
    """A GPU as people see it: telemetry plus who holds it."""

    sample: GpuSample
    job_ids: list[int] = []  # mlsm jobs allocated to this GPU
    foreign: bool = False  # processes mlsm did not start hold memory on it
    busy: bool = False
    # A reservation that is on here: whose ("" = maintenance), its id, and whether someone
    # else uses the GPU ("used without reservation": another user's job, or a foreign process).
    reserved_for: str | None = None
    reservation_id: int | None = None
    unreserved_use: bool = False


class Node(Struct, kw_only=True):
    id: int
    name: str
    state: NodeState
    labels: dict[str, str] = {}
    draining: bool = False
    last_seen: float | None = None
    registered_at: float = 0.0
    info: NodeInfo = msgspec.field(default_factory=NodeInfo)
    host: HostSample | None = None
    gpus: list[GpuView] = []
    gpu_error: str | None = None
    running_jobs: int = 0
    docker_network: str = "none"


class NodeUpdate(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    labels: dict[LabelKey, LabelVal] | None = None
    docker_network: ShortStr | None = None


class HistoryPoint(Struct, kw_only=True, array_like=True):
    ts: float
    mean: float
    max: float


class NodeHistory(Struct, kw_only=True):
    node: str
    resolution_s: float
    series: dict[str, list[HistoryPoint]]  # "cpu", "mem", "gpu0.util", "gpu0.mem", ...


#: The unit of each history series, by the last part of its name ("gpu0.temp" -> "temp").
HISTORY_UNITS: dict[str, str] = {
    "cpu": "% CPU",
    "mem": "% of memory",
    "util": "% busy",
    "temp": "°C",
    "power": "W",
}


def history_unit(series: str) -> str:
    """``"gpu0.mem"`` -> ``"% of memory"``; '' for a series this mlsm does not know."""
    return HISTORY_UNITS.get(series.rsplit(".", 1)[-1], "")


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


# ---------------------------------------------------------------- datasets
class DatasetCopy(Struct, kw_only=True):
    node: str
    path: str
    size: int
    files: int
    modified: float
    digest: str | None = None
    top: list[str] = []
    node_state: str = ""


class Dataset(Struct, kw_only=True):
    name: str
    description: str = ""
    tags: list[str] = []
    owner: str = ""
    copies: list[DatasetCopy] = []
    used_by: list[int] = []


class DatasetUpdate(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    description: Annotated[str, Meta(max_length=4096)] | None = None
    tags: (
        Annotated[list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(max_length=64)]
        | None
    ) = None
    owner: UserName | None = None


class DatasetImport(Struct, kw_only=True, forbid_unknown_fields=True):
    """An import onto ``node`` as dataset ``name``: from ``url``, or (``from_node`` and
    ``path``) from a directory or file below an import root of another node of the lab."""

    url: Annotated[str, Meta(max_length=4096)] = ""
    node: NodeName
    name: Annotated[str, Meta(min_length=1, max_length=128)]
    sha256: Annotated[str, Meta(pattern=r"^([0-9a-fA-F]{64})?$")] = ""
    unpack: bool = True
    from_node: NodeName | None = None
    path: Annotated[str, Meta(max_length=4096)] = ""


class DatasetTransfer(Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=128)]
    src: NodeName
    dst: NodeName
    move: bool = False


class Transfer(Struct, kw_only=True):
    id: int
    kind: TransferKind
    dataset: str
    node: str
    state: TransferState
    done_bytes: int = 0
    total_bytes: int | None = None
    rate_bps: float = 0.0
    message: str = ""
    created_at: float = 0.0
    src_node: str | None = None  # copies and moves: where the bytes come from


# ---------------------------------------------------------------- lab summary
class LabSummary(Struct, kw_only=True):
    nodes_online: int
    nodes_total: int
    gpus_total: int
    gpus_busy: int
    jobs_running: int
    jobs_queued: int
    gpus_by_user: dict[str, int] = {}


class GpuBrief(Struct, array_like=True):
    """One GPU in a node's overview row: what its bars show."""

    util: float
    mem_used: int
    mem_total: int


class NodeRow(Struct, kw_only=True, omit_defaults=True):
    """A node as the dashboard's overview row shows it, and nothing more: a 1,000-node
    lab's full node list is megabytes a poll, its rows a tenth of that."""

    name: str
    state: NodeState
    labels: dict[str, str] = {}
    draining: bool = False
    gpu_error: str | None = None
    gpu_model: str = ""  # the first GPU's name
    simulated: bool = False
    gpus: list[GpuBrief] = []
    cpu_percent: float | None = None  # None: no host sample yet
    mem_used: int = 0
    mem_total: int = 0
    running_jobs: int = 0  # processes of mlsm jobs the node reports running
    jobs: list[tuple[int, str]] = []  # (job id, user) of the jobs running there, by id


class LabOverview(Struct, kw_only=True):
    """The overview in one answer: the lab's totals and every node's row."""

    summary: LabSummary
    nodes: list[NodeRow]


def node_row(node: Node, running: list[tuple[int, str]]) -> NodeRow:
    """``node``'s overview row; ``running``: (id, user) of the jobs running on it."""
    host = node.host
    return NodeRow(
        name=node.name,
        state=node.state,
        labels=node.labels,
        draining=node.draining,
        gpu_error=node.gpu_error,
        gpu_model=node.gpus[0].sample.name if node.gpus else "",
        simulated=any(g.sample.simulated for g in node.gpus),
        gpus=[GpuBrief(g.sample.util, g.sample.mem_used, g.sample.mem_total) for g in node.gpus],
        cpu_percent=host.cpu_percent if host else None,
        mem_used=host.mem_used if host else 0,
        mem_total=host.mem_total if host else 0,
        running_jobs=node.running_jobs,
        jobs=sorted(running),
    )


class Health(Struct, kw_only=True):
    status: Literal["ok"]
    version: str
    protocol: int
    database: str


class ErrorInfo(Struct, kw_only=True):
    code: str  # stable: see mlsm/errors.py
    message: str
    details: dict[str, object] = {}


class ErrorBody(Struct, kw_only=True):
    """Every error of the JSON API: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorInfo


json_encoder = msgspec.json.Encoder()


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


#: The JSON API's routes, for clients (kept in step with mlsm/master/routes).
ROUTES_DOC = """
GET    /healthz                          Health            public
POST   /api/v1/auth/login                LoginRequest -> LoginReply
POST   /api/v1/auth/logout
GET    /api/v1/auth/me                   Me
GET    /api/v1/users                     list[User]        admin
POST   /api/v1/users                     UserCreate -> User admin
GET    /api/v1/users/{name}              User              admin
PATCH  /api/v1/users/{name}              UserUpdate -> User admin
GET    /api/v1/tokens[?all=true]         list[ApiToken]
POST   /api/v1/tokens                    ApiTokenCreate -> ApiTokenCreated
DELETE /api/v1/tokens/{id}
GET    /api/v1/audit[?since&actor&action&limit]  list[AuditEntry]  admin
GET    /api/v1/audit/verify              AuditVerify       admin
GET    /api/v1/join-tokens               list[JoinToken]   admin
POST   /api/v1/join-tokens               JoinTokenCreate -> JoinTokenCreated admin
DELETE /api/v1/join-tokens/{id}                            admin
GET    /api/v1/summary                   LabSummary
GET    /api/v1/nodes[?label=k=v]         list[Node]
GET    /api/v1/nodes/{name}              Node
GET    /api/v1/nodes/{name}/history[?window=3600]  NodeHistory
POST   /api/v1/nodes/{name}/drain        Node              admin
POST   /api/v1/nodes/{name}/resume       Node              admin
DELETE /api/v1/nodes/{name}[?force=true]                   admin
GET    /api/v1/jobs[?state&user&node&all&limit]  JobList
POST   /api/v1/jobs                      JobSubmit -> SubmitReply
GET    /api/v1/jobs/{id}                 Job
POST   /api/v1/jobs/cancel               CancelRequest -> CancelResult (a selection)
POST   /api/v1/jobs/bulk                 BulkSubmit -> BulkSubmitReply (all or nothing)
POST   /api/v1/jobs/plan                 JobSubmit -> SubmitPlan (a dry run; stores nothing)
PATCH  /api/v1/jobs/{id}                 JobEdit -> Job (a queued or held job)
POST   /api/v1/jobs/{id}/restart         SubmitReply (the same spec as a new job)
GET    /api/v1/jobs/{id}/log[?offset&limit]   raw bytes (text/plain), header X-Log-Size
GET    /api/v1/jobs/{id}/log/follow[?offset]  text/event-stream: event "log" (data: text),
                                              event "end" (data: final state) then closes
GET    /api/v1/datasets[?node]           list[Dataset]
GET    /api/v1/datasets/{name}           Dataset
PATCH  /api/v1/datasets/{name}           DatasetUpdate -> Dataset
POST   /api/v1/datasets/import           DatasetImport -> Transfer   admin
POST   /api/v1/datasets/transfer         DatasetTransfer -> Transfer admin
DELETE /api/v1/datasets/{name}?node=N                      admin
POST   /api/v1/datasets/{name}/digest?node=N -> Transfer   admin
GET    /api/v1/transfers                 list[Transfer]
GET    /api/v1/transfers/{id}            Transfer
POST   /api/v1/transfers/{id}/cancel     Transfer
GET    /api/v1/settings                  LabSettings
PATCH  /api/v1/settings                  LabSettingsUpdate -> LabSettings admin
PATCH  /api/v1/nodes/{name}              NodeUpdate -> Node (labels, docker_network) admin
GET    /api/v1/usage[?by&since&until&user]      UsageReport (mlsm.wire.usage; members: own jobs)
GET    /api/v1/usage/timeline[?since&until&steps] UsageTimeline
GET    /api/v1/reservations[?all=true]   list[Reservation]
POST   /api/v1/reservations              ReservationCreate -> Reservation (caps for members)
DELETE /api/v1/reservations/{id}         Reservation (its user, its maker, or an admin)
POST   /api/v1/jobs/{id}/release         Job (a held job joins the queue)
POST   /api/v1/jobs/{id}/purge           PurgeResult (a finished job's directory on its node)
GET    /api/v1/jobs/{id}/outputs[?path]  OutputListing (mlsm.wire.outputs; owner and admins)
GET    /api/v1/jobs/{id}/forwards        list[ForwardInfo] (mlsm.wire.channels; owner and admins)
WS     /api/v1/jobs/{id}/shell[?rows&cols&term]   a shell in the running job (mlsm.wire.channels)
WS     /api/v1/jobs/{id}/forwards/{port}[?local]  hold a port forward open
WS     /api/v1/jobs/{id}/forwards/{port}/connect  one forwarded connection
POST   /api/v1/jobs/{id}/outputs/manifest  OutputsFetch -> MessagePack Manifest
POST   /api/v1/jobs/{id}/outputs/frames  OutputsFetch -> frame stream (octet-stream)
POST   /api/v1/code                      manifest (MessagePack) -> CodeOffer
POST   /api/v1/code/{digest}/blobs       frame stream -> CodeOffer
GET    /api/v1/projects[?all=true]       list[Project]
POST   /api/v1/projects                  ProjectPush -> Project
DELETE /api/v1/projects/{name}?node=N[&user=U]
GET    /metrics                          Prometheus text exposition       public
"""


# ---------------------------------------------------------------- lab settings (admins)
Cidr = Annotated[str, Meta(min_length=3, max_length=64, pattern=r"^[0-9a-fA-F:.]+/[0-9]{1,3}$")]
Pattern = Annotated[str, Meta(min_length=1, max_length=256)]
HostPath = Annotated[str, Meta(min_length=1, max_length=4096, pattern=r"^/")]
RetentionDays = Annotated[float, Meta(ge=0, le=100 * 365)]
DiskPct = Annotated[float, Meta(ge=0, le=100)]
IdlePct = Annotated[float, Meta(gt=0, le=100)]
IdleSeconds = Annotated[float, Meta(ge=1, le=30 * 86400)]
IdleAction = Literal["cancel", "requeue"]
#: A time limit in seconds (0: none), at most a year.
LimitSeconds = Annotated[float, Meta(ge=0, le=365 * 86400)]
GpusPerJob = Annotated[int, Meta(ge=0, le=64)]
PriorityValue = Annotated[int, Meta(ge=-1000, le=1000)]
ReserveGpus = Annotated[int, Meta(ge=0, le=100_000)]
ReserveHours = Annotated[float, Meta(gt=0, le=365 * 24)]


class LabSettings(Struct, kw_only=True):
    """Policies admins set for the whole lab."""

    image_patterns: list[Pattern] = []  # images members may run (fnmatch); [] = any image
    mount_allow: list[HostPath] = []  # host paths members may mount into containers
    import_allow_cidrs: list[Cidr] = []  # internal ranges dataset imports may reach
    import_max_bytes: Count = 1 << 40  # largest dataset import (1 TiB)
    # Disk hygiene: a finished job's directory on its node, and its log shipped to the
    # master, are kept this many days after the job ended (0: kept until purged).
    job_retention_days: RetentionDays = 30.0
    # A node whose data dir's filesystem is fuller than this (percent) removes the oldest
    # finished jobs' directories first, before their retention ends (0: no threshold).
    node_disk_high_pct: DiskPct = 90.0
    code_max_files: Count = 20_000  # files in one code snapshot (mlsm submit, project push)
    code_max_bytes: Count = 1 << 30  # bytes of one code snapshot (1 GiB)
    # Notifications: internal ranges webhooks may reach (the dataset imports' guard).
    webhook_allow_cidrs: list[Cidr] = []
    # Idle-GPU policy (off by default): a running job whose GPUs all stayed below
    # idle_gpu_pct % for idle_gpu_window_s is warned; idle_gpu_grace_s later (still idle)
    # it is cancelled, or requeued. Exempt users' jobs are left alone.
    idle_gpu_enabled: bool = False
    idle_gpu_pct: IdlePct = 5.0
    idle_gpu_window_s: IdleSeconds = 3600.0
    idle_gpu_grace_s: IdleSeconds = 1800.0
    idle_gpu_action: IdleAction = "cancel"
    idle_gpu_exempt_users: list[UserName] = []
    # Lab limits (mlsm.master.services.jobs.limits); admins are held to none of them.
    default_time_limit_s: LimitSeconds = 0.0  # a job without --timeout gets this (0: none)
    max_time_limit_s: LimitSeconds = 0.0  # the longest --timeout a member may ask (0: any)
    max_gpus_per_job: GpusPerJob = 0  # GPUs one member's job may ask for (0: any)
    member_max_priority: PriorityValue = DEFAULT_PRIORITY  # the highest --priority a member gives
    # Reservations (mlsm reserve): GPUs one member may hold reserved at once (0: members
    # may not reserve), and the longest reservation a member may make.
    reservation_max_gpus: ReserveGpus = 0
    reservation_max_hours: ReserveHours = 24.0


class LabSettingsUpdate(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    image_patterns: list[Pattern] | None = None
    mount_allow: list[HostPath] | None = None
    import_allow_cidrs: list[Cidr] | None = None
    import_max_bytes: Count | None = None
    job_retention_days: RetentionDays | None = None
    node_disk_high_pct: DiskPct | None = None
    code_max_files: Count | None = None
    code_max_bytes: Count | None = None
    webhook_allow_cidrs: list[Cidr] | None = None
    idle_gpu_enabled: bool | None = None
    idle_gpu_pct: IdlePct | None = None
    idle_gpu_window_s: IdleSeconds | None = None
    idle_gpu_grace_s: IdleSeconds | None = None
    idle_gpu_action: IdleAction | None = None
    idle_gpu_exempt_users: list[UserName] | None = None
    default_time_limit_s: LimitSeconds | None = None
    max_time_limit_s: LimitSeconds | None = None
    max_gpus_per_job: GpusPerJob | None = None
    member_max_priority: PriorityValue | None = None
    reservation_max_gpus: ReserveGpus | None = None
    reservation_max_hours: ReserveHours | None = None
