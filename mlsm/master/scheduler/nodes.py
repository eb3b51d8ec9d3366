"""Free capacity during a pass: each online node's free GPUs, CPUs and memory, the nodes
kept in buckets by free GPU count per GPU-memory class (so a best fit needs no scan of every
node), and when each busy GPU frees up (for backfill)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mlsm.master.scheduler.model import NodeCap, PendingJob, Running

if TYPE_CHECKING:
    from mlsm.master.scheduler.backfill import Block
    from mlsm.master.scheduler.candidates import Cand

#: With this many candidate nodes or fewer, a job's nodes are scanned instead of bucketed.
SMALL_CANDIDATE_SET = 16
#: A running job past its time limit is being stopped: its GPUs count as freeing this long
#: from now (not "at a time already past", which would make no reservation and let a long
#: job backfill onto GPUs that free up any moment).
OVERDUE_S = 1.0


class Node:
    """One online node as the pass sees it: what is still free, and its blocks."""

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
        self.blocks: list[Block] = []
        self.forbidden: dict[tuple[object, ...], set[int]] = {}  # see Backfill.forbidden
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


class FreeIndex:
    def __init__(self, online: Sequence[NodeCap], running: Sequence[Running], now: float):
        self.now = now
        #: GPU-memory classes: a job asking for ``m`` bytes per GPU uses class
        #: ``bisect_left(thresholds, m)`` (counts of GPUs with at least that much).
        self.thresholds = sorted({0} | {g.mem_total_bytes for c in online for g in c.gpus})
        self.nodes = [Node(c, i, self.thresholds) for i, c in enumerate(online)]
        self.by_name = {n.name: n for n in self.nodes}
        width = max((len(c.gpus) for c in online), default=0) + 1
        # buckets[ti][k]: the nodes that have had exactly k free GPUs of >= thresholds[ti]
        # bytes, in the order they came to have them. A node's count only falls during a
        # pass, so an entry is live while the node still has that count and no blocks;
        # sizes[ti][k] counts the live ones. Append-only, so a scan can resume (see pick).
        self.buckets: list[list[list[Node]]] = []
        self.sizes: list[list[int]] = []
        for ti in range(len(self.thresholds)):
            row: list[list[Node]] = [[] for _ in range(width)]
            for n in self.nodes:
                row[n.counts[ti]].append(n)
            self.buckets.append(row)
            self.sizes.append([len(b) for b in row])
        self.top = [width - 1] * len(self.thresholds)
        #: Bumped whenever a restricted node loses GPUs or a block is added: what is
        #: remembered about restricted nodes holds while it is unchanged.
        self.restricted_version = 0
        # When each busy GPU frees up (node -> index -> time), by running jobs' time limits.
        self.release: dict[str, dict[int, float]] = {}
        for r in running:
            per = self.release.setdefault(r.node, {})
            t = now if r.preemptible else max(r.ends_at, now + OVERDUE_S)
            for i in r.gpus:
                per[i] = max(per.get(i, t), t)

    def restrict(self, n: Node) -> None:
        """Take ``n`` out of the buckets (it has blocks: scanned per job instead); it got
        another block."""
        if not n.restricted:
            n.restricted = True
            for ti, sizes in enumerate(self.sizes):
                sizes[n.counts[ti]] -= 1
        self.restricted_version += 1

    def maxfree(self, ti: int) -> int:
        sizes, k = self.sizes[ti], self.top[ti]
        while k > 0 and not sizes[k]:
            k -= 1
        self.top[ti] = k
        return k

    def pick(self, cand: Cand, g: int, ti: int, cpus: float, mem: int) -> Node | None:
        """The best fit among the candidate nodes outside blocks (see the rules).

        A bucket entry that fails a request (gone from the bucket, not a candidate, too few
        CPUs or too little memory) fails it for the rest of the pass, since capacity only
        shrinks: each candidate set keeps, per request and bucket, where the next scan
        starts, so a pass tests each entry at most once per request.
        """
        if cand.members is not None and len(cand.nodes) <= SMALL_CANDIDATE_SET:
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
        row, sizes = self.buckets[ti], self.sizes[ti]
        cursors = cand.cursors.get((ti, cpus, mem))
        if cursors is None:
            cursors = cand.cursors[(ti, cpus, mem)] = [0] * len(row)
        for k in range(g, self.maxfree(ti) + 1):
            if not sizes[k]:
                continue
            entries = row[k]
            i, end = cursors[k], len(entries)
            while i < end:
                n = entries[i]
                if (
                    n.counts[ti] == k
                    and not n.restricted
                    and (members is None or n.pos in members)
                    and not (cpus and n.cpus < cpus)
                    and not (mem and n.mem < mem)
                ):
                    cursors[k] = i
                    return n
                i += 1
            cursors[k] = i
        return None

    def take(
        self, n: Node, job: PendingJob, usable: list[tuple[int, int]] | None = None
    ) -> tuple[int, ...]:
        """Give ``job`` what it asks for on ``n`` (of ``usable`` GPUs when given)."""
        if n.restricted:
            self.restricted_version += 1
        if job.cpus:
            n.cpus -= job.cpus
        if job.mem_bytes:
            n.mem -= job.mem_bytes
        if not job.gpus:
            return ()
        chosen = choose(n.free if usable is None else usable, job.gpus, job.gpu_mem_bytes)
        taken = set(chosen)
        mems = [m for i, m in n.free if i in taken]
        n.free = [(i, m) for i, m in n.free if i not in taken]
        for ti, t in enumerate(self.thresholds):
            lost = sum(1 for m in mems if m >= t)
            if lost:
                old = n.counts[ti]
                if not n.restricted:
                    sizes = self.sizes[ti]
                    sizes[old] -= 1
                    sizes[old - lost] += 1
                    self.buckets[ti][old - lost].append(n)
                n.counts[ti] = old - lost
        now = self.now
        ends = now if job.preemptible else now + job.time_limit_s if job.time_limit_s else math.inf
        per = self.release.setdefault(n.name, {})
        for i in chosen:
            per[i] = ends
        return chosen


def choose(free: list[tuple[int, int]], g: int, need: int) -> tuple[int, ...]:
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
