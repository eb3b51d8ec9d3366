"""Which nodes a job's filters allow (its node, labels, datasets, project, shipped code,
runtime, Unix account), or why none does; dependencies; how reasons name things."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple, TypeVar

from mlsm.master.scheduler.model import NodeCap, PendingJob
from mlsm.master.scheduler.nodes import Node
from mlsm.policy import no_account_reason
from mlsm.wire.api import FINAL_STATES

_NO_CODE_HERE = "runs an agent too old for shipped code (upgrade mlsm on it)"
_NO_CODE = "no online node runs an agent that can run shipped code (upgrade mlsm on the nodes)"
_ENDED = {"failed": "failed", "cancelled": "was cancelled", "interrupted": "was interrupted"}


class Cand:
    """The nodes one set of job filters allows, or why there are none."""

    __slots__ = ("_fits", "_most", "cursors", "members", "nodes", "reason", "single", "where")

    def __init__(self, nodes: list[Node], where: str, reason: str = "") -> None:
        self.nodes = nodes
        self.where = where  # "online node that holds dataset x", or "node gpu3"
        self.reason = reason
        self.single = where.startswith("node ")
        self.members: set[int] | None = None  # None = every schedulable node
        self._most: dict[int, int] = {}
        #: Where FreeIndex.pick resumes, per (memory class, CPUs, memory): one position
        #: per bucket.
        self.cursors: dict[tuple[int, float, int], list[int]] = {}
        self._fits: dict[tuple[int, int], Node | None] = {}

    def most(self, ti: int) -> int:
        """The most GPUs of memory class ``ti`` any of the nodes has, busy or not (sizes
        do not change during a pass, so it is counted once per class)."""
        got = self._most.get(ti)
        if got is None:
            got = self._most[ti] = max((n.totals[ti] for n in self.nodes), default=0)
        return got

    def has_free(self, ti: int, g: int) -> bool:
        """Whether a node has ``g`` free GPUs of memory class ``ti`` now (blocks aside).
        The node that last did is tried first; once none does, none will this pass."""
        key = (ti, g)
        if key in self._fits:
            seen = self._fits[key]
            if seen is None:
                return False
            if seen.counts[ti] >= g:
                return True
        found = next((n for n in self.nodes if n.counts[ti] >= g), None)
        self._fits[key] = found
        return found is not None

    def no(self, thing: str) -> str:
        return (
            f"{self.where} does not have {thing}" if self.single else f"no {self.where} has {thing}"
        )


_A = TypeVar("_A")


def _holds_dataset(c: NodeCap, d: str) -> bool:
    return d in c.datasets


def _holds_project(c: NodeCap, p: str) -> bool:
    return p in c.projects


def _runs_code(c: NodeCap, _: str) -> bool:
    return c.code


def _labelled(c: NodeCap, kv: tuple[str, str]) -> bool:
    return c.labels.get(kv[0]) == kv[1]


def _runs_env(c: NodeCap, env: str) -> bool:
    return env in c.runtimes


def _has_account(c: NodeCap, acct: str) -> bool:
    return c.accounts is None or acct in c.accounts


class _Test(NamedTuple):
    nodes: list[Node]  # in input order
    pos: frozenset[int]


class Candidates:
    """Candidate sets by job filters, each built once a pass."""

    def __init__(
        self, caps: Mapping[str, NodeCap], nodes: list[Node], mapped_users: frozenset[str]
    ) -> None:
        self.caps = caps
        self.nodes = nodes
        self.by_name = {n.name: n for n in nodes}
        self.mapped_users = mapped_users
        # Whether any online node runs only users' own accounts (else skip the account test).
        self.restricted = any(n.cap.accounts is not None for n in nodes)
        self.cands: dict[object, Cand] = {}
        self.tests: dict[tuple[object, object], _Test] = {}

    def account(self, job: PendingJob) -> str | None:
        """The account name ``job`` needs on its node, or None when any node will do."""
        if job.user in self.mapped_users:
            return None
        return job.user

    def of(self, job: PendingJob) -> tuple[object, Cand]:
        """The job's candidate set, and the key it is kept under."""
        acct = self.account(job) if self.restricted else None
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
        return ckey, cand

    def _cand(self, job: PendingJob) -> Cand:
        if job.node is not None:
            return self._named(job, job.node)
        if not self.nodes:
            return Cand([], "", "no online nodes")
        # (what a node must do, the nodes that do it, the reason when none does)
        tests: list[tuple[str, _Test, str]] = []
        for d in sorted(set(job.datasets)):
            ok = self._test(_holds_dataset, d)
            tests.append((f"holds dataset {d}", ok, self._no_ds(d)))
        if job.project:
            ok = self._test(_holds_project, job.project)
            tests.append((f"holds project {job.project}", ok, self._no_project(job.project)))
        if job.code:
            ok = self._test(_runs_code, "")
            if len(ok.nodes) < len(self.nodes):
                tests.append(("can run shipped code", ok, _NO_CODE))
        for k, v in sorted(job.labels.items()):
            ok = self._test(_labelled, (k, v))
            tests.append((f"is labelled {k}={v}", ok, f"no online node is labelled {k}={v}"))
        env = job.env_kind
        ok = self._test(_runs_env, env)
        if len(ok.nodes) < len(self.nodes):  # a runtime every node has is not worth naming
            docker = " (Docker unavailable)" if env == "docker" else ""
            tests.append((f"can run {env} jobs", ok, f"no online node can run {env} jobs{docker}"))
        acct = self.account(job) if self.restricted else None
        if acct is not None:
            ok = self._test(_has_account, acct)
            if len(ok.nodes) < len(self.nodes):
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
            if not ok.nodes:
                return Cand([], "", alone)
            descs.append(desc)
            if kept is self.nodes:
                kept = ok.nodes
            else:
                allowed = ok.pos
                kept = [n for n in kept if n.pos in allowed]
            if not kept:
                return Cand([], "", "no online node " + " and ".join(descs))
        where = "online node" + (" that " + " and ".join(descs) if descs else "")
        cand = Cand(kept, where)
        if len(kept) < len(self.nodes):
            cand.members = {n.pos for n in kept}
        return cand

    def _test(self, passes: Callable[[NodeCap, _A], bool], arg: _A) -> _Test:
        """The online nodes that pass one filter (kept for the pass: many jobs share it)."""
        key = (passes, arg)
        got = self.tests.get(key)
        if got is None:
            ok = [n for n in self.nodes if passes(n.cap, arg)]
            got = self.tests[key] = _Test(ok, frozenset(n.pos for n in ok))
        return got

    def _no_ds(self, d: str) -> str:
        return self._only_offline("dataset", d, [c for c in self.caps.values() if d in c.datasets])

    def _no_project(self, project: str) -> str:
        holders = [c for c in self.caps.values() if project in c.projects]
        return self._only_offline("project", project, holders)

    def _only_offline(self, kind: str, what: str, holders: list[NodeCap]) -> str:
        """Why no candidate holds ``what``: the unschedulable nodes that do, or none."""
        elsewhere = sorted(c.name for c in holders if not c.schedulable)
        if elsewhere:
            states = ", ".join(
                f"{n} ({self.caps[n].reason_unschedulable or 'unschedulable'})"
                for n in elsewhere[:3]
            )
            return f"{kind} {what} is only on {states}"
        return f"no online node holds {kind} {what}"

    def _named(self, job: PendingJob, name: str) -> Cand:
        cap = self.caps.get(name)
        where = f"node {name}"
        if cap is None:
            return Cand([], where, f"no node named {name}")
        if not cap.schedulable:
            return Cand([], where, f"{where} is {cap.reason_unschedulable or 'not schedulable'}")
        for k, v in sorted(job.labels.items()):
            if cap.labels.get(k) != v:
                return Cand([], where, f"{where} is not labelled {k}={v}")
        for d in sorted(set(job.datasets)):
            if d not in cap.datasets:
                return Cand([], where, f"{where} does not hold dataset {d}")
        if job.project and job.project not in cap.projects:
            return Cand([], where, f"{where} does not hold project {job.project}")
        if job.code and not cap.code:
            return Cand([], where, f"{where} {_NO_CODE_HERE}")
        if job.env_kind not in cap.runtimes:
            extra = " (Docker unavailable)" if job.env_kind == "docker" else ""
            return Cand([], where, f"{where} cannot run {job.env_kind} jobs{extra}")
        acct = self.account(job)
        if cap.accounts is not None and acct is not None and acct not in cap.accounts:
            return Cand([], where, no_account_reason(acct, where))
        cand = Cand([self.by_name[name]], where)
        cand.members = {cand.nodes[0].pos}
        return cand


def dep_verdict(job: PendingJob, states: Mapping[int, str]) -> tuple[bool, str] | None:
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


def gib(n: float) -> str:
    return f"{n / (1 << 30):.3g} GiB"


def gpus_text(n: int) -> str:
    return "1 GPU" if n == 1 else f"{n} GPUs"
