"""JSON API structs (``/api/v1``), shared by the master, the CLI and the dashboard.

Request structs carry their validation (msgspec ``Meta`` constraints) so bad input is
refused at the edge with a 400 naming the field. Every field added later gets a default.

Every struct is reached as ``api.<Name>``: the contract is read as one namespace (the
OpenAPI schema, the typed client and docs/api.md are checked against it), and kept in
modules by area: :mod:`.base` (shared names), :mod:`.people`, :mod:`.nodes`, :mod:`.jobs`,
:mod:`.datasets`, :mod:`.settings`.
"""

from __future__ import annotations

from mlsm.wire.api.base import (
    ACTIVE_STATES,
    FINAL_STATES,
    JOB_STATES,
    PENDING_STATES,
    ROLE_RANK,
    AuditOutcome,
    ErrorBody,
    ErrorInfo,
    Health,
    JobState,
    LabelKey,
    LabelVal,
    LongStr,
    NodeName,
    NodeState,
    Password,
    Role,
    ShortStr,
    TokenKind,
    TransferKind,
    TransferState,
    UserName,
    json_encoder,
    parse_job_states,
)
from mlsm.wire.api.datasets import (
    Dataset,
    DatasetCopy,
    DatasetImport,
    DatasetTransfer,
    DatasetUpdate,
    Transfer,
)
from mlsm.wire.api.jobs import (
    DEFAULT_PRIORITY,
    MAX_BULK_JOBS,
    MAX_CANCEL_ARRAYS,
    MAX_CANCEL_IDS,
    MAX_PREEMPT_GRACE_S,
    ArrayTasks,
    BulkSubmit,
    BulkSubmitReply,
    CancelRequest,
    CancelResult,
    Job,
    JobEdit,
    JobEvent,
    JobKind,
    JobList,
    JobSubmit,
    NameGlob,
    Priority,
    PurgeResult,
    SubmitPlan,
    SubmitReply,
)
from mlsm.wire.api.nodes import (
    HISTORY_UNITS,
    GpuBrief,
    GpuView,
    HistoryPoint,
    LabOverview,
    LabSummary,
    Node,
    NodeHistory,
    NodeRow,
    NodeUpdate,
    history_unit,
    node_row,
)
from mlsm.wire.api.people import (
    ApiToken,
    ApiTokenCreate,
    ApiTokenCreated,
    AuditEntry,
    AuditVerify,
    JoinToken,
    JoinTokenCreate,
    JoinTokenCreated,
    LoginReply,
    LoginRequest,
    Me,
    PasswordChange,
    PasswordChanged,
    User,
    UserCreate,
    UserUpdate,
)
from mlsm.wire.api.settings import (
    Cidr,
    DiskPct,
    GpusPerJob,
    HostPath,
    IdleAction,
    IdlePct,
    IdleSeconds,
    LabSettings,
    LabSettingsUpdate,
    LimitSeconds,
    Pattern,
    PriorityValue,
    ReserveGpus,
    ReserveHours,
    RetentionDays,
)

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
GET    /api/v1/overview[?since=CURSOR]   LabOverview       (only the rows changed since)
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

__all__ = [
    "ACTIVE_STATES",
    "DEFAULT_PRIORITY",
    "FINAL_STATES",
    "HISTORY_UNITS",
    "JOB_STATES",
    "MAX_BULK_JOBS",
    "MAX_CANCEL_ARRAYS",
    "MAX_CANCEL_IDS",
    "MAX_PREEMPT_GRACE_S",
    "PENDING_STATES",
    "ROLE_RANK",
    "ROUTES_DOC",
    "ApiToken",
    "ApiTokenCreate",
    "ApiTokenCreated",
    "ArrayTasks",
    "AuditEntry",
    "AuditOutcome",
    "AuditVerify",
    "BulkSubmit",
    "BulkSubmitReply",
    "CancelRequest",
    "CancelResult",
    "Cidr",
    "Dataset",
    "DatasetCopy",
    "DatasetImport",
    "DatasetTransfer",
    "DatasetUpdate",
    "DiskPct",
    "ErrorBody",
    "ErrorInfo",
    "GpuBrief",
    "GpuView",
    "GpusPerJob",
    "Health",
    "HistoryPoint",
    "HostPath",
    "IdleAction",
    "IdlePct",
    "IdleSeconds",
    "Job",
    "JobEdit",
    "JobEvent",
    "JobKind",
    "JobList",
    "JobState",
    "JobSubmit",
    "JoinToken",
    "JoinTokenCreate",
    "JoinTokenCreated",
    "LabOverview",
    "LabSettings",
    "LabSettingsUpdate",
    "LabSummary",
    "LabelKey",
    "LabelVal",
    "LimitSeconds",
    "LoginReply",
    "LoginRequest",
    "LongStr",
    "Me",
    "NameGlob",
    "Node",
    "NodeHistory",
    "NodeName",
    "NodeRow",
    "NodeState",
    "NodeUpdate",
    "Password",
    "PasswordChange",
    "PasswordChanged",
    "Pattern",
    "Priority",
    "PriorityValue",
    "PurgeResult",
    "ReserveGpus",
    "ReserveHours",
    "RetentionDays",
    "Role",
    "ShortStr",
    "SubmitPlan",
    "SubmitReply",
    "TokenKind",
    "Transfer",
    "TransferKind",
    "TransferState",
    "User",
    "UserCreate",
    "UserName",
    "UserUpdate",
    "history_unit",
    "json_encoder",
    "node_row",
    "parse_job_states",
]
