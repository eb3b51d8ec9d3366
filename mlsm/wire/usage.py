"""JSON API structs of usage reports (``/api/v1/usage``) and GPU reservations
(``/api/v1/reservations``), shared by the master, the CLI and the dashboard.

Kept apart from :mod:`mlsm.wire.api` because they are one feature's contract; the same
rules hold: request structs carry their bounds, every field added later gets a default.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from mlsm.wire.api import NodeName, ShortStr, UserName

UsageBy = Literal["user", "node", "label", "gpu-model"]
USAGE_BY: tuple[UsageBy, ...] = ("user", "node", "label", "gpu-model")
ReservationState = Literal["future", "active", "ended", "cancelled"]

#: Latest time a request may name (unix seconds, year 2200): bounds arithmetic on it.
MAX_TIME = 7_258_118_400.0
#: Longest reservation anyone may make (admins included): a year.
MAX_RESERVATION_S = 365 * 86400.0
#: Longest usage window one report covers.
MAX_USAGE_WINDOW_S = 3 * 365 * 86400.0
Time = Annotated[float, Meta(ge=0, le=MAX_TIME)]


# ---------------------------------------------------------------- usage
class UsageRow(Struct, kw_only=True):
    """One group's figures over the window (a running job counts up to now)."""

    key: str  # the user, node, "label=value" or GPU model
    gpu_hours: float = 0.0  # allocated GPU-hours
    util_gpu_hours: float = 0.0  # GPU-hours weighted by the GPUs' measured utilisation
    jobs: int = 0  # jobs that ran in the window
    wait_median_s: float | None = None  # of the attempts that started in the window
    wait_p90_s: float | None = None
    energy_kwh: float = 0.0  # of the jobs' GPUs while they ran (power samples)


class UsageReport(Struct, kw_only=True):
    by: UsageBy
    since: float
    until: float
    rows: list[UsageRow] = []
    total: UsageRow = msgspec.field(default_factory=lambda: UsageRow(key="total"))
    #: Whose jobs it covers: "" = everyone's; a member sees only their own.
    user: str = ""


class UsageTimeline(Struct, kw_only=True):
    """Lab-wide series over the window, one value per step (``ts`` is each step's start)."""

    since: float
    until: float
    step_s: float
    ts: list[float] = []
    util_total: list[float | None] = []  # mean GPU utilisation of all nodes, %
    util_by_node: dict[str, list[float | None]] = {}
    queue_length: list[int] = []  # jobs waiting at the step's start
    wait_median_s: list[float | None] = []  # median wait of the attempts started in the step


# ---------------------------------------------------------------- reservations
class ReservationCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    gpus: Annotated[int, Meta(ge=1, le=64)]
    duration_s: Annotated[float, Meta(gt=0, le=MAX_RESERVATION_S)]
    start: Time | None = None  # None = now
    node: NodeName | None = None  # None = the master picks one
    user: UserName | None = None  # admins: for someone else
    maintenance: bool = False  # admins: the GPUs run nobody's jobs
    note: ShortStr = ""


class Reservation(Struct, kw_only=True):
    id: int
    user: str  # "" for maintenance
    node: str
    gpu_indices: list[int]
    start: float
    end: float
    state: ReservationState
    created_by: str
    created_at: float
    note: str = ""
    maintenance: bool = False
    cancelled_at: float | None = None
    #: While it is on: its GPUs that someone else uses (jobs of other users, or processes
    #: mlsm did not start), flagged "used without reservation".
    unreserved_gpus: list[int] = []
    unreserved_jobs: list[int] = []
