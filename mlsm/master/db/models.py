"""SQLAlchemy 2 models: everything the master keeps.

The schema only changes through Alembic migrations (``mlsm/master/db/migrations``). Times are
unix seconds (float) so SQLite and PostgreSQL agree without timezone handling; JSON columns
hold small, schema-less bits (labels, node info, history) and use the portable ``JSON`` type;
a job's spec is a JSON column too, read and written as a typed struct (:class:`JobSpecColumn`).
A string column that holds one of a wire ``Literal``'s values is annotated with that
``Literal``, so mypy checks every write (the database stores plain strings).

Over 400 lines, as one piece: the models are the schema Alembic's migrations are checked
against (one metadata), and their relations and shared column types read best together.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from mlsm.master.jobspec import StoredJobSpec, decode_spec, encode_spec
from mlsm.wire.api import AuditOutcome, JobState, Role, TokenKind, TransferKind, TransferState
from mlsm.wire.code import ProjectState


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class JobSpecColumn(TypeDecorator[StoredJobSpec]):
    """``jobs.spec``: a :class:`~mlsm.master.jobspec.StoredJobSpec` in a JSON column, decoded
    once as a row loads (rows of every earlier form too) and encoded as it is written."""

    impl = JSON
    cache_ok = True

    def process_bind_param(
        self, value: StoredJobSpec | None, dialect: Dialect
    ) -> dict[str, Any] | None:
        return None if value is None else encode_spec(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> StoredJobSpec | None:
        return None if value is None else decode_spec(value)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[Role] = mapped_column(String(16), default="member")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    unix_user: Mapped[str] = mapped_column(String(32), default="")
    gpu_cap: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    last_login: Mapped[float | None] = mapped_column(Float, nullable=True)


class Token(Base):
    """Session tokens (from login) and API tokens (for scripts); only hashes are stored."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[TokenKind] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(64), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_used: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class JoinToken(Base):
    __tablename__ = "join_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    uses: Mapped[int] = mapped_column(Integer, default=1)
    used: Mapped[int] = mapped_column(Integer, default=0)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    note: Mapped[str] = mapped_column(String(256), default="")


class Node(Base):
    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    draining: Mapped[bool] = mapped_column(Boolean, default=False)
    removed: Mapped[bool] = mapped_column(Boolean, default=False)
    docker_network: Mapped[str] = mapped_column(String(64), default="none")
    registered_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float | None] = mapped_column(Float, nullable=True)
    join_token_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class MetricPoint(Base):
    """Downsampled telemetry (1-minute mean and max), written in batches."""

    __tablename__ = "metric_points"
    __table_args__ = (Index("ix_metric_node_series_ts", "node_id", "series", "ts"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    node_id: Mapped[int] = mapped_column(Integer)
    series: Mapped[str] = mapped_column(String(32))
    ts: Mapped[float] = mapped_column(Float)
    mean: Mapped[float] = mapped_column(Float)
    max: Mapped[float] = mapped_column(Float)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state", "state"), Index("ix_jobs_user_state", "user", "state"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(256), default="")
    user: Mapped[str] = mapped_column(String(64))
    state: Mapped[JobState] = mapped_column(String(16))
    spec: Mapped[StoredJobSpec] = mapped_column(JobSpecColumn)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    retries: Mapped[int] = mapped_column(Integer, default=0)
    array_parent: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    array_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    node: Mapped[str | None] = mapped_column(String(63), nullable=True)
    gpu_indices: Mapped[list[Any]] = mapped_column(JSON, default=list)
    reason: Mapped[str] = mapped_column(Text, default="")
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    log_size: Mapped[int] = mapped_column(BigInteger, default=0)
    history: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # Disk hygiene (migration 0003): when the job's directory on its node went and why, and
    # when retention removed its shipped log.
    outputs_removed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    outputs_removed_why: Mapped[str] = mapped_column(String(128), default="")
    log_removed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Idle-GPU policy (migration 0005): an admin's exemption, and when the job was warned.
    idle_exempt: Mapped[bool] = mapped_column(Boolean, default=False)
    idle_warned_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Times it was preempted and requeued (migration 0006): attempts that used no retry.
    preemptions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Lease fencing (migration 0008): a retry of an attempt lost with its node starts no
    # sooner than this (that node stops such an attempt by then; see JobTable.interrupt).
    not_before: Mapped[float | None] = mapped_column(Float, nullable=True)


class JobRun(Base):
    """One attempt of a job that ran, written when it ends: the stored facts usage reports
    are computed from (with the telemetry history of its GPUs). A running attempt has no
    row yet; reports take it from its job row, counted to now."""

    __tablename__ = "job_runs"
    __table_args__ = (
        Index("ix_job_runs_ended", "ended_at"),
        UniqueConstraint("job_id", "attempt"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    user: Mapped[str] = mapped_column(String(64), index=True)
    node: Mapped[str] = mapped_column(String(63))
    node_id: Mapped[int] = mapped_column(Integer)
    gpu_indices: Mapped[list[Any]] = mapped_column(JSON, default=list)
    gpu_model: Mapped[str] = mapped_column(String(128), default="")
    node_labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    queued_at: Mapped[float] = mapped_column(Float)  # when this attempt joined the queue
    started_at: Mapped[float] = mapped_column(Float)
    ended_at: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16), default="")  # how the attempt ended
    # The attempt's directory on ``node``, when the job later ran elsewhere, was removed
    # (retention; migration 0007). The last node's directory is the job's own mark.
    dir_removed_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Reservation(Base):
    """GPUs of one node set aside for one user (or, for maintenance, for nobody) from
    ``start`` to ``end``; it ends by itself (``cancelled_at`` when cancelled before)."""

    __tablename__ = "reservations"
    __table_args__ = (Index("ix_reservations_end", "end"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user: Mapped[str] = mapped_column(String(64), default="")  # "" = maintenance
    node: Mapped[str] = mapped_column(String(63))
    gpu_indices: Mapped[list[Any]] = mapped_column(JSON, default=list)
    start: Mapped[float] = mapped_column(Float)
    end: Mapped[float] = mapped_column(Float)
    note: Mapped[str] = mapped_column(String(256), default="")
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    cancelled_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Command(Base):
    """Commands for agents; kept until acknowledged so a lost long-poll loses nothing."""

    __tablename__ = "commands"
    __table_args__ = (Index("ix_commands_node_acked", "node_id", "acked"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    body: Mapped[bytes] = mapped_column(LargeBinary)  # msgpack-encoded command
    created_at: Mapped[float] = mapped_column(Float)
    acked: Mapped[bool] = mapped_column(Boolean, default=False)


class Dataset(Base):
    """Metadata of a dataset name; its copies live on nodes (DatasetCopy)."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    owner: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[float] = mapped_column(Float)


class DatasetCopy(Base):
    __tablename__ = "dataset_copies"
    __table_args__ = (UniqueConstraint("node_id", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    node_id: Mapped[int] = mapped_column(Integer, index=True)
    root: Mapped[str] = mapped_column(String(4096))
    path: Mapped[str] = mapped_column(String(4096))
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    files: Mapped[int] = mapped_column(BigInteger, default=0)
    modified: Mapped[float] = mapped_column(Float, default=0.0)
    digest: Mapped[str | None] = mapped_column(String(128), nullable=True)
    top: Mapped[list[Any]] = mapped_column(JSON, default=list)


class Transfer(Base):
    __tablename__ = "transfers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[TransferKind] = mapped_column(String(16))
    dataset: Mapped[str] = mapped_column(String(128))
    node: Mapped[str] = mapped_column(String(63))
    src_node: Mapped[str | None] = mapped_column(String(63), nullable=True)
    state: Mapped[TransferState] = mapped_column(String(16), default="pending")
    done_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    total_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    rate_bps: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[float] = mapped_column(Float)
    command_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Setting(Base):
    """Global settings admins change at run time (image and mount allow-lists, ...)."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON)


class UsageRecord(Base):
    """Decayed GPU-hours per user for fair share, updated by the scheduler."""

    __tablename__ = "usage"

    user: Mapped[str] = mapped_column(String(64), primary_key=True)
    gpu_hours: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[float] = mapped_column(Float)


class AuditRow(Base):
    """Append-only, hash-chained record of every mutation; ``mac`` seals each row's hash
    with a key kept outside the database (NULL on rows from before revision 0002)."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[float] = mapped_column(Float, index=True)
    actor: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(512))
    outcome: Mapped[AuditOutcome] = mapped_column(String(16))
    client: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str | None] = mapped_column(String(64), nullable=True, default=None)


class CodeSnapshot(Base):
    """A code snapshot (a manifest in the code store) a user may run jobs in: the user
    uploaded it, or sent the bytes of every file it holds (see services/code)."""

    __tablename__ = "code_snapshots"
    __table_args__ = (UniqueConstraint("digest", "user"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), index=True)
    user: Mapped[str] = mapped_column(String(64))
    files: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    complete: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)


class CodeProof(Base):
    """A blob of the code store whose bytes this user has sent (so a member's manifest may
    name it without sending it again; a blob someone else sent must be sent once)."""

    __tablename__ = "code_proofs"

    user: Mapped[str] = mapped_column(String(64), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)


class ProjectRow(Base):
    """A user's named working tree on one node (``mlsm project push``)."""

    __tablename__ = "projects"
    __table_args__ = (UniqueConstraint("user", "name", "node_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    node_id: Mapped[int] = mapped_column(Integer, index=True)
    digest: Mapped[str] = mapped_column(String(64), default="")
    files: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[ProjectState] = mapped_column(String(16), default="syncing")
    message: Mapped[str] = mapped_column(Text, default="")
    path: Mapped[str] = mapped_column(String(4096), default="")
    updated_at: Mapped[float] = mapped_column(Float)


class EventRow(Base):
    """The lab's event stream (see :mod:`mlsm.wire.events`): written in the transaction of
    the change it reports, ids only grow (AUTOINCREMENT on SQLite: never reused after
    pruning), so ``id > N`` is exactly what a follower has not seen."""

    __tablename__ = "events"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    ts: Mapped[float] = mapped_column(Float, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    user: Mapped[str] = mapped_column(String(64), default="")
    public: Mapped[bool] = mapped_column(Boolean, default=False)  # every member may see it
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    node: Mapped[str] = mapped_column(String(63), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class NotifySubscriptionRow(Base):
    """Where a user (or, lab-wide, an admin for the lab) wants events sent. ``secret`` is
    the webhook's signing secret encrypted with the master's notify key (see
    services/events/secrets.py); ``cursor`` the last event id this subscription dealt with."""

    __tablename__ = "notify_subscriptions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    lab_wide: Mapped[bool] = mapped_column(Boolean, default=False)
    channel: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(2048))
    kinds: Mapped[list[Any]] = mapped_column(JSON, default=list)
    secret: Mapped[str] = mapped_column(Text, default="")
    note: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[float] = mapped_column(Float)
    cursor: Mapped[int] = mapped_column(BigInteger, default=0)
    removed: Mapped[bool] = mapped_column(Boolean, default=False)


class NotifyDeliveryRow(Base):
    """One event sent (or given up on) to one subscription: what ``mlsm notify log`` shows."""

    __tablename__ = "notify_deliveries"
    __table_args__ = (Index("ix_notify_deliveries_sub_id", "subscription_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(Integer)
    event_id: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    ts: Mapped[float] = mapped_column(Float)
