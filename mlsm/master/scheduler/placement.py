"""One job's turn in a pass: its limits, its candidate nodes, the best fit (in the buckets
or on a restricted node), and when nothing fits, the reason, a preemption or a reservation.

Most of a large queue waits, and jobs of one kind wait for the same reason: a kind's
verdict is worked out once and reused while it cannot change (see ``Pass.place``)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from mlsm.master.scheduler.backfill import Backfill
from mlsm.master.scheduler.candidates import Cand, Candidates, gib, gpus_text
from mlsm.master.scheduler.model import NodeCap, PendingJob, Placement, SchedContext, SchedResult
from mlsm.master.scheduler.nodes import FreeIndex, Node
from mlsm.master.scheduler.preemption import Preemption


class Pass:
    def __init__(self, nodes: Iterable[NodeCap], ctx: SchedContext) -> None:
        self.ctx = ctx
        caps = {c.name: c for c in nodes}
        online = [c for c in caps.values() if c.schedulable]
        self.free = FreeIndex(online, ctx.running, ctx.now)
        self.thresholds = self.free.thresholds
        self.cands = Candidates(caps, self.free.nodes, ctx.mapped_users)
        self.preemption = Preemption(self.free, ctx.running)
        self.backfill = Backfill(self.free, ctx.holds, ctx.now)
        #: Requests (filters, GPUs, memory class, CPUs, memory) known to find no node in
        #: the buckets, with the reason: capacity only shrinks during a pass.
        self.failed: dict[tuple[object, ...], str] = {}
        #: rkey -> (FreeIndex.restricted_version, reason): a request whose jobs all wait
        #: for that reason while no restricted node changes (see the end of ``place``).
        self.settled: dict[tuple[object, ...], tuple[int, str]] = {}
        self.user_placed: dict[str, int] = {}
        self.array_placed: dict[int, int] = {}

    def why(self, cand: Cand, job: PendingJob, ti: int) -> str:
        """The most specific reason no candidate node fits the job right now."""
        g, need = job.gpus, job.gpu_mem_bytes
        res = []
        if job.cpus:
            res.append(f"{job.cpus:g} CPUs")
        if job.mem_bytes:
            res.append(f"{gib(job.mem_bytes)} memory")
        extra = " and ".join(res) + " free"
        if g == 0:
            return cand.no(extra) if res else f"no room on any {cand.where}"
        kind = f" with >= {gib(need)}" if need else ""
        most = 0 if ti >= len(self.thresholds) else cand.most(ti)
        if most == 0:
            return cand.no(f"GPUs{kind}")
        if most < g:
            return cand.no(f"{gpus_text(g)}{kind}")
        free = f"{g} free GPU{'s' if g > 1 else ''}{kind}"
        if not res or not cand.has_free(ti, g):
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
                        else f"asks for {gpus_text(g)}, more than the user GPU cap of {cap}"
                    )
                    return False
        ckey, cand = self.cands.of(job)
        if cand.reason:
            out.reasons[job.id] = cand.reason
            return False
        free, backfill = self.free, self.backfill
        ti = bisect_left(self.thresholds, job.gpu_mem_bytes) if g else 0
        fkey = (ckey, g, ti, job.cpus, job.mem_bytes)
        # What a job may use of the blocks depends on its rkey alone (and blocks added
        # later only take GPUs away), so a failure holds for every job alike; the job
        # a block is kept for is the exception.
        rkey: tuple[object, ...] | None = None
        if job.id not in backfill.block_jobs:
            user = job.user if job.user in backfill.block_users else ""
            rkey = (fkey, job.preemptible, user, job.time_limit_s)
            settled = self.settled.get(rkey)
            if settled is not None and settled[0] == free.restricted_version:
                out.reasons[job.id] = settled[1]
                return False
        why = self.failed.get(fkey)
        node: Node | None = None
        usable: list[tuple[int, int]] | None = None
        if why is None:
            if ti < len(self.thresholds) and g <= free.maxfree(ti):
                node = free.pick(cand, g, ti, job.cpus, job.mem_bytes)
            if node is None:
                why = self.failed[fkey] = self.why(cand, job, ti)
        # A restricted node wins only with fewer usable GPUs than the bucket pick has free:
        # none can when that pick fits exactly.
        exact = node is not None and node.counts[ti] <= g
        if backfill.restricted_nodes and ti < len(self.thresholds) and not exact:
            hit = backfill.pick(cand, job, ti, rkey)
            if hit is not None and (node is None or len(hit[1]) < node.counts[ti]):
                node, usable = hit
        if node is not None:
            out.placements.append(Placement(job.id, node.name, free.take(node, job, usable)))
            if g:
                self.user_placed[job.user] = self.user_placed.get(job.user, 0) + g
            if parent is not None:
                self.array_placed[parent] = self.array_placed.get(parent, 0) + 1
            return True
        assert why is not None
        pkey = (ckey, g, ti)  # preemption and holds look at neither CPUs nor memory
        hkey = None if rkey is None else (pkey, *rkey[1:])
        out.reasons[job.id] = reason = backfill.held_why(cand, job, ti, hkey) or why
        tries = bool(g and not job.preemptible and ti < len(self.thresholds))
        preemption = self.preemption
        if tries:
            preempted = False
            if preemption.on and pkey not in preemption.failed:
                preempted = preemption.preempt(job, cand, ti, out)
                if not preempted:
                    preemption.failed.add(pkey)
            if not preempted and not backfill.reserved:
                backfill.reserve(job, cand, ti, out)
        # Settled when nothing above can turn out otherwise for the next job of this rkey
        # but what restricted nodes have: the bucket search failed (it stays failed), the
        # restricted scan too, and no preemption or reservation is left to try. Its reason
        # then holds until a restricted node changes.
        if (
            rkey is not None
            and out.reasons[job.id] is reason
            and (
                not (backfill.restricted_nodes and ti < len(self.thresholds))
                or rkey in backfill.rfailed
            )
            and (
                not tries
                or ((not preemption.on or pkey in preemption.failed) and backfill.reserved)
            )
        ):
            self.settled[rkey] = (free.restricted_version, reason)
        return False
