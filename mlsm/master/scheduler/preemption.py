"""Preemption: which preemptible jobs to stop so that a normal job that waits for GPUs
fits, and the GPUs kept for it meanwhile."""

from __future__ import annotations

from collections.abc import Sequence

from mlsm.master.scheduler.candidates import Cand
from mlsm.master.scheduler.model import PendingJob, Running, SchedResult
from mlsm.master.scheduler.nodes import FreeIndex, Node


class Preemption:
    def __init__(self, free: FreeIndex, running: Sequence[Running]) -> None:
        self.free = free
        #: The running preemptible jobs by node, cheapest victims first: those already
        #: stopping, then the most recently started.
        self.on: dict[str, list[Running]] = {}
        for r in running:
            if r.preemptible and r.node in free.by_name:
                self.on.setdefault(r.node, []).append(r)
        self.gpus: dict[str, int] = {}  # GPUs they hold, by node
        for name, runs in self.on.items():
            runs.sort(key=lambda r: (not r.stopping, -r.started_at))
            self.gpus[name] = len({i for r in runs for i in r.gpus})
        self.victims: set[int] = set()
        #: Requests for which no preemption would do (stopping jobs only frees GPUs for
        #: this pass's later requests, which it also takes: a failure holds).
        self.failed: set[object] = set()

    def preempt(self, job: PendingJob, cand: Cand, ti: int, out: SchedResult) -> bool:
        """Stop preemptible jobs so that ``job`` fits (see the rules)."""
        if not self.on:
            return False
        g, need, members = job.gpus, job.gpu_mem_bytes, cand.members
        best: tuple[tuple[int, int], Node, list[Running], set[int]] | None = None
        for name, runs in self.on.items():
            n = self.free.by_name[name]
            if n.restricted or (members is not None and n.pos not in members):
                continue
            if n.counts[ti] + self.gpus[name] < g:
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
        self.gpus[n.name] -= len({i for r in chosen for i in r.gpus})
        # The free GPUs it needs there are kept for it: taken out of this pass, as a
        # placement would take them (the victims' GPUs are busy until they stop).
        short = g - len(got - {i for i, _ in n.free})
        if short > 0:
            self.free.take(n, PendingJob(id=job.id, user=job.user, gpus=short, gpu_mem_bytes=need))
        names = ", ".join(str(i) for i in ids)
        out.reasons[job.id] = (
            f"preempting job{'s' if len(ids) > 1 else ''} {names} on {n.name} "
            "(starts once its GPUs are free)"
        )
        return True
