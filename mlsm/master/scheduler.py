"""Job placement: a pure function from the queue and the nodes' free capacity to placements.

The scheduling loop (:mod:`mlsm.master.services.jobs.scheduling`) builds the inputs from
the job table and live node state, calls
:func:`schedule` once per pass and applies the result: assign ``placements``, store each
waiting job's ``reasons`` entry, cancel the jobs in ``never`` with the reason given. Nothing
here touches the database or the network, so a pass is cheap to test and to time.

Rules as implemented
--------------------
* **Dependencies** first. ``(dep, "ok")`` is met when the dependency succeeded, ``"any"``
  when it reached any final state. A dependency that ended otherwise than ``ok`` accepts,
  or that names an unknown job, puts the job in ``never``. Otherwise it waits with
  ``"waiting for job 17"``.
* **Order.** Priority, higher first. Within one priority the next job comes from the user
  with the lowest *effective usage*, and each user's jobs go oldest first (``submitted_at``,
  then id). Effective usage starts at ``ctx.usage[user]`` (decayed recent GPU-hours) and
  grows within the pass by :data:`PASS_CHARGE_GPU_HOURS` for each GPU placed
  (:data:`CPU_JOB_CHARGE` for a job without GPUs). So two users with equal usage who flood
  the queue alternate. A tie on usage goes to the user whose next job is older.
* **Limits.** No more than ``array_throttle`` tasks of one array run at once (placements
  in this pass count), and no user goes over ``ctx.user_caps[user]`` GPUs (no entry means
  no cap).
* **Node filters.** The node the job names, every label, every dataset (servers do not
  share storage), the runtime (``env_kind`` must be in the node's ``runtimes``), and a
  Unix account: a job whose user has no mapping (``ctx.mapped_users``) goes only where an
  account of the user's name exists, unless the node takes anyone's jobs
  (``NodeCap.accounts`` is None: one shared account, or a default account for the rest).
  Only schedulable nodes (online and not draining) get jobs. A job that runs in a
  project goes where that project's tree is (``NodeCap.projects``); one that runs in
  shipped code or a project only to nodes whose agent can set that up (``NodeCap.code``).
* **Fit.** Whole GPUs, each with ``mem_total_bytes >= gpu_mem_bytes``, all on one node.
  CPUs and memory are checked and reserved only when the job asks for them (> 0).
* **Best fit.** The job goes to the node with the fewest free GPUs that suit it, so
  whole servers stay free for big jobs. Jobs without GPUs go to the nodes with the fewest
  free GPUs too. For equal counts the pick is stable but not meaningful: nodes are kept in
  buckets by free count, in input order at the start of the pass, and a node whose count
  changes joins the end of its new bucket. (When a job's filters leave 16 nodes or fewer,
  ties go to fewer free GPUs of any size, then input order.) On the node, the job gets the
  first ``gpus`` indices of the shortest run of consecutive suitable free GPUs that is long
  enough; when no run is, the lowest suitable indices.
* **Time limits.** A job's ``time_limit_s`` (its ``--timeout``, or the lab's default
  limit; 0: none) says when it ends at the latest; a running job's ``ends_at`` likewise
  (``inf``: never, as far as the scheduler can tell).
* **Holds** (``ctx.holds``): GPUs of a node set aside from ``start`` to ``end`` for one
  user (a reservation) or for nobody (maintenance). While a hold is on, its GPUs take only
  its user's jobs; before it starts, other jobs take them only if they end (by their time
  limit) before it starts.
* **Backfill with a reservation** (as Slurm's backfill). The first job in the order above
  that fails for want of free GPUs (not for a cap, throttle or filter), is not
  preemptible and preempts nothing, gets a reservation: on the candidate node where enough suitable GPUs free
  up soonest (free now, or held by jobs whose time limits end, placements of this pass
  included), those GPUs are kept for it from that time (``expected_start``) for its time
  limit. Later jobs use them only if they end before that time, or are preemptible; they
  use the node's other GPUs freely. GPUs of a job past its time limit (being stopped) count
  as freeing a moment from now, so its reservation holds while it stops. When no time is known (the GPUs are held by jobs
  without a time limit, or the job waits for CPUs or memory, not GPUs), nothing is
  reserved and the next such job is tried (at most :data:`_MAX_RESERVE_TRIES` a pass).
  The reservation is recomputed each pass, so it follows jobs that end early.
* **Preemption.** Preemptible jobs are placed after every other job (they take what would
  idle). A job that is not preemptible and fails for want of GPUs stops preemptible jobs
  (``preempt``: victim -> the job) on the candidate node where that frees enough suitable
  GPUs while stopping the fewest GPUs (jobs already stopping cost nothing, then the most
  recently started go first); those GPUs, and the free ones it needs there, are kept for
  it, and it starts in a later pass once they are free. Preemptible jobs never preempt,
  and nothing is preempted on a node with a hold or reservation (its GPUs are spoken for).

Every unplaced job gets one reason, the most specific one found, in plain words.
Speed: capacity only shrinks during a pass, so a request that found no node is remembered
and the same request with the same filters later fails without a search; per GPU-memory
class, nodes sit in buckets by free GPU count, so finding the best fit does not scan
every node. Nodes with a hold or reservation leave the buckets and are scanned for each
job with what that job may use there; they are few, and their failures are remembered
per request and per answer to "may it use each hold".

Over 400 lines, as one piece: it is one algorithm whose rules are written above and whose
pass state (:class:`_Pass`) they all share; split, the rules would no longer read together.
"""

from __future__ import annotations

import heapq
import math
import sys
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mlsm.policy import no_account_reason
from mlsm.wire.api import FINAL_STATES

__all__ = [
    "CPU_JOB_CHARGE",
    "DEFAULT_RUNTIMES",
    "PASS_CHARGE_GPU_HOURS",
    "GpuSlot",
    "Hold",
    "NodeCap",
    "PendingJob",
    "Placement",
    "Running",
    "SchedContext",
    "SchedResult",
    "add_usage",
    "decay_usage",
    "schedule",
]

#: Fair-share charge (GPU-hours) per GPU placed within one pass.
PASS_CHARGE_GPU_HOURS = 1.0
#: Fair-share charge for a job without GPUs, so CPU-only floods alternate too.
CPU_JOB_CHARGE = 0.01
DEFAULT_RUNTIMES: frozenset[str] = frozenset({"process", "venv", "conda"})
_NO_CODE_HERE = "runs an agent too old for shipped code (upgrade mlsm on it)"
_NO_CODE = "no online node runs an agent that can run shipped code (upgrade mlsm on the nodes)"
#: Jobs tried per pass for a backfill reservation (the first that gets one keeps it).
_MAX_RESERVE_TRIES = 8
#: A running job past its time limit is being stopped: its GPUs count as freeing this long
#: from now (not "at a time already past", which would make no reservation and let a long
#: job backfill onto GPUs that free up any moment).
_OVERDUE_S = 1.0
#: With this many candidate nodes or fewer, a job's nodes are scanned instead of bucketed.
_SMALL_CANDIDATE_SET = 16
_ENDED = {"failed": "failed", "cancelled": "was cancelled", "interrupted": "was interrupted"}


# ---------------------------------------------------------------- inputs and outputs
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


# ---------------------------------------------------------------- pass state
class _Block:
    """GPUs of one node kept from ``start`` to ``end``: a hold (for ``user``, or for nobody),
    a backfill reservation or a preemption's claim (for job ``job``)."""

    __slots__ = ("end", "gpus", "job", "soft", "start", "user", "what")

    def __init__(
        self,
        gpus: frozenset[int],
        start: float,
        end: float,
        *,
        user: str | None = None,
        job: int | None = None,
        soft: bool = False,
        what: str = "",
    ) -> None:
        self.gpus = gpus
        self.start = start
        self.end = end
        self.user = user
        self.job = job
        self.soft = soft  # preemptible jobs may use its GPUs (they are stopped for it)
        self.what = what

    def owned_by(self, job: PendingJob) -> bool:
        return self.job == job.id or (self.user is not None and self.user == job.user)

    def allows(self, job: PendingJob, now: float) -> bool:
        """May ``job``, placed now, use these GPUs?"""
        if self.owned_by(job) or (self.soft and job.preemptible):
            return True
        return job.time_limit_s > 0 and now + job.time_limit_s <= self.start


class _Node:
    __slots__ = (
        "blocks",
        "cap",
        "counts",
        "cpus",
        "forbidden",
        "free",
        "mem",
        "mems",
        "name",
        "pos",
        "restricted",
        "totals",
    )

    def __init__(self, cap: NodeCap, pos: int, thresholds: list[int]) -> None:
        self.blocks: list[_Block] = []
        self.forbidden: dict[tuple[object, ...], set[int]] = {}  # see _Pass._forbidden
        self.restricted = False  # has blocks: out of the buckets, scanned per job
        self.mems = {g.index: g.mem_total_bytes for g in cap.gpus}
        self.cap = cap
        self.name = cap.name
        self.pos = pos
        self.cpus = cap.cpus_free
        self.mem = cap.mem_free_bytes
        self.free = sorted((g.index, g.mem_total_bytes) for g in cap.gpus if g.free)
        mems = [g.mem_total_bytes for g in cap.gpus]
        self.totals = [sum(1 for m in mems if m >= t) for t in thresholds]
        self.counts = [sum(1 for _, m in self.free if m >= t) for t in thresholds]


class _Cand:
    """The nodes one set of job filters allows, or why there are none."""

    __slots__ = ("_most", "members", "nodes", "reason", "single", "where")

    def __init__(self, nodes: list[_Node], where: str, reason: str = "") -> None:
        self.nodes = nodes
        self.where = where  # "online node that holds dataset x", or "node gpu3"
        self.reason = reason
        self.single = where.startswith("node ")
        self.members: set[int] | None = None  # None = every schedulable node
        self._most: dict[int, int] = {}

    def most(self, ti: int) -> int:
        """The most GPUs of memory class ``ti`` any of the nodes has, busy or not (sizes
        do not change during a pass, so it is counted once per class)."""
        got = self._most.get(ti)
        if got is None:
            got = self._most[ti] = max((n.totals[ti] for n in self.nodes), default=0)
        return got

    def no(self, thing: str) -> str:
        return (
            f"{self.where} does not have {thing}" if self.single else f"no {self.where} has {thing}"
        )


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.3g} GiB"


def _gpus(n: int) -> str:
    return "1 GPU" if n == 1 else f"{n} GPUs"


def _dep_verdict(job: PendingJob, states: Mapping[int, str]) -> tuple[bool, str] | None:
    """None when every dependency is met, else (never, reason)."""
    waiting: list[int] = []
    for dep, mode in job.deps:
        state = states.get(dep)
        if state is None:
            return True, f"dependency {dep} does not exist"
        if state not in FINAL_STATES:
            waiting.append(dep)
        elif state != "succeeded" and mode != "any":
            return True, f"dependency {dep} {_ENDED.get(state, 'ended ' + state)}"
    if not waiting:
        return None
    more = f" (and {len(waiting) - 1} more)" if len(waiting) > 1 else ""
    return False, f"waiting for job {waiting[0]}{more}"


class _Pass:
    def __init__(self, nodes: Iterable[NodeCap], ctx: SchedContext) -> None:
        self.ctx = ctx
        self.caps = {c.name: c for c in nodes}
        online = [c for c in self.caps.values() if c.schedulable]
        self.thresholds = sorted({0} | {g.mem_total_bytes for c in online for g in c.gpus})
        self.nodes = [_Node(c, i, self.thresholds) for i, c in enumerate(online)]
        self.by_name = {n.name: n for n in self.nodes}
        width = max((len(c.gpus) for c in online), default=0) + 1
        # buckets[ti][k]: nodes with exactly k free GPUs of >= thresholds[ti] bytes
        self.buckets: list[list[dict[_Node, None]]] = []
        for ti in range(len(self.thresholds)):
            row: list[dict[_Node, None]] = [{} for _ in range(width)]
            for n in self.nodes:
                row[n.counts[ti]][n] = None
            self.buckets.append(row)
        self.top = [width - 1] * len(self.thresholds)
        self.cands: dict[object, _Cand] = {}
        self.failed: dict[tuple[object, ...], str] = {}
        self.user_placed: dict[str, int] = {}
        self.array_placed: dict[int, int] = {}
        # Whether any online node runs only users' own accounts (else skip the account test).
        self.restricted = any(n.cap.accounts is not None for n in self.nodes)
        # Backfill: when each busy GPU frees up (node -> index -> time), the running
        # preemptible jobs by node, the blocks of every node, the restricted nodes.
        now = ctx.now
        self.release: dict[str, dict[int, float]] = {}
        self.preemptible_on: dict[str, list[Running]] = {}
        for r in ctx.running:
            per = self.release.setdefault(r.node, {})
            t = now if r.preemptible else max(r.ends_at, now + _OVERDUE_S)
            for i in r.gpus:
                per[i] = max(per.get(i, t), t)
            if r.preemptible and r.node in self.by_name:
                self.preemptible_on.setdefault(r.node, []).append(r)
        # Cheapest victims first: those already stopping, then the most recently started.
        self.preemptible_gpus: dict[str, int] = {}
        for name, runs in self.preemptible_on.items():
            runs.sort(key=lambda r: (not r.stopping, -r.started_at))
            self.preemptible_gpus[name] = len({i for r in runs for i in r.gpus})
        self.blocks: list[_Block] = []
        self.restricted_nodes: list[_Node] = []
        self.rfailed: set[tuple[object, ...]] = set()
        self.pfailed: set[object] = set()
        self.block_jobs: set[int] = set()  # jobs that own a block (a backfill reservation)
        self.block_users: set[str] = set()  # users that own a block (a reservation)
        self.victims: set[int] = set()
        self.reserved = False  # a reservation is made, or no more tries this pass
        self.reserve_tries = 0
        for h in ctx.holds:
            held = self.by_name.get(h.node)
            if held is not None and h.end > now and h.gpus:
                self._block(
                    held, _Block(frozenset(h.gpus), h.start, h.end, user=h.user, what=h.what)
                )

    def _block(self, n: _Node, b: _Block) -> None:
        """Keep ``b``'s GPUs on ``n``; the node leaves the buckets for the per-job scan."""
        n.blocks.append(b)
        n.forbidden.clear()
        self.blocks.append(b)
        if b.job is not None:
            self.block_jobs.add(b.job)
        if b.user is not None:
            self.block_users.add(b.user)

        if not n.restricted:
            n.restricted = True
            for ti, row in enumerate(self.buckets):
                del row[n.counts[ti]][n]
            self.restricted_nodes.append(n)

    def _forbidden(self, n: _Node, job: PendingJob) -> set[int]:
        """GPUs of ``n`` that blocks keep from ``job`` now. A user's jobs may always use
        the GPUs of that user's reservation while it is on, a backfill reservation there
        notwithstanding. Remembered per node for what the answer depends on (whose job,
        which block's job, preemptible, time limit) until the node gets another block."""
        key = (
            job.user if job.user in self.block_users else "",
            job.id if job.id in self.block_jobs else None,
            job.preemptible,
            job.time_limit_s,
        )
        got = n.forbidden.get(key)
        if got is None:
            got = n.forbidden[key] = self._forbidden_now(n, job)
        return got

    def _forbidden_now(self, n: _Node, job: PendingJob) -> set[int]:
        now = self.ctx.now
        own: set[int] = set()
        for b in n.blocks:
            if b.user is not None and b.user == job.user and b.start <= now:
                own |= b.gpus
        bad: set[int] = set()
        for b in n.blocks:
            if not b.allows(job, now):
                bad |= b.gpus - own if b.soft else b.gpus
        return bad

    def _account(self, job: PendingJob) -> str | None:
        """The account name ``job`` needs on its node, or None when any node will do."""
        if job.user in self.ctx.mapped_users:
            return None
        return job.user

    # ---- candidates
    def _cand(self, job: PendingJob) -> _Cand:
        if job.node is not None:
            return self._named(job, job.node)
        if not self.nodes:
            return _Cand([], "", "no online nodes")
        # (what a node must do, the nodes that do it, the reason when none does)
        tests: list[tuple[str, list[_Node], str]] = []
        for d in sorted(set(job.datasets)):
            ok = [n for n in self.nodes if d in n.cap.datasets]
            tests.append((f"holds dataset {d}", ok, self._no_ds(d)))
        if job.project:
            ok = [n for n in self.nodes if job.project in n.cap.projects]
            tests.append((f"holds project {job.project}", ok, self._no_project(job.project)))
        if job.code:
            ok = [n for n in self.nodes if n.cap.code]
            if len(ok) < len(self.nodes):
                tests.append(("can run shipped code", ok, _NO_CODE))
        for k, v in sorted(job.labels.items()):
            ok = [n for n in self.nodes if n.cap.labels.get(k) == v]
            tests.append((f"is labelled {k}={v}", ok, f"no online node is labelled {k}={v}"))
        env = job.env_kind
        ok = [n for n in self.nodes if env in n.cap.runtimes]
        if len(ok) < len(self.nodes):  # a runtime every node has is not worth naming
            docker = " (Docker unavailable)" if env == "docker" else ""
            tests.append((f"can run {env} jobs", ok, f"no online node can run {env} jobs{docker}"))
        acct = self._account(job) if self.restricted else None
        if acct is not None:
            ok = [n for n in self.nodes if n.cap.accounts is None or acct in n.cap.accounts]
            if len(ok) < len(self.nodes):
                tests.append(
                    (
                        f"has a Unix account for {acct}",
                        ok,
                        no_account_reason(acct, "any online node"),
                    )
                )
        kept = self.nodes
        descs = []
        for desc, ok, alone in tests:
            if not ok:
                return _Cand([], "", alone)
            descs.append(desc)
            allowed = {n.pos for n in ok}
            kept = [n for n in kept if n.pos in allowed]
            if not kept:
                return _Cand([], "", "no online node " + " and ".join(descs))
        where = "online node" + (" that " + " and ".join(descs) if descs else "")
        cand = _Cand(kept, where)
        if len(kept) < len(self.nodes):
            cand.members = {n.pos for n in kept}
        return cand

    def _no_ds(self, d: str) -> str:
        elsewhere = sorted(
            c.name for c in self.caps.values() if not c.schedulable and d in c.datasets
        )
        if elsewhere:
            states = ", ".join(
                f"{n} ({self.caps[n].reason_unschedulable or 'unschedulable'})"
                for n in elsewhere[:3]
            )
            return f"dataset {d} is only on {states}"
        return f"no online node holds dataset {d}"

    def _no_project(self, project: str) -> str:
        elsewhere = sorted(
            c.name for c in self.caps.values() if not c.schedulable and project in c.projects
        )
        if elsewhere:
            states = ", ".join(
                f"{n} ({self.caps[n].reason_unschedulable or 'unschedulable'})"
                for n in elsewhere[:3]
            )
            return f"project {project} is only on {states}"
        return f"no online node holds project {project}"

    def _named(self, job: PendingJob, name: str) -> _Cand:
        cap = self.caps.get(name)
        where = f"node {name}"
        if cap is None:
            return _Cand([], where, f"no node named {name}")
        if not cap.schedulable:
            return _Cand([], where, f"{where} is {cap.reason_unschedulable or 'not schedulable'}")
        for k, v in sorted(job.labels.items()):
            if cap.labels.get(k) != v:
                return _Cand([], where, f"{where} is not labelled {k}={v}")
        for d in sorted(set(job.datasets)):
            if d not in cap.datasets:
                return _Cand([], where, f"{where} does not hold dataset {d}")
        if job.project and job.project not in cap.projects:
            return _Cand([], where, f"{where} does not hold project {job.project}")
        if job.code and not cap.code:
            return _Cand([], where, f"{where} {_NO_CODE_HERE}")
        if job.env_kind not in cap.runtimes:
            extra = " (Docker unavailable)" if job.env_kind == "docker" else ""
            return _Cand([], where, f"{where} cannot run {job.env_kind} jobs{extra}")
        acct = self._account(job)
        if cap.accounts is not None and acct is not None and acct not in cap.accounts:
            return _Cand([], where, no_account_reason(acct, where))
        cand = _Cand([self.by_name[name]], where)
        cand.members = {cand.nodes[0].pos}
        return cand

    # ---- search and allocation
    def _maxfree(self, ti: int) -> int:
        row, k = self.buckets[ti], self.top[ti]
        while k > 0 and not row[k]:
            k -= 1
        self.top[ti] = k
        return k

    def _pick(self, cand: _Cand, g: int, ti: int, cpus: float, mem: int) -> _Node | None:
        if cand.members is not None and len(cand.nodes) <= _SMALL_CANDIDATE_SET:
            best, best_key = None, None
            for n in cand.nodes:
                c = n.counts[ti]
                if n.restricted or c < g or (cpus and n.cpus < cpus) or (mem and n.mem < mem):
                    continue
                key = (c, n.counts[0], n.pos)
                if best_key is None or key < best_key:
                    best, best_key = n, key
            return best
        members = cand.members
        row = self.buckets[ti]
        for k in range(g, self._maxfree(ti) + 1):
            for n in row[k]:
                if members is not None and n.pos not in members:
                    continue
                if (cpus and n.cpus < cpus) or (mem and n.mem < mem):
                    continue
                return n
        return None

    def _pick_restricted(
        self, cand: _Cand, job: PendingJob, ti: int
    ) -> tuple[_Node, list[tuple[int, int]]] | None:
        """The restricted candidate node with the fewest GPUs this job may use that is
        still enough, and those GPUs."""
        g, need, members = job.gpus, job.gpu_mem_bytes, cand.members
        best: tuple[_Node, list[tuple[int, int]]] | None = None
        for n in self.restricted_nodes:
            if n.counts[ti] < g or (members is not None and n.pos not in members):
                continue  # blocks only take GPUs away: too few free suitable ones already
            if (job.cpus and n.cpus < job.cpus) or (job.mem_bytes and n.mem < job.mem_bytes):
                continue
            bad = self._forbidden(n, job)
            usable = [f for f in n.free if f[1] >= need and f[0] not in bad]
            if len(usable) >= g and (best is None or len(usable) < len(best[1])):
                best = (n, usable)
        return best

    def _take(
        self, n: _Node, job: PendingJob, usable: list[tuple[int, int]] | None = None
    ) -> tuple[int, ...]:
        if job.cpus:
            n.cpus -= job.cpus
        if job.mem_bytes:
            n.mem -= job.mem_bytes
        if not job.gpus:
            return ()
        chosen = _choose(n.free if usable is None else usable, job.gpus, job.gpu_mem_bytes)
        taken = set(chosen)
        mems = [m for i, m in n.free if i in taken]
        n.free = [(i, m) for i, m in n.free if i not in taken]
        for ti, t in enumerate(self.thresholds):
            lost = sum(1 for m in mems if m >= t)
            if lost:
                old = n.counts[ti]
                if not n.restricted:
                    row = self.buckets[ti]
                    del row[old][n]
                    row[old - lost][n] = None
                n.counts[ti] = old - lost
        now = self.ctx.now
        ends = now if job.preemptible else now + job.time_limit_s if job.time_limit_s else math.inf
        per = self.release.setdefault(n.name, {})
        for i in chosen:
            per[i] = ends
        return chosen

    def _why(self, cand: _Cand, job: PendingJob, ti: int) -> str:
        """The most specific reason no candidate node fits the job right now."""
        g, need = job.gpus, job.gpu_mem_bytes
        res = []
        if job.cpus:
            res.append(f"{job.cpus:g} CPUs")
        if job.mem_bytes:
            res.append(f"{_gib(job.mem_bytes)} memory")
        extra = " and ".join(res) + " free"
        if g == 0:
            return cand.no(extra) if res else f"no room on any {cand.where}"
        kind = f" with >= {_gib(need)}" if need else ""
        most = 0 if ti >= len(self.thresholds) else cand.most(ti)
        if most == 0:
            return cand.no(f"GPUs{kind}")
        if most < g:
            return cand.no(f"{_gpus(g)}{kind}")
        free = f"{g} free GPU{'s' if g > 1 else ''}{kind}"
        if not res or not any(n.counts[ti] >= g for n in cand.nodes):
            return cand.no(free)
        return cand.no(f"{free} plus {extra}")

    def place(self, job: PendingJob, out: SchedResult) -> bool:
        ctx = self.ctx
        g = job.gpus
        parent = job.array_parent
        if parent is not None and job.array_throttle > 0:
            if (
                ctx.running_array.get(parent, 0) + self.array_placed.get(parent, 0)
                >= job.array_throttle
            ):
                out.reasons[job.id] = f"array throttle {job.array_throttle} reached"
                return False
        if g > 0:
            cap = ctx.user_caps.get(job.user)
            if cap is not None:
                used = ctx.user_gpus_in_use.get(job.user, 0) + self.user_placed.get(job.user, 0)
                if used + g > cap:
                    out.reasons[job.id] = (
                        f"user GPU cap {cap} reached"
                        if g <= cap
                        else f"asks for {_gpus(g)}, more than the user GPU cap of {cap}"
                    )
                    return False
        acct = self._account(job) if self.restricted else None
        if (
            job.node is None
            and not job.labels
            and not job.datasets
            and acct is None
            and not job.code
        ):
            ckey: object = job.env_kind
        else:
            ckey = (
                job.node,
                tuple(sorted(job.labels.items())),
                tuple(sorted(set(job.datasets))),
                job.env_kind,
                acct,
                job.code,
                job.project,
            )
        cand = self.cands.get(ckey)
        if cand is None:
            cand = self.cands[ckey] = self._cand(job)
        if cand.reason:
            out.reasons[job.id] = cand.reason
            return False
        ti = bisect_left(self.thresholds, job.gpu_mem_bytes) if g else 0
        fkey = (ckey, g, ti, job.cpus, job.mem_bytes)
        why = self.failed.get(fkey)
        node: _Node | None = None
        usable: list[tuple[int, int]] | None = None
        if why is None:
            if ti < len(self.thresholds) and g <= self._maxfree(ti):
                node = self._pick(cand, g, ti, job.cpus, job.mem_bytes)
            if node is None:
                why = self.failed[fkey] = self._why(cand, job, ti)
        rkey: tuple[object, ...] | None = None
        if self.blocks and job.id not in self.block_jobs:
            # What a job may use of the blocks depends on these alone (and blocks added
            # later only take GPUs away), so a failure holds for every job alike.
            user = job.user if job.user in self.block_users else ""
            rkey = (fkey, job.preemptible, user, job.time_limit_s)
        # A restricted node wins only with fewer usable GPUs than the bucket pick has free:
        # none can when that pick fits exactly.
        exact = node is not None and node.counts[ti] <= g
        if self.restricted_nodes and ti < len(self.thresholds) and not exact:
            if rkey is None or rkey not in self.rfailed:
                hit = self._pick_restricted(cand, job, ti)
                if hit is None:
                    if rkey is not None:
                        self.rfailed.add(rkey)
                elif node is None or len(hit[1]) < node.counts[ti]:
                    node, usable = hit
        if node is not None:
            out.placements.append(Placement(job.id, node.name, self._take(node, job, usable)))
            if g:
                self.user_placed[job.user] = self.user_placed.get(job.user, 0) + g
            if parent is not None:
                self.array_placed[parent] = self.array_placed.get(parent, 0) + 1
            return True
        assert why is not None
        out.reasons[job.id] = self._held_why(cand, job, ti) or why
        if g and not job.preemptible and ti < len(self.thresholds):
            preempted = False
            if self.preemptible_on and fkey not in self.pfailed:
                preempted = self._preempt(job, cand, ti, out)
                if not preempted:
                    self.pfailed.add(fkey)
            if not preempted and not self.reserved:
                self._reserve(job, cand, ti, out)
        return False

    def _held_why(self, cand: _Cand, job: PendingJob, ti: int) -> str:
        """When free GPUs that would fit are kept by a hold or reservation: which."""
        if not self.restricted_nodes or ti >= len(self.thresholds):
            return ""
        members, now = cand.members, self.ctx.now
        for n in self.restricted_nodes:
            if (members is not None and n.pos not in members) or n.counts[ti] < job.gpus:
                continue
            for b in n.blocks:
                if not b.allows(job, now):
                    later = "" if b.start <= now else " (this job would not end before it starts)"
                    return f"the free GPUs on {n.name} are reserved for {b.what}{later}"
        return ""

    def _preempt(self, job: PendingJob, cand: _Cand, ti: int, out: SchedResult) -> bool:
        """Stop preemptible jobs so that ``job`` fits (see the module docstring)."""
        if not self.preemptible_on:
            return False
        g, need, members = job.gpus, job.gpu_mem_bytes, cand.members
        best: tuple[tuple[int, int], _Node, list[Running], set[int]] | None = None
        for name, runs in self.preemptible_on.items():
            n = self.by_name[name]
            if n.restricted or (members is not None and n.pos not in members):
                continue
            if n.counts[ti] + self.preemptible_gpus[name] < g:
                continue  # not even stopping all of them would do
            free = [i for i, m in n.free if m >= need]
            got: set[int] = set(free)
            chosen: list[Running] = []
            cost = 0
            for r in runs:
                if len(got) >= g:
                    break
                if r.job_id in self.victims:
                    continue
                mine = {i for i in r.gpus if n.mems.get(i, 0) >= need}
                if not mine - got:
                    continue
                chosen.append(r)
                got |= mine
                cost += 0 if r.stopping else len(r.gpus)
            if len(got) >= g and chosen and (best is None or (cost, n.pos) < best[0]):
                best = ((cost, n.pos), n, chosen, got)
        if best is None:
            return False
        _, n, chosen, got = best
        ids = []
        for r in chosen:
            out.preempt[r.job_id] = job.id
            self.victims.add(r.job_id)
            ids.append(r.job_id)
        self.preemptible_gpus[n.name] -= len({i for r in chosen for i in r.gpus})
        # The free GPUs it needs there are kept for it: taken out of this pass, as a
        # placement would take them (the victims' GPUs are busy until they stop).
        short = g - len(got - {i for i, _ in n.free})
        if short > 0:
            self._take(n, PendingJob(id=job.id, user=job.user, gpus=short, gpu_mem_bytes=need))
        names = ", ".join(str(i) for i in ids)
        out.reasons[job.id] = (
            f"preempting job{'s' if len(ids) > 1 else ''} {names} on {n.name} "
            "(starts once its GPUs are free)"
        )
        return True

    def _reserve(self, job: PendingJob, cand: _Cand, ti: int, out: SchedResult) -> None:
        """Backfill's reservation for ``job``: the GPUs that free up soonest (see above)."""
        g, need, now = job.gpus, job.gpu_mem_bytes, self.ctx.now
        self.reserve_tries += 1
        self.reserved = self.reserve_tries >= _MAX_RESERVE_TRIES
        best: tuple[float, int, _Node, list[int]] | None = None
        for n in cand.nodes:
            if n.totals[ti] < g:
                continue
            rel = self.release.get(n.name, {})
            free = {i for i, _ in n.free}
            until: dict[int, float] = {}
            for b in n.blocks:
                if not b.owned_by(job):
                    for i in b.gpus:
                        until[i] = max(until.get(i, b.end), b.end)
            times = []
            for i, m in n.mems.items():
                if m < need:
                    continue
                t = now if i in free else rel.get(i, math.inf)
                times.append((max(t, until.get(i, t)), i))
            if len(times) < g:
                continue
            times.sort()
            t = times[g - 1][0]
            if best is None or (t, n.pos) < (best[0], best[1]):
                best = (t, n.pos, n, [i for _, i in times[:g]])
        if best is None or not (now < best[0] < math.inf):
            return
        start, _, n, gpus = best
        end = start + job.time_limit_s if job.time_limit_s else math.inf
        self._block(
            n, _Block(frozenset(gpus), start, end, job=job.id, soft=True, what=f"job {job.id}")
        )
        out.expected_start[job.id] = start
        self.reserved = True


def _choose(free: list[tuple[int, int]], g: int, need: int) -> tuple[int, ...]:
    """Indices for ``g`` GPUs: the shortest long-enough run of consecutive ones, else lowest."""
    elig = [i for i, m in free if m >= need]
    best_start, best_len, start = -1, len(elig) + 1, 0
    for k in range(1, len(elig) + 1):
        if k == len(elig) or elig[k] != elig[k - 1] + 1:
            length = k - start
            if g <= length < best_len:
                best_start, best_len = start, length
            start = k
    if best_start < 0:
        return tuple(elig[:g])
    return tuple(elig[best_start : best_start + g])


def _age(job: PendingJob) -> tuple[float, int]:
    return (job.submitted_at, job.id)


# ---------------------------------------------------------------- the pass
def schedule(
    jobs: Iterable[PendingJob], nodes: Iterable[NodeCap], ctx: SchedContext | None = None
) -> SchedResult:
    """Place what can run now; say why everything else waits (see the module docstring)."""
    ctx = ctx or SchedContext()
    out = SchedResult()
    state = _Pass(nodes, ctx)
    queues: dict[tuple[bool, int], dict[str, list[PendingJob]]] = {}
    for job in jobs:
        if job.deps:
            verdict = _dep_verdict(job, ctx.dep_states)
            if verdict is not None:
                (out.never if verdict[0] else out.reasons)[job.id] = verdict[1]
                continue
        # Preemptible jobs come after every other job: they take what would idle.
        key = (not job.preemptible, job.priority)
        queues.setdefault(key, {}).setdefault(job.user, []).append(job)

    effective: dict[str, float] = {}
    for prio in sorted(queues, reverse=True):
        users = queues[prio]
        heap: list[tuple[float, float, int, str, int]] = []
        for user, mine in users.items():
            mine.sort(key=_age)
            u = effective.setdefault(user, ctx.usage.get(user, 0.0))
            heap.append((u, mine[0].submitted_at, mine[0].id, user, 0))
        heapq.heapify(heap)
        while heap:
            u, _, _, user, i = heap[0]
            mine = users[user]
            job = mine[i]
            if state.place(job, out):
                u += job.gpus * PASS_CHARGE_GPU_HOURS if job.gpus else CPU_JOB_CHARGE
                effective[user] = u
            i += 1
            if i < len(mine):
                nxt = mine[i]
                heapq.heapreplace(heap, (u, nxt.submitted_at, nxt.id, user, i))
            else:
                heapq.heappop(heap)
    return out
