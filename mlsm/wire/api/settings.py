"""JSON API structs for the lab's settings (admins)."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from mlsm.wire.api.base import UserName
from mlsm.wire.api.jobs import DEFAULT_PRIORITY
from mlsm.wire.ints import Count

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
