"""Agent <-> master messages, encoded as MessagePack.

Every struct here is shared by both sides. Rules for evolution: a field added later always
gets a default; a field is never renamed or re-typed; commands are a tagged union, and a new
command kind is only sent to agents whose protocol version knows it.

Routes (all under ``/agent/v1``, body and answer MessagePack, auth ``Authorization: Node
<secret>`` except register):

=====================  ===================  =======================
route                  body                 answer
=====================  ===================  =======================
POST register          RegisterRequest      RegisterReply
POST heartbeat         Heartbeat            HeartbeatReply
POST commands          CommandPoll          CommandBatch (long-poll)
POST events            JobEvents            Ack
POST logs              LogChunk             LogAck
POST datasets          DatasetReport        Ack
POST outputs/removed   JobDirsRemoved       Ack
POST code/manifest     CodeManifestFetch    manifest bytes
POST code/blobs        CodeBlobsFetch       frame stream
POST projects          ProjectReport        Ack
POST bulk/push/{pipe}  pipe records         Ack (mlsm.wire.bulk)
POST bulk/pull         BulkPull             pipe records
WS   channels/{id}     channel frames       (mlsm.wire.channels)
=====================  ===================  =======================

Outputs and disk messages (:mod:`mlsm.wire.outputs`) join the command union here. What a
node says about itself (its info and telemetry) is :mod:`mlsm.wire.node`, re-exported here.

Over 400 lines, as one piece: the agent protocol is versioned as a whole (the table above,
the command union and ``PROTOCOL_VERSION`` change together), and an old agent's
compatibility is judged by reading this one module.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from mlsm.wire.code import CopyProject, RemoveProject, SyncProject
from mlsm.wire.ints import Int64
from mlsm.wire.node import MAX_NODE_ACCOUNTS as MAX_NODE_ACCOUNTS
from mlsm.wire.node import DiskUsage as DiskUsage
from mlsm.wire.node import GpuProcess as GpuProcess
from mlsm.wire.node import GpuSample as GpuSample
from mlsm.wire.node import HostSample as HostSample
from mlsm.wire.node import LongStr, NonNeg, ShortStr
from mlsm.wire.node import NodeInfo as NodeInfo
from mlsm.wire.outputs import (
    ListOutputs,
    OutputsManifest,
    PurgeJobDir,
    ServeOutputs,
    SweepJobDirs,
)

# Bounds applied at decode time, so a hostile body fails validation, not the master.
Name = Annotated[str, Meta(min_length=1, max_length=128)]

MAX_LOG_CHUNK = 1 << 20  # bytes of log in one LogChunk
LogBytes = Annotated[bytes, Meta(max_length=MAX_LOG_CHUNK)]


# ---------------------------------------------------------------- jobs as the agent sees them
AgentJobState = Literal["starting", "running", "exited", "failed_to_start", "lost"]
JobEndKind = Literal["", "exit", "cancelled", "timeout", "oom", "error", "lost"]
#: How a stop asks the ending to be named (a subset of :data:`JobEndKind`). ``lost``: the
#: agent stopped the attempt itself after a lease without the master (see
#: :attr:`JobSpec.stop_when_lost`); the master counts it as an interruption.
StopKind = Literal["cancelled", "timeout", "error", "lost"]
STOP_KINDS: tuple[StopKind, ...] = ("cancelled", "timeout", "error", "lost")


class JobReport(Struct, kw_only=True, omit_defaults=True):
    """State of one job on a node (in heartbeats, and in events the moment it changes)."""

    job_id: Int64
    attempt: NonNeg = 0
    state: AgentJobState
    pid: Int64 | None = None
    container_id: ShortStr | None = None
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: Int64 | None = None
    signal: Int64 | None = None
    reason: LongStr = ""  # why it ended, in words ("exit code 1", "cancelled by alice", "timeout")
    end_kind: JobEndKind = ""
    log_size: NonNeg = 0  # bytes of output.log written so far


# ---------------------------------------------------------------- datasets
class DatasetEntry(Struct, kw_only=True, omit_defaults=True):
    root: LongStr
    name: Name
    path: LongStr
    size: NonNeg = 0
    files: NonNeg = 0
    modified: float = 0.0
    digest: ShortStr | None = None  # "sha256:..." when computed on request
    top: list[ShortStr] = []  # a sample of top-level entries


class DatasetReport(Struct, kw_only=True, omit_defaults=True):
    """A catalog delta; ``full`` replaces everything the master knows of this node."""

    full: bool = False
    upsert: list[DatasetEntry] = []
    removed: list[LongStr] = []  # paths
    catalog_digest: ShortStr = ""


#: A transfer as the agent (and, for relayed parts, the master's acks) reports it.
AgentTransferState = Literal["running", "succeeded", "failed", "cancelled"]


class TransferProgress(Struct, kw_only=True, omit_defaults=True):
    """Progress of a dataset import/copy command running on the agent."""

    command_id: Int64
    done_bytes: NonNeg = 0
    total_bytes: Int64 | None = None
    rate_bps: float = 0.0
    state: AgentTransferState = "running"
    message: LongStr = ""


# ---------------------------------------------------------------- register / heartbeat
class RegisterRequest(Struct, kw_only=True):
    protocol: Int64
    join_token: Annotated[str, Meta(min_length=8, max_length=512)]
    name: Annotated[str, Meta(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    labels: dict[Name, ShortStr] = {}
    info: NodeInfo = msgspec.field(default_factory=NodeInfo)


class RegisterReply(Struct, kw_only=True):
    node_id: Int64
    name: str
    node_secret: str  # shown once; the agent keeps it 0600
    heartbeat_interval: float
    lease: float


class Heartbeat(Struct, kw_only=True, omit_defaults=True):
    protocol: Int64
    seq: NonNeg = 0
    sent_at: float = 0.0
    info: NodeInfo | None = None  # only when changed since the last accepted heartbeat
    host: HostSample = msgspec.field(default_factory=HostSample)
    gpus: list[GpuSample] = []
    gpu_error: LongStr | None = None  # the probe as a whole failed (e.g. no driver)
    jobs: list[JobReport] = []
    datasets_digest: ShortStr = ""
    transfers: list[TransferProgress] = []


class HeartbeatReply(Struct, kw_only=True, omit_defaults=True):
    heartbeat_interval: float = 2.0
    lease: float = 30.0
    want_full_catalog: bool = False  # master lost track of this node's datasets
    drain: bool = False


# ---------------------------------------------------------------- commands (tagged union)
class Mount(Struct, kw_only=True, omit_defaults=True):
    source: LongStr
    target: LongStr
    read_only: bool = True


class JobSpec(Struct, kw_only=True, omit_defaults=True):
    """Everything the agent needs to run one job attempt."""

    job_id: Int64
    attempt: NonNeg = 0
    name: ShortStr = ""
    user: ShortStr = ""  # mlsm user name of the submitter
    unix_user: ShortStr = ""  # the user's mapped account ("" = none; see agent accounts.py)
    admin: bool = False  # the submitter is an admin: may run as the agent's own account
    argv: list[LongStr]
    env: dict[ShortStr, LongStr] = {}
    workdir: LongStr = ""
    env_kind: Literal["process", "venv", "conda", "docker"] = "process"
    venv: LongStr = ""
    conda: ShortStr = ""
    image: ShortStr = ""
    mounts: list[Mount] = []
    network: ShortStr = ""
    keep_container: bool = False
    gpus: list[NonNeg] = []  # indices on the node
    gpu_uuids: list[ShortStr] = []
    cpus: float = 0.0
    mem_bytes: NonNeg = 0
    timeout_s: float = 0.0  # 0 = none
    kill_grace_s: float = 10.0
    array_index: Int64 | None = None
    datasets: dict[Name, LongStr] = {}  # name -> path on this node
    # Host roots the job's --mount sources must lie under once the node resolves their
    # symlinks: the lab's mount allow-list for a member's job, None (no limit) for an admin's.
    mount_roots: list[LongStr] | None = None
    # The code snapshot the job runs in (its manifest's digest; see mlsm.wire.code): the
    # agent materialises it as <job dir>/code for the job's account and runs the job there.
    code: ShortStr = ""
    # The job runs in this project's tree on the node (``user/name``; see mlsm.wire.code).
    project: ShortStr = ""
    # The master runs this job again elsewhere if the node is lost (it has retries left):
    # the agent stops the attempt once it has had no contact with the master for the lease,
    # so the retry, which the master starts only after the lease and a stop's grace, never
    # runs beside it. False: the attempt runs on through any outage and reports its real end.
    stop_when_lost: bool = False


class StartJob(Struct, tag="start_job", kw_only=True):
    id: Int64
    job: JobSpec


class CancelJob(Struct, tag="cancel_job", kw_only=True):
    id: Int64
    job_id: Int64
    attempt: NonNeg = 0
    reason: LongStr = "cancelled"
    end_kind: StopKind = "cancelled"
    grace_s: float = 10.0


class JobNotice(Struct, tag="job_notice", kw_only=True):
    """A line for a running job's log from the master (an idle-GPU warning, say); the
    agent appends ``[mlsm] <text>`` to that attempt's log (since protocol 4)."""

    id: Int64
    job_id: Int64
    attempt: NonNeg = 0
    text: LongStr = ""


class ImportDataset(Struct, tag="import_dataset", kw_only=True):
    id: Int64
    url: LongStr
    name: Name
    root: LongStr = ""  # "" = the agent's first dataset root
    sha256: ShortStr = ""
    max_bytes: NonNeg = 0
    allow_cidrs: list[ShortStr] = []
    unpack: bool = True


class DeleteDataset(Struct, tag="delete_dataset", kw_only=True):
    id: Int64
    path: LongStr


class DigestDataset(Struct, tag="digest_dataset", kw_only=True):
    id: Int64
    path: LongStr


class CancelTransfer(Struct, tag="cancel_transfer", kw_only=True):
    id: Int64
    command_id: Int64


from mlsm.wire.bulk import BulkListen, BulkManifest, BulkReceive, BulkServe  # noqa: E402
from mlsm.wire.channels import OpenChannel  # noqa: E402

Command = (
    StartJob
    | CancelJob
    | ImportDataset
    | DeleteDataset
    | DigestDataset
    | CancelTransfer
    | BulkManifest
    | BulkServe
    | BulkReceive
    | SweepJobDirs
    | PurgeJobDir
    | ListOutputs
    | OutputsManifest
    | ServeOutputs
    | SyncProject
    | RemoveProject
    | BulkListen
    | CopyProject
    | JobNotice
    | OpenChannel
)


class CommandPoll(Struct, kw_only=True, omit_defaults=True):
    protocol: Int64
    wait_s: Annotated[float, Meta(ge=0, le=60)] = 25.0
    ack: list[Int64] = []  # command ids handled since the last poll


class CommandBatch(Struct, kw_only=True, omit_defaults=True):
    commands: list[Command] = []


class JobEvents(Struct, kw_only=True):
    protocol: Int64
    jobs: list[JobReport]


class LogChunk(Struct, kw_only=True):
    job_id: Int64
    offset: NonNeg
    data: LogBytes
    attempt: NonNeg = 0


class LogAck(Struct, kw_only=True):
    job_id: Int64
    next_offset: Int64  # what the master holds; the agent resends from here


class Ack(Struct, kw_only=True, omit_defaults=True):
    ok: bool = True


class AgentError(Struct, kw_only=True):
    """Error body on agent routes (MessagePack twin of the JSON error)."""

    code: str
    message: str


# One encoder/decoder per message type, built once (msgspec perf tips).
encoder = msgspec.msgpack.Encoder()
decode_register = msgspec.msgpack.Decoder(RegisterRequest).decode
decode_register_reply = msgspec.msgpack.Decoder(RegisterReply).decode
decode_heartbeat = msgspec.msgpack.Decoder(Heartbeat).decode
decode_heartbeat_reply = msgspec.msgpack.Decoder(HeartbeatReply).decode
decode_poll = msgspec.msgpack.Decoder(CommandPoll).decode
decode_batch = msgspec.msgpack.Decoder(CommandBatch).decode
decode_events = msgspec.msgpack.Decoder(JobEvents).decode
decode_log_chunk = msgspec.msgpack.Decoder(LogChunk).decode
decode_log_ack = msgspec.msgpack.Decoder(LogAck).decode
decode_dataset_report = msgspec.msgpack.Decoder(DatasetReport).decode
decode_ack = msgspec.msgpack.Decoder(Ack).decode
decode_agent_error = msgspec.msgpack.Decoder(AgentError).decode

MSGPACK = "application/msgpack"
