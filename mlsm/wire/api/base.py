"""Names every part of the JSON API shares: roles, constrained strings, job states, health and error bodies."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

import msgspec
from msgspec import Meta, Struct

from mlsm.errors import ValidationError

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
