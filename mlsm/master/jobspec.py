"""The stored job spec: what a submission asked for, checked and parsed once.

:func:`build_submission` turns a validated :class:`~mlsm.wire.api.JobSubmit` into a
:class:`StoredJobSpec`: ``--array`` becomes the task indices and the throttle, ``--after``
:class:`Dependency` entries, ``--mount`` :class:`~mlsm.wire.agent.Mount` structs, and the
lab's image and mount rules are applied. The struct is what ``jobs.spec`` holds (JSON, only
the fields that differ from their defaults, with its version tag ``v``), and the database
column decodes it once as a row loads (:func:`decode_spec`), so the scheduler, the agent's
start command and the views all read typed fields with the defaults written once, here.

What a job row says about itself elsewhere (name, user, priority, GPU count, retries, array
index) lives in the row's own columns, not in the spec.

Evolution: a new field gets a default (old rows decode to it); a field whose meaning changes
needs a new tag, and :func:`decode_spec` keeps reading every older form. Rows written by
mlsm 0.1 hold an untagged dict (``msgspec.to_builtins(JobSubmit)`` plus ``array_throttle``
and ``member_mounts``) with ``--after`` and ``--mount`` as the strings the user typed; they
are read through the same parsers a submission goes through.
"""

from __future__ import annotations

import re
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import msgspec
from msgspec import Struct

from mlsm.errors import PayloadTooLarge, ValidationError
from mlsm.master.security import Principal
from mlsm.wire import api
from mlsm.wire.agent import Mount
from mlsm.wire.ints import INT64_MAX

GIB = 1 << 30
#: The tag of the current form; mlsm 0.1's untagged dict is form 1.
SPEC_VERSION = 2
MAX_ARRAY_TASKS = 10_000
#: What one submission may make the database hold: tasks x the stored spec (argv, env, ...).
#: A 10,000-task array of ordinary specs (~0.5 KiB) stores ~5 MiB; this refuses a request
#: that would make a small body grow the database by gigabytes (a large env x a big array).
MAX_SUBMISSION_STORED_BYTES = 32 << 20
_encode = msgspec.json.Encoder().encode

DependencyMode = Literal["ok", "any"]
_MODES: dict[str, DependencyMode] = {"ok": "ok", "any": "any"}


class Dependency(Struct, frozen=True, array_like=True):
    """``--after JOB[:ok|any]``: start once ``job_id`` succeeded (ok) or ended (any)."""

    job_id: int
    #: As given; None when the user named no mode (which means "ok").
    mode: DependencyMode | None = None

    @property
    def wanted(self) -> DependencyMode:
        return self.mode or "ok"

    def text(self) -> str:
        """The form the user typed, for views."""
        return str(self.job_id) if self.mode is None else f"{self.job_id}:{self.mode}"


class StoredJobSpec(
    Struct, kw_only=True, frozen=True, omit_defaults=True, tag_field="v", tag=SPEC_VERSION
):
    """A job's request as stored: every default of a job spec is written here and only here."""

    argv: list[str]
    gpu_mem_gib: float = 0.0
    cpus: float = 0.0
    mem_gib: float = 0.0
    node: str | None = None  # the node the user asked for
    labels: dict[str, str] = {}
    datasets: list[str] = []
    env_kind: Literal["process", "venv", "conda", "docker"] = "process"
    venv: str = ""
    conda: str = ""
    image: str = ""
    mounts: list[Mount] = []
    keep_container: bool = False
    workdir: str = ""
    env: dict[str, str] = {}
    after: list[Dependency] = []
    timeout_s: float = 0.0
    array_throttle: int = 0  # 0 = no throttle
    #: A member's mounts: the agent re-checks them against the allow-list once it can
    #: resolve symlinks (the check at submit is only lexical).
    member_mounts: bool = False
    #: The code snapshot the job runs in (a manifest digest of the master's code store).
    code: str = ""
    #: The submitter's project the job runs in (placed on the node that holds it).
    project: str = ""
    #: The job this one re-runs (``mlsm restart``), shown in its view.
    restarted_from: int | None = None
    #: Runs on otherwise idle GPUs and is stopped (after ``preempt_grace_s``) and requeued
    #: when a normal job needs them.
    preemptible: bool = False
    preempt_grace_s: float = 0.0  # 0 = the master's KILL_GRACE_S
    #: "session": an interactive allocation (mlsm session), see mlsm.wire.api.JobSubmit.
    kind: api.JobKind = "batch"
    session_keep: bool = False

    @property
    def gpu_mem_bytes(self) -> int:
        return int(self.gpu_mem_gib * GIB)

    @property
    def mem_bytes(self) -> int:
        return int(self.mem_gib * GIB)


# ---------------------------------------------------------------- parsers (one each)
def parse_array(spec: str) -> tuple[range, int]:
    """'0-99%8' -> (indices 0..99, throttle 8); '5' -> (0..4, 0).

    The task count and the largest index are checked before anything is built, so a
    huge range is a 400, not a list of a billion ints or an index no database holds."""
    m = re.fullmatch(r"(\d+)(?:-(\d+))?(?:%(\d+))?", spec)
    if not m:
        raise ValidationError(f"--array {spec!r}: expected N, A-B or A-B%T", path="array")
    a, b, t = m.group(1), m.group(2), m.group(3)
    start, stop = (int(a), int(b) + 1) if b is not None else (0, int(a))
    if stop <= start:
        raise ValidationError(f"--array {spec!r} has no tasks", path="array")
    if stop - start > MAX_ARRAY_TASKS:
        raise ValidationError(f"--array {spec!r}: at most {MAX_ARRAY_TASKS} tasks", path="array")
    if stop - 1 > INT64_MAX:
        raise ValidationError(f"--array {spec!r}: task indices go up to {INT64_MAX}", path="array")
    # A throttle above the task count limits nothing: keep it within the count.
    return range(start, stop), min(int(t), stop - start) if t else 0


def parse_mount(text: str) -> Mount:
    """``/host/path:/container/path[:ro|rw]`` (read-only unless ``rw``)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0].startswith("/") or not parts[1].startswith("/"):
        raise ValidationError(
            f"mount {text!r}: expected /host/path:/container/path[:ro|rw]", path="mounts"
        )
    mode = parts[2] if len(parts) == 3 else "ro"
    if mode not in ("ro", "rw"):
        raise ValidationError(f"mount {text!r}: mode must be ro or rw", path="mounts")
    return Mount(source=parts[0], target=parts[1], read_only=mode == "ro")


def parse_dependency(text: str) -> Dependency:
    """``JOBID[:ok|any]`` (the wire struct's pattern already holds); the id is not bounded
    here (see :func:`_check_dependency_ids`)."""
    jid, sep, mode = text.partition(":")
    wanted = _MODES.get(mode) if sep else None
    if not (jid.isascii() and jid.isdigit()) or (sep and wanted is None):
        raise ValidationError(f"--after {text!r}: expected JOBID[:ok|any]", path="after")
    return Dependency(int(jid), wanted)


# ---------------------------------------------------------------- submit
class SubmitPolicy(Protocol):
    """The lab's rules for container jobs (:class:`~mlsm.master.services.policy.JobPolicy`)."""

    def check_image(self, principal: Principal, image: str) -> None: ...

    def check_mount(self, principal: Principal, source: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Submission:
    """One submission, ready to store: its spec and a row per task (index None: no array)."""

    spec: StoredJobSpec
    indices: Sequence[int | None]


def build_submission(
    body: api.JobSubmit, p: Principal, *, nodes: Container[str], policy: SubmitPolicy
) -> Submission:
    """Check ``body`` beyond its wire constraints and parse it, once; the first problem found
    is the error (in the order a person fixes them: environment, placement, mounts, array,
    size, dependencies)."""
    if body.env_kind == "venv" and not body.venv:
        raise ValidationError("--env venv needs --venv PATH", path="venv")
    if body.env_kind == "conda" and not body.conda:
        raise ValidationError("--env conda needs --conda NAME", path="conda")
    if body.env_kind == "docker" and not body.image:
        raise ValidationError("--env docker needs --image IMG", path="image")
    if body.env_kind != "docker" and (body.image or body.mounts):
        raise ValidationError("--image and --mount are for --env docker", path="image")
    if body.venv and not body.venv.startswith("/"):
        raise ValidationError("--venv must be an absolute path on the node", path="venv")
    if body.workdir and not body.workdir.startswith("/"):
        raise ValidationError("--workdir must be an absolute path on the node", path="workdir")
    if sum(map(bool, (body.workdir, body.code, body.project))) > 1:
        raise ValidationError(
            "a job runs in one place: shipped code, --project or --workdir, not several",
            path="code",
        )
    if body.kind == "session" and body.array:
        raise ValidationError("a session is one allocation: no --array", path="array")
    if body.session_keep and body.kind != "session":
        raise ValidationError("session_keep is for sessions", path="session_keep")
    if any("\x00" in a for a in body.argv):
        raise ValidationError("the command contains a NUL byte", path="argv")
    if body.node is not None and body.node not in nodes:
        raise ValidationError(f"no node named {body.node!r}", path="node")
    mounts = [parse_mount(m) for m in body.mounts]
    if body.env_kind == "docker":
        policy.check_image(p, body.image)
        for m in mounts:
            policy.check_mount(p, m.source)
    indices: Sequence[int | None] = [None]
    throttle = 0
    if body.array:
        indices, throttle = parse_array(body.array)
    deps = [parse_dependency(a) for a in body.after]
    spec = StoredJobSpec(
        argv=body.argv,
        gpu_mem_gib=body.gpu_mem_gib,
        cpus=body.cpus,
        mem_gib=body.mem_gib,
        node=body.node,
        labels=body.labels,
        datasets=body.datasets,
        env_kind=body.env_kind,
        venv=body.venv,
        conda=body.conda,
        image=body.image,
        mounts=mounts,
        keep_container=body.keep_container,
        workdir=body.workdir,
        env=body.env,
        after=deps,
        timeout_s=body.timeout_s,
        array_throttle=throttle,
        member_mounts=bool(mounts) and not p.is_admin,
        code=body.code,
        project=body.project,
        preemptible=body.preemptible,
        preempt_grace_s=body.preempt_grace_s,
        kind=body.kind,
        session_keep=body.session_keep,
    )
    check_stored_size(spec, len(indices))
    _check_dependency_ids(deps)
    return Submission(spec=spec, indices=indices)


def _check_dependency_ids(deps: Sequence[Dependency]) -> None:
    for i, d in enumerate(deps):
        if d.job_id > INT64_MAX:
            raise ValidationError(
                f"--after {d.job_id}: job ids go up to {INT64_MAX}", path=f"after[{i}]"
            )


def check_stored_size(spec: StoredJobSpec, tasks: int) -> None:
    """Refuse a submission whose rows would hold more than MAX_SUBMISSION_STORED_BYTES:
    the body limit bounds one spec, not the spec repeated for every task of an array."""
    each = len(_encode(spec))
    if each * tasks > MAX_SUBMISSION_STORED_BYTES:
        limit_mib = MAX_SUBMISSION_STORED_BYTES >> 20
        raise PayloadTooLarge(
            f"this submission would store {each * tasks / (1 << 20):.1f} MiB "
            f"({tasks} task(s) x {each / 1024:.1f} KiB of spec); the limit is "
            f"{limit_mib} MiB per submission: submit a smaller array or a smaller env",
            details={
                "limit_bytes": MAX_SUBMISSION_STORED_BYTES,
                "stored_bytes": each * tasks,
                "tasks": tasks,
            },
        )


# ---------------------------------------------------------------- the column's two ends
def encode_spec(spec: StoredJobSpec) -> dict[str, Any]:
    """What the JSON column stores (the tag included, defaults left out)."""
    out: dict[str, Any] = msgspec.to_builtins(spec)
    return out


def decode_spec(raw: Mapping[str, Any]) -> StoredJobSpec:
    """A stored spec of any form this mlsm has written, decoded once per row load."""
    if "v" in raw:
        return msgspec.convert(raw, StoredJobSpec)
    return _from_v1(raw)


def _from_v1(raw: Mapping[str, Any]) -> StoredJobSpec:
    """mlsm 0.1's untagged dict: the same field names, with ``--after`` and ``--mount`` as
    typed text, and JobSubmit's fields kept in columns (name, gpus, ...) ignored."""
    fields = dict(raw)
    fields["v"] = SPEC_VERSION
    fields["after"] = [parse_dependency(a) for a in raw.get("after") or ()]
    fields["mounts"] = [parse_mount(m) for m in raw.get("mounts") or ()]
    return msgspec.convert(fields, StoredJobSpec)


__all__ = [
    "MAX_ARRAY_TASKS",
    "MAX_SUBMISSION_STORED_BYTES",
    "SPEC_VERSION",
    "Dependency",
    "StoredJobSpec",
    "Submission",
    "SubmitPolicy",
    "build_submission",
    "check_stored_size",
    "decode_spec",
    "encode_spec",
    "parse_array",
    "parse_dependency",
    "parse_mount",
]
