"""Holds and backfill: GPUs kept for a reservation, for maintenance or for the job that
backfill reserves them for, which jobs may use them meanwhile, and that reservation."""

from __future__ import annotations

import math
from collections.abc import Sequence

from mlsm.master.scheduler.candidates import Cand
from mlsm.master.scheduler.model import Hold, PendingJob, SchedResult
from mlsm.master.scheduler.nodes import FreeIndex, Node

#: Jobs tried per pass for a backfill reservation (the first that gets one keeps it).
MAX_RESERVE_TRIES = 8


class Block:
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


class Backfill:
    """The blocks of a pass and the nodes they restrict (out of the buckets, scanned per
    job with what that job may use there)."""

    def __init__(self, free: FreeIndex, holds: Sequence[Hold], now: float) -> None:
        self.free = free
        self.now = now
        self.blocks: list[Block] = []
        self.restricted_nodes: list[Node] = []
        #: Requests known to find no restricted node (see Pass.place's ``rkey``).
        self.rfailed: set[tuple[object, ...]] = set()
        self.held: dict[tuple[object, ...], tuple[int, str]] = {}
        self.hits: dict[tuple[object, ...], tuple[int, tuple[Node, list[tuple[int, int]]]]] = {}
        self.block_jobs: set[int] = set()  # jobs that own a block (a backfill reservation)
        self.block_users: set[str] = set()  # users that own a block (a reservation)
        self.reserved = False  # a reservation is made, or no more tries this pass
        self.reserve_tries = 0
        for h in holds:
            held = free.by_name.get(h.node)
            if held is not None and h.end > now and h.gpus:
                self.add(held, Block(frozenset(h.gpus), h.start, h.end, user=h.user, what=h.what))

    def add(self, n: Node, b: Block) -> None:
        """Keep ``b``'s GPUs on ``n``; the node leaves the buckets for the per-job scan."""
        n.blocks.append(b)
        n.forbidden.clear()
        self.blocks.append(b)
        if b.job is not None:
            self.block_jobs.add(b.job)
        if b.user is not None:
            self.block_users.add(b.user)
        if not n.restricted:
            self.restricted_nodes.append(n)
        self.free.restrict(n)

    def forbidden(self, n: Node, job: PendingJob) -> set[int]:
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

    def _forbidden_now(self, n: Node, job: PendingJob) -> set[int]:
        now = self.now
        own: set[int] = set()
        for b in n.blocks:
            if b.user is not None and b.user == job.user and b.start <= now:
                own |= b.gpus
        bad: set[int] = set()
        for b in n.blocks:
            if not b.allows(job, now):
                bad |= b.gpus - own if b.soft else b.gpus
        return bad

    def pick(
        self, cand: Cand, job: PendingJob, ti: int, rkey: tuple[object, ...] | None
    ) -> tuple[Node, list[tuple[int, int]]] | None:
        """The restricted candidate node with the fewest GPUs this job may use that is
        still enough, and those GPUs. The answer depends on the job's ``rkey`` (None: the
        job owns a block) and the restricted nodes alone: a failure holds for the pass
        (blocks only take GPUs away), a hit until a restricted node changes."""
        if rkey is not None:
            if rkey in self.rfailed:
                return None
            seen = self.hits.get(rkey)
            if seen is not None and seen[0] == self.free.restricted_version:
                return seen[1]
        g, need, members = job.gpus, job.gpu_mem_bytes, cand.members
        best: tuple[Node, list[tuple[int, int]]] | None = None
        for n in self.restricted_nodes:
            if n.counts[ti] < g or (members is not None and n.pos not in members):
                continue  # blocks only take GPUs away: too few free suitable ones already
            if (job.cpus and n.cpus < job.cpus) or (job.mem_bytes and n.mem < job.mem_bytes):
                continue
            bad = self.forbidden(n, job)
            usable = [f for f in n.free if f[1] >= need and f[0] not in bad]
            if len(usable) >= g and (best is None or len(usable) < len(best[1])):
                best = (n, usable)
        if rkey is not None:
            if best is None:
                self.rfailed.add(rkey)
            else:
                self.hits[rkey] = (self.free.restricted_version, best)
        return best

    def held_why(self, cand: Cand, job: PendingJob, ti: int, key: tuple[object, ...] | None) -> str:
        """When free GPUs that would fit are kept by a hold or reservation: which. The
        answer depends on ``key`` (the candidates, GPUs, memory class and what the job may
        use of blocks; None: the job owns a block) and the restricted nodes alone."""
        if not self.restricted_nodes or ti >= len(self.free.thresholds):
            return ""
        if key is None:
            return self._held_why(cand, job, ti)
        seen = self.held.get(key)
        if seen is None or seen[0] != self.free.restricted_version:
            seen = self.held[key] = (self.free.restricted_version, self._held_why(cand, job, ti))
        return seen[1]

    def _held_why(self, cand: Cand, job: PendingJob, ti: int) -> str:
        members, now = cand.members, self.now
        for n in self.restricted_nodes:
            if (members is not None and n.pos not in members) or n.counts[ti] < job.gpus:
                continue
            for b in n.blocks:
                if not b.allows(job, now):
                    later = "" if b.start <= now else " (this job would not end before it starts)"
                    return f"the free GPUs on {n.name} are reserved for {b.what}{later}"
        return ""

    def reserve(self, job: PendingJob, cand: Cand, ti: int, out: SchedResult) -> None:
        """Backfill's reservation for ``job``: the GPUs that free up soonest (see the rules)."""
        g, need, now = job.gpus, job.gpu_mem_bytes, self.now
        self.reserve_tries += 1
        self.reserved = self.reserve_tries >= MAX_RESERVE_TRIES
        best: tuple[float, int, Node, list[int]] | None = None
        for n in cand.nodes:
            if n.totals[ti] < g:
                continue
            rel = self.free.release.get(n.name, {})
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
        self.add(n, Block(frozenset(gpus), start, end, job=job.id, soft=True, what=f"job {job.id}"))
        out.expected_start[job.id] = start
        self.reserved = True
