"""What a node says about itself: its static facts (:class:`NodeInfo`), its disk as mlsm
uses it (:class:`NodeDisk`) and its telemetry (:class:`HostSample`, :class:`GpuSample`).

The agent sends these in MessagePack (:mod:`mlsm.wire.agent`, which re-exports them, as
:mod:`mlsm.wire.outputs` re-exports :class:`NodeDisk`); the JSON API shows them to people
(:mod:`mlsm.wire.api`). They live in a module of their own so that the people's API, and
with it every CLI call, does not import the agent protocol (its commands, the outputs and
bulk messages and what those import). Evolution rules as in :mod:`mlsm.wire.agent`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from mlsm.wire.ints import Count, Int64

# Bounds applied at decode time, so a hostile body fails validation, not the master.
ShortStr = Annotated[str, Meta(max_length=256)]
LongStr = Annotated[str, Meta(max_length=4096)]
NonNeg = Count  # within 64 bits, like every integer here (mlsm.wire.ints)
Pct = Annotated[float, Meta(ge=0, le=100)]

AccountName = Annotated[str, Meta(min_length=1, max_length=64)]
MAX_NODE_ACCOUNTS = 20_000  # a node's regular Unix accounts listed in its info


class NodeDisk(Struct, kw_only=True, omit_defaults=True):
    """What mlsm keeps on a node's disk, measured by its agent now and then."""

    data_dir: LongStr = ""  # the agent's data dir: jobs/<id>/ is a job's output directory
    jobs_bytes: Count = 0  # every job directory (outputs and logs)
    jobs_count: Count = 0
    projects_bytes: Count = 0
    code_cache_bytes: Count = 0
    fs_total: Count = 0  # the filesystem that holds the data dir
    fs_free: Count = 0  # bytes available to the agent there
    measured_at: float = 0.0  # unix seconds


# ---------------------------------------------------------------- static node facts
class NodeInfo(Struct, kw_only=True, omit_defaults=True):
    """What a node is; sent at register and again when it changes."""

    hostname: ShortStr = ""
    os: ShortStr = ""  # e.g. "Debian GNU/Linux 12"
    kernel: ShortStr = ""  # e.g. "6.1.0-18-amd64"
    arch: ShortStr = ""
    cpu_model: ShortStr = ""
    cpu_cores: NonNeg = 0  # logical CPUs
    cpu_physical: NonNeg = 0
    mem_total: NonNeg = 0  # bytes
    agent_version: ShortStr = ""
    python: ShortStr = ""
    gpu_probe: Literal["nvml", "simulated", "none"] = "none"
    driver_version: ShortStr = ""
    cuda_version: ShortStr = ""
    dataset_roots: list[LongStr] = []
    # Directories an admin may import datasets from (to other nodes): the agent serves
    # ``path`` trees only below these (agent.bulk.sources.path_resolver).
    import_roots: Annotated[list[LongStr], Meta(max_length=64)] = []
    # The direct path (mlsm.wire.bulk): the agent's own certificate (PEM; the master pins
    # it for peers) and the addresses a peer may reach it at.
    bulk_cert: Annotated[str, Meta(max_length=16384)] = ""
    bulk_addresses: Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(max_length=64)] = []
    runtimes: list[ShortStr] = msgspec.field(default_factory=lambda: ["process"])
    docker_available: bool = False
    docker_error: LongStr = ""
    runs_as_root: bool = False
    # Who jobs run as here (see agent/runtimes/accounts.py). ``job_account`` set: every job
    # runs as that one account (an agent that is not root, or --single-user). Otherwise each
    # user's own: mapped, else a same-named regular account (``unix_users``), else
    # ``default_unix_user`` when the node has one; else the job waits on the master.
    job_account: ShortStr = ""
    default_unix_user: ShortStr = ""
    unix_users: Annotated[list[AccountName], Meta(max_length=MAX_NODE_ACCOUNTS)] = []
    # What mlsm keeps on this node's disk (job directories, projects, code cache) and the
    # agent's data dir (a job's output directory is <data_dir>/jobs/<id>/).
    disk: NodeDisk | None = None


# ---------------------------------------------------------------- telemetry
class DiskUsage(Struct, kw_only=True, omit_defaults=True):
    path: LongStr
    total: NonNeg = 0
    used: NonNeg = 0
    free: NonNeg = 0
    role: Literal["data", "dataset_root", "other"] = "other"


class HostSample(Struct, kw_only=True, omit_defaults=True):
    ts: float = 0.0  # unix seconds when sampled
    cpu_percent: Pct = 0.0
    load1: float = 0.0
    load5: float = 0.0
    load15: float = 0.0
    mem_total: NonNeg = 0
    mem_used: NonNeg = 0
    mem_available: NonNeg = 0
    swap_total: NonNeg = 0
    swap_used: NonNeg = 0
    disks: list[DiskUsage] = []
    net_rx_bps: float = 0.0
    net_tx_bps: float = 0.0
    uptime_s: float = 0.0


class GpuProcess(Struct, kw_only=True, omit_defaults=True):
    pid: NonNeg
    used_mem: NonNeg = 0  # bytes
    user: ShortStr = ""  # Unix user owning the process ("" when unknown)
    name: ShortStr = ""  # process name
    job_id: Int64 | None = None  # filled by the agent when the pid belongs to an mlsm job


class GpuSample(Struct, kw_only=True, omit_defaults=True):
    index: NonNeg
    uuid: ShortStr = ""
    name: ShortStr = ""
    bus_id: ShortStr = ""
    mem_total: NonNeg = 0  # bytes
    mem_used: NonNeg = 0  # bytes
    util: Pct = 0.0  # SM utilisation %
    mem_util: Pct = 0.0  # memory controller utilisation %
    temperature: float = 0.0  # Celsius
    power_w: float = 0.0
    power_limit_w: float = 0.0
    ecc_errors: Int64 | None = None  # volatile uncorrected, None where not supported
    processes: list[GpuProcess] = []
    error: LongStr | None = None  # set when this GPU could not be read this time
    simulated: bool = False
