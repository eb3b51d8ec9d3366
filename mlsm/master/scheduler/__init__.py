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

The pass lives in modules by responsibility: :mod:`.model` (inputs, outputs, usage),
:mod:`.nodes` (free capacity and the buckets), :mod:`.candidates` (filters, dependencies),
:mod:`.backfill` (holds and reservations), :mod:`.preemption`, :mod:`.placement` (one
job's turn); the order of turns is :func:`schedule` below.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from operator import attrgetter

from mlsm.master.scheduler.candidates import dep_verdict
from mlsm.master.scheduler.model import (
    CPU_JOB_CHARGE,
    DEFAULT_RUNTIMES,
    PASS_CHARGE_GPU_HOURS,
    GpuSlot,
    Hold,
    NodeCap,
    PendingJob,
    Placement,
    Running,
    SchedContext,
    SchedResult,
    add_usage,
    decay_usage,
)
from mlsm.master.scheduler.placement import Pass

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


#: A user's queue runs oldest first (then by id).
_AGE = attrgetter("submitted_at", "id")


def schedule(
    jobs: Iterable[PendingJob], nodes: Iterable[NodeCap], ctx: SchedContext | None = None
) -> SchedResult:
    """Place what can run now; say why everything else waits (see the module docstring)."""
    ctx = ctx or SchedContext()
    out = SchedResult()
    state = Pass(nodes, ctx)
    queues: dict[tuple[bool, int], dict[str, list[PendingJob]]] = {}
    for job in jobs:
        if job.deps:
            verdict = dep_verdict(job, ctx.dep_states)
            if verdict is not None:
                (out.never if verdict[0] else out.reasons)[job.id] = verdict[1]
                continue
        # Preemptible jobs come after every other job: they take what would idle.
        key = (not job.preemptible, job.priority)
        queues.setdefault(key, {}).setdefault(job.user, []).append(job)

    effective: dict[str, float] = {}
    place = state.place
    for prio in sorted(queues, reverse=True):
        users = queues[prio]
        heap: list[tuple[float, float, int, str, int]] = []
        for user, mine in users.items():
            mine.sort(key=_AGE)
            u = effective.setdefault(user, ctx.usage.get(user, 0.0))
            heap.append((u, mine[0].submitted_at, mine[0].id, user, 0))
        heapq.heapify(heap)
        while heap:
            u, _, _, user, i = heap[0]
            mine = users[user]
            end = len(mine)
            # The user whose turn it is keeps it while their next job still comes before
            # every other user's next one (a job that waits changes no one's usage).
            if len(heap) > 1:
                ou, osub, oid = min(heap[1:3])[:3]
            else:
                ou, osub, oid = math.inf, 0.0, 0
            while True:
                job = mine[i]
                if place(job, out):
                    u += job.gpus * PASS_CHARGE_GPU_HOURS if job.gpus else CPU_JOB_CHARGE
                    effective[user] = u
                i += 1
                if i == end:
                    heapq.heappop(heap)
                    break
                nxt = mine[i]
                if u < ou or (
                    u == ou
                    and (nxt.submitted_at < osub or (nxt.submitted_at == osub and nxt.id < oid))
                ):
                    continue
                heapq.heapreplace(heap, (u, nxt.submitted_at, nxt.id, user, i))
                break
    return out
