"""The scheduler's inputs and outputs (plain frozen records the loop builds and reads) and
the fair-share usage arithmetic; see :mod:`mlsm.master.scheduler` for the rules."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

#: Fair-share charge (GPU-hours) per GPU placed within one pass.
PASS_CHARGE_GPU_HOURS = 1.0
#: Fair-share charge for a job without GPUs, so CPU-only floods alternate too.
CPU_JOB_CHARGE = 0.01
DEFAULT_RUNTIMES: frozenset[str] = frozenset({"process", "venv", "conda"})


@dataclass(slots=True, frozen=True)
class GpuSlot:
    index: int
    mem_total_bytes: int
    #: False when it is busy by the one GPU rule (:mod:`mlsm.master.gpustate`).
    free: bool = True


@dataclass(slots=True, frozen=True)
class NodeCap:
    name: str
    schedulable: bool = True  # online and not draining
    gpus: Sequence[GpuSlot] = ()
    cpus_free: float = math.inf
    mem_free_bytes: int = sys.maxsize
    labels: Mapping[str, str] = field(default_factory=dict)
    datasets: frozenset[str] = frozenset()
    runtimes: frozenset[str] = DEFAULT_RUNTIMES
    #: Why it is not schedulable, as it reads after "node gpu3 is": "offline", "draining".
    reason_unschedulable: str = ""
    #: Unix accounts a user's job may run as by name; None = any user's job can run here.
    accounts: frozenset[str] | None = None
    #: Its agent runs jobs in shipped code and projects (protocol >= mlsm.CODE_SINCE).
    code: bool = True
    #: Projects (``user/name``) whose tree is ready on this node.
    projects: frozenset[str] = frozenset()


@dataclass(slots=True, frozen=True)
class PendingJob:
    id: int
    user: str
    priority: int = 0
    submitted_at: float = 0.0
    gpus: int = 0
    gpu_mem_bytes: int = 0  # per GPU; 0 = any
    cpus: float = 0.0  # 0 = not requested
    mem_bytes: int = 0  # 0 = not requested
    node: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    datasets: tuple[str, ...] = ()
    env_kind: str = "process"
    deps: tuple[tuple[int, str], ...] = ()  # (job id, "ok" | "any")
    array_parent: int | None = None
    array_throttle: int = 0  # 0 = no throttle
    code: bool = False  # runs in shipped code or a project: needs an agent that can
    project: str = ""  # ``user/name``: runs where that project's tree is
    time_limit_s: float = 0.0  # 0 = none (never ends, as far as backfill can tell)
    preemptible: bool = False


@dataclass(slots=True, frozen=True)
class Running:
    """A placed job that holds GPUs now (assigned or running)."""

    job_id: int
    node: str
    gpus: tuple[int, ...]
    ends_at: float = math.inf  # by its time limit
    preemptible: bool = False
    started_at: float = 0.0
    stopping: bool = False  # already asked to stop for a preemption


@dataclass(slots=True, frozen=True)
class Hold:
    """GPUs of a node set aside from ``start`` to ``end``: a reservation for ``user``, or
    maintenance (``user`` None: for nobody)."""

    node: str
    gpus: tuple[int, ...]
    start: float
    end: float
    user: str | None
    what: str = ""  # how a reason names it: "alice's reservation 3"


@dataclass(slots=True, frozen=True)
class SchedContext:
    #: State of every job named in a dependency; a missing id is an unknown job.
    dep_states: Mapping[int, str] = field(default_factory=dict)
    #: Array parent id -> tasks now assigned or running.
    running_array: Mapping[int, int] = field(default_factory=dict)
    user_gpus_in_use: Mapping[str, int] = field(default_factory=dict)
    user_caps: Mapping[str, int] = field(default_factory=dict)  # no entry = no cap
    usage: Mapping[str, float] = field(default_factory=dict)  # decayed recent GPU-hours
    #: Users mapped to a Unix account, and admins (who may fall back to the agent's own
    #: account): their jobs need no same-named account on the node.
    mapped_users: frozenset[str] = frozenset()
    now: float = 0.0
    running: Sequence[Running] = ()
    holds: Sequence[Hold] = ()


@dataclass(slots=True, frozen=True)
class Placement:
    job_id: int
    node: str
    gpu_indices: tuple[int, ...]


@dataclass(slots=True)
class SchedResult:
    placements: list[Placement] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)  # why each unplaced job waits
    never: dict[int, str] = field(default_factory=dict)  # jobs to cancel, with the reason
    #: Queued job -> when the GPUs reserved for it are expected to be free.
    expected_start: dict[int, float] = field(default_factory=dict)
    #: Preemptible job to stop -> the job that needs its GPUs.
    preempt: dict[int, int] = field(default_factory=dict)


# ---------------------------------------------------------------- usage accounting
def decay_usage(prev: float, elapsed_s: float, half_life_s: float) -> float:
    """Usage left after ``elapsed_s`` with exponential decay; ``half_life_s <= 0`` forgets all."""
    if half_life_s <= 0:
        return 0.0
    if elapsed_s <= 0:
        return prev
    return prev * math.pow(0.5, elapsed_s / half_life_s)


def add_usage(prev: float, gpus: int, elapsed_s: float) -> float:
    """Add ``gpus`` GPUs held for ``elapsed_s`` seconds, in GPU-hours.

    Per tick the service does ``u = add_usage(decay_usage(u, dt, half_life), gpus_held, dt)``.
    """
    return prev + max(gpus, 0) * max(elapsed_s, 0.0) / 3600.0
