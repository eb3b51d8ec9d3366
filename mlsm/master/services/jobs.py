"""Jobs: submit, the scheduling loop, what agents report, cancel, logs.

The queue is kept in memory (``_pending``: queued job id -> scheduler input) and mirrored
in the database, which stays the source of truth across restarts; so is the set of jobs
placed on nodes (``_active``). A scheduling pass runs whenever something changed (submit,
job end, node back, resume) and on a periodic tick; passes are coalesced so a flood of
submissions does not run a pass per job.

State machine: queued -> assigned (StartJob sent) -> running (agent says so) -> succeeded |
failed | cancelled; ``interrupted`` when the node is lost or the agent cannot re-adopt
the job, requeued as a new attempt while retries remain; ``held`` until released.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import math
import re
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy import func, select, update

from mlsm.config import Settings
from mlsm.errors import Conflict, NotFound, PayloadTooLarge, PermissionDenied, ValidationError
from mlsm.master import scheduler as sched
from mlsm.master.db import Database
from mlsm.master.db.models import Job as JobRow
from mlsm.master.db.models import UsageRecord, User
from mlsm.master.security import Principal
from mlsm.master.services.joblogs import LogStore
from mlsm.master.services.nodes import LiveNode, NodeRegistry
from mlsm.wire import agent as w
from mlsm.wire import api
from mlsm.wire.ints import INT64_MAX

log = logging.getLogger("mlsm.master.jobs")

GIB = 1 << 30
MIN_PASS_GAP_S = 0.005  # coalesce bursts of triggers into one pass
FOLLOW_POLL_S = 5.0  # a follower re-checks the job's state at least this often
KILL_GRACE_S = 10.0
MAX_ARRAY_TASKS = 10_000
#: What one submission may make the database hold: tasks x the stored spec (argv, env, ...).
#: A 10,000-task array of ordinary specs (~0.5 KiB) stores ~5 MiB; this refuses a request
#: that would make a small body grow the database by gigabytes (a large env x a big array).
MAX_SUBMISSION_STORED_BYTES = 32 << 20
_spec_size = msgspec.json.Encoder()
ASSIGN_GRACE_S = 60.0
REMOVE_ACK_WAIT_S = 5.0  # how long node removal waits for the agent to take its cancels
REMOVE_ACK_POLL_S = 0.05  # an assigned job the agent has not mentioned for this long is re-sent
MISSED_REPORTS_LOST = 2  # full reports in a row without a running job: the agent lost it


@dataclass(slots=True)
class Active:
    job_id: int
    user: str
    node_id: int
    gpus: tuple[int, ...]
    attempt: int
    state: str
    assigned_at: float
    gpu_count: int
    array_parent: int | None
    missed: int = 0  # full reports in a row from its node that did not mention it
    cpus: float = 0.0  # reserved CPUs (0: none asked for)
    mem: int = 0  # reserved memory in bytes


def parse_array(spec: str) -> tuple[range, int]:
    """'0-99%8' -> (indices 0..99, throttle 8); '5' -> (0..4, 0).

    The task count and the largest index are checked before anything is built, so a
    huge range is a 400, not a list of a billion ints or an index no database holds."""
    m = re.fullmatch(r"(\d+)(?:-(\d+))?(?:%(\d+))?", spec)
    if not m:
        raise ValidationError(f"--array {spec!r}: expected N, A-B or A-B%T", path="array")
    a, b, t = m.group(1), m.group(2), m.group(3)
    start, stop = (int(a), int(b) + 1) if b is not None else (0, int(a))
    if stop <= start:
        raise ValidationError(f"--array {spec!r} has no tasks", path="array")
    if stop - start > MAX_ARRAY_TASKS:
        raise ValidationError(f"--array {spec!r}: at most {MAX_ARRAY_TASKS} tasks", path="array")
    if stop - 1 > INT64_MAX:
        raise ValidationError(f"--array {spec!r}: task indices go up to {INT64_MAX}", path="array")
    # A throttle above the task count limits nothing: keep it within the count.
    return range(start, stop), min(int(t), stop - start) if t else 0


def parse_mount(text: str) -> w.Mount:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0].startswith("/") or not parts[1].startswith("/"):
        raise ValidationError(
            f"mount {text!r}: expected /host/path:/container/path[:ro|rw]", path="mounts"
        )
    mode = parts[2] if len(parts) == 3 else "ro"
    if mode not in ("ro", "rw"):
        raise ValidationError(f"mount {text!r}: mode must be ro or rw", path="mounts")
    return w.Mount(source=parts[0], target=parts[1], read_only=mode == "ro")


def _event(state: str, message: str = "") -> list[Any]:
    return [time.time(), state, message]


class JobService:
    def __init__(
        self, db: Database, settings: Settings, nodes: NodeRegistry, logs: LogStore
    ) -> None:
        self.db = db
        self.settings = settings
        self.nodes = nodes
        self.logs = logs
        self.datasets: Any = None  # set by the datasets service: .holders() and .path_on()
        self.policy: Any = None  # set by the settings service: image and mount allow-lists
        self._pending: dict[int, sched.PendingJob] = {}
        self._reasons: dict[int, str] = {}
        self._active: dict[int, Active] = {}
        self._final_states: dict[int, str] = {}
        self._usage: dict[str, float] = {}
        self._usage_at = time.time()
        self._kick = asyncio.Event()
        self._inserts: list[tuple[list[JobRow], asyncio.Future[None]]] = []
        self._inserter: asyncio.Task[None] | None = None
        self._caps: dict[str, int] = {}
        self._unix: dict[str, str] = {}
        self._admins: frozenset[str] = frozenset()  # may fall back to an agent's own account
        self.passes = 0
        self.last_pass_ms = 0.0
        nodes.on_reports = self.on_reports
        nodes.on_lost = self.on_node_lost
        nodes.on_change = self.kick

    # ---------------------------------------------------------------- lifecycle
    async def load(self) -> None:
        async with self.db.session() as s:
            rows = (
                (
                    await s.execute(
                        select(JobRow).where(JobRow.state.in_(("queued", "assigned", "running")))
                    )
                )
                .scalars()
                .all()
            )
            usage = (await s.execute(select(UsageRecord))).scalars().all()
            await self._load_users(s)
        for r in rows:
            if r.state == "queued":
                self._pending[r.id] = self._pending_of(r)
                self._reasons[r.id] = r.reason
            else:
                node = self.nodes.by_name.get(r.node or "")
                self._active[r.id] = Active(
                    r.id,
                    r.user,
                    node.id if node else -1,
                    tuple(r.gpu_indices or ()),
                    r.attempt,
                    r.state,
                    r.started_at or r.created_at,
                    r.gpus,
                    r.array_parent,
                    cpus=float(r.spec.get("cpus", 0.0)),
                    mem=int(r.spec.get("mem_gib", 0.0) * GIB),
                )
        now = time.time()
        for u in usage:
            self._usage[u.user] = sched.decay_usage(
                u.gpu_hours, now - u.updated_at, self._half_life()
            )

    async def _load_users(self, s: Any) -> None:
        users = (
            await s.execute(select(User.username, User.gpu_cap, User.unix_user, User.role))
        ).all()
        self._caps = {u: c for u, c, _, _ in users if c is not None}
        self._unix = {u: x for u, _, x, _ in users if x}
        self._admins = frozenset(u for u, _, _, r in users if r in ("admin", "superadmin"))

    def _half_life(self) -> float:
        return self.settings.fairshare_half_life_hours * 3600

    def kick(self) -> None:
        self._kick.set()

    async def run_loop(self) -> None:
        """The scheduling loop: a pass on every kick, and one per tick regardless."""
        while True:
            try:
                await asyncio.wait_for(self._kick.wait(), timeout=self.settings.schedule_tick)
            except TimeoutError:
                pass
            self._kick.clear()
            try:
                await self.schedule_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduling pass failed; retrying on the next tick")
            await asyncio.sleep(MIN_PASS_GAP_S)

    # ---------------------------------------------------------------- submit
    def _pending_of(self, r: JobRow) -> sched.PendingJob:
        spec = r.spec
        deps = []
        for a in spec.get("after", []):
            jid, _, mode = a.partition(":")
            deps.append((int(jid), mode or "ok"))
        return sched.PendingJob(
            id=r.id,
            user=r.user,
            priority=r.priority,
            submitted_at=r.created_at,
            gpus=r.gpus,
            gpu_mem_bytes=int(spec.get("gpu_mem_gib", 0) * GIB),
            cpus=spec.get("cpus", 0.0),
            mem_bytes=int(spec.get("mem_gib", 0) * GIB),
            node=spec.get("node"),
            labels=spec.get("labels", {}),
            datasets=tuple(spec.get("datasets", [])),
            env_kind=spec.get("env_kind", "process"),
            deps=tuple(deps),
            array_parent=r.array_parent,
            array_throttle=int(spec.get("array_throttle", 0)),
        )

    def _validate(self, p: Principal, body: api.JobSubmit) -> dict[str, Any]:
        if body.env_kind == "venv" and not body.venv:
            raise ValidationError("--env venv needs --venv PATH", path="venv")
        if body.env_kind == "conda" and not body.conda:
            raise ValidationError("--env conda needs --conda NAME", path="conda")
        if body.env_kind == "docker" and not body.image:
            raise ValidationError("--env docker needs --image IMG", path="image")
        if body.env_kind != "docker" and (body.image or body.mounts):
            raise ValidationError("--image and --mount are for --env docker", path="image")
        if body.venv and not body.venv.startswith("/"):
            raise ValidationError("--venv must be an absolute path on the node", path="venv")
        if body.workdir and not body.workdir.startswith("/"):
            raise ValidationError("--workdir must be an absolute path on the node", path="workdir")
        if any("\x00" in a for a in body.argv):
            raise ValidationError("the command contains a NUL byte", path="argv")
        if body.node is not None and body.node not in self.nodes.by_name:
            raise ValidationError(f"no node named {body.node!r}", path="node")
        mounts = [parse_mount(m) for m in body.mounts]
        if self.policy is not None and body.env_kind == "docker":
            self.policy.check_image(p, body.image)
            for m in mounts:
                self.policy.check_mount(p, m.source)
        spec = msgspec.to_builtins(body)
        if self.policy is not None and mounts and not p.is_admin:
            # The agent re-checks a member's mounts against the allow-list once it can
            # resolve symlinks (see _agent_spec): the check here is only lexical.
            spec["member_mounts"] = True
        if body.array:
            _, throttle = parse_array(body.array)
            spec["array_throttle"] = throttle
        return spec

    async def submit(self, p: Principal, body: api.JobSubmit) -> api.SubmitReply:
        spec = self._validate(p, body)
        indices: list[int | None] = [None]
        if body.array:
            indices = list(parse_array(body.array)[0])
        self._check_stored_size(spec, len(indices))
        if body.after:
            ids = [int(a.split(":")[0]) for a in body.after]
            for i, jid in enumerate(ids):
                if jid > INT64_MAX:
                    raise ValidationError(
                        f"--after {jid}: job ids go up to {INT64_MAX}", path=f"after[{i}]"
                    )
            async with self.db.session() as s:
                found = set(
                    (await s.execute(select(JobRow.id).where(JobRow.id.in_(ids)))).scalars()
                )
            missing = [i for i in ids if i not in found]
            if missing:
                raise ValidationError(f"--after: no job {missing[0]}", path="after")
        now = time.time()
        state = "held" if body.hold else "queued"
        rows = [
            JobRow(
                name=body.name or (body.argv[0].rsplit("/", 1)[-1])[:256],
                user=p.name,
                state=state,
                spec=spec,
                priority=body.priority,
                gpus=body.gpus,
                created_at=now,
                retries=body.retries,
                array_index=idx,
                history=[_event(state, "submitted")],
                reason="held by user" if body.hold else "waiting for the scheduler",
            )
            for idx in indices
        ]
        await self._insert(rows)
        if state == "queued":
            for r in rows:
                self._pending[r.id] = self._pending_of(r)
            self.kick()
        return api.SubmitReply(job=self._wire(rows[0], p), ids=[r.id for r in rows])

    @staticmethod
    def _check_stored_size(spec: dict[str, Any], tasks: int) -> None:
        """Refuse a submission whose rows would hold more than MAX_SUBMISSION_STORED_BYTES:
        the body limit bounds one spec, not the spec repeated for every task of an array."""
        each = len(_spec_size.encode(spec))
        if each * tasks > MAX_SUBMISSION_STORED_BYTES:
            limit_mib = MAX_SUBMISSION_STORED_BYTES >> 20
            raise PayloadTooLarge(
                f"this submission would store {each * tasks / (1 << 20):.1f} MiB "
                f"({tasks} task(s) x {each / 1024:.1f} KiB of spec); the limit is "
                f"{limit_mib} MiB per submission: submit a smaller array or a smaller env",
                details={
                    "limit_bytes": MAX_SUBMISSION_STORED_BYTES,
                    "stored_bytes": each * tasks,
                    "tasks": tasks,
                },
            )

    async def _insert(self, rows: list[JobRow]) -> None:
        """Insert one submission's rows; returns once committed.

        Submissions that arrive while a batch is being written are committed together in
        the next transaction (group commit), so a burst of submissions costs a few
        transactions instead of one each, and every caller still returns only after its
        jobs are durable.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inserts.append((rows, done))
        if self._inserter is None or self._inserter.done():
            self._inserter = asyncio.create_task(self._write_inserts())
        await done

    async def _write_inserts(self) -> None:
        while self._inserts:
            batch = self._inserts
            self._inserts = []
            try:
                async with self.db.transaction() as s:
                    for rows, _ in batch:
                        first = rows[0]
                        s.add(first)
                        if first.array_index is not None:  # tasks name the first as their parent
                            await s.flush()
                            first.array_parent = first.id
                            for r in rows[1:]:
                                r.array_parent = first.id
                        s.add_all(rows[1:])
                    await s.flush()
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    # ---------------------------------------------------------------- views
    def _may_see_private(self, p: Principal, r: JobRow) -> bool:
        return p.is_admin or p.name == r.user

    def _wire(self, r: JobRow, p: Principal | None = None) -> api.Job:
        spec = r.spec
        reason = self._reasons.get(r.id, r.reason) if r.state == "queued" else r.reason
        return api.Job(
            id=r.id,
            name=r.name,
            user=r.user,
            state=r.state,  # type: ignore[arg-type]
            argv=spec.get("argv", []),
            created_at=r.created_at,
            priority=r.priority,
            gpus=r.gpus,
            gpu_mem_gib=spec.get("gpu_mem_gib", 0.0),
            cpus=spec.get("cpus", 0.0),
            mem_gib=spec.get("mem_gib", 0.0),
            env_kind=spec.get("env_kind", "process"),
            venv=spec.get("venv", ""),
            conda=spec.get("conda", ""),
            image=spec.get("image", ""),
            workdir=spec.get("workdir", ""),
            env=spec.get("env", {}) if p is not None and self._may_see_private(p, r) else None,
            node_req=spec.get("node"),
            labels=spec.get("labels", {}),
            datasets=spec.get("datasets", []),
            after=spec.get("after", []),
            retries=r.retries,
            attempt=r.attempt,
            timeout_s=spec.get("timeout_s", 0.0),
            array_parent=r.array_parent,
            array_index=r.array_index,
            array_throttle=spec.get("array_throttle", 0),
            node=r.node,
            gpu_indices=list(r.gpu_indices or []),
            reason=reason,
            exit_code=r.exit_code,
            started_at=r.started_at,
            ended_at=r.ended_at,
            log_size=self.logs.size(r.id, r.attempt) if r.started_at or r.attempt else 0,
            history=[
                api.JobEvent(ts=e[0], state=e[1], message=e[2] if len(e) > 2 else "")
                for e in (r.history or [])
            ],
        )

    async def query(
        self,
        p: Principal,
        *,
        state: str | None,
        user: str | None,
        node: str | None,
        all: bool,
        limit: int,
    ) -> api.JobList:
        q = select(JobRow)
        cq = select(func.count()).select_from(JobRow)
        conds: list[Any] = []
        if state:
            states = [x.strip() for x in state.split(",") if x.strip()]
            conds.append(JobRow.state.in_(states))
        elif not all:
            conds.append(JobRow.state.in_(("queued", "held", "assigned", "running")))
        if user:
            conds.append(JobRow.user == user)
        if node:
            conds.append(JobRow.node == node)
        for c in conds:
            q = q.where(c)
            cq = cq.where(c)
        async with self.db.session() as s:
            total = int((await s.execute(cq)).scalar_one())
            rows = (await s.execute(q.order_by(JobRow.id.desc()).limit(limit))).scalars().all()
        return api.JobList(jobs=[self._wire(r, p) for r in reversed(rows)], total=total)

    async def get(self, p: Principal, job_id: int) -> api.Job:
        async with self.db.session() as s:
            r = await s.get(JobRow, job_id)
        if r is None:
            raise NotFound(f"no job {job_id}")
        return self._wire(r, p)

    # ---------------------------------------------------------------- cancel
    async def cancel(self, p: Principal, ids: list[int], reason: str = "") -> api.CancelResult:
        done: list[int] = []
        skipped: dict[str, str] = {}
        to_stop: list[Active] = []
        now = time.time()
        why = reason or f"cancelled by {p.name}"
        async with self.db.transaction() as s:
            rows = (await s.execute(select(JobRow).where(JobRow.id.in_(ids)))).scalars().all()
            by_id = {r.id: r for r in rows}
            for jid in ids:
                r = by_id.get(jid)
                if r is None:
                    skipped[str(jid)] = "no such job"
                    continue
                if r.user != p.name and not p.is_admin:
                    skipped[str(jid)] = "not your job"
                    continue
                if r.state in api.FINAL_STATES:
                    skipped[str(jid)] = f"already {r.state}"
                    continue
                if r.state in ("queued", "held"):
                    self._finish_row(r, "cancelled", why, now)
                    self._pending.pop(jid, None)
                else:
                    a = self._active.get(jid)
                    r.reason = f"cancelling: {why}"
                    r.history = [*r.history, _event(r.state, f"cancel requested by {p.name}")]
                    if a is not None:
                        to_stop.append(a)
                done.append(jid)
        for a in to_stop:
            await self._send_cancel(a, why, "cancelled")
        if not done and skipped and len(ids) == 1:
            msg = next(iter(skipped.values()))
            if msg == "no such job":
                raise NotFound(f"no job {ids[0]}")
            if msg == "not your job":
                raise PermissionDenied(
                    f"job {ids[0]} is not yours: members cancel only their own jobs"
                )
            raise Conflict(f"job {ids[0]} is {msg.removeprefix('already ')}")
        if done:
            self.kick()
        return api.CancelResult(cancelled=done, skipped=skipped)

    async def _send_cancel(
        self, a: Active, reason: str, end_kind: str, grace: float = KILL_GRACE_S
    ) -> None:
        await self.nodes.enqueue(
            a.node_id,
            w.CancelJob,
            job_id=a.job_id,
            attempt=a.attempt,
            reason=reason,
            end_kind=end_kind,
            grace_s=grace,
        )

    async def release(self, p: Principal, job_id: int) -> api.Job:
        async with self.db.transaction() as s:
            r = await s.get(JobRow, job_id)
            if r is None:
                raise NotFound(f"no job {job_id}")
            if r.user != p.name and not p.is_admin:
                raise PermissionDenied(f"job {job_id} is not yours")
            if r.state != "held":
                raise Conflict(f"job {job_id} is {r.state}, not held")
            r.state = "queued"
            r.history = [*r.history, _event("queued", f"released by {p.name}")]
            self._pending[r.id] = self._pending_of(r)
        self.kick()
        return await self.get(p, job_id)

    def _finish_row(
        self, r: JobRow, state: str, reason: str, now: float, exit_code: int | None = None
    ) -> None:
        self._update_usage(time.time())  # charge its GPUs up to its end, before release
        r.state = state
        r.reason = reason
        r.ended_at = now
        if exit_code is not None:
            r.exit_code = exit_code
        r.history = [*(r.history or []), _event(state, reason)]
        self._final_states[r.id] = state
        self._active.pop(r.id, None)
        self._pending.pop(r.id, None)
        self._reasons.pop(r.id, None)
        self.logs.notify(r.id)

    # ---------------------------------------------------------------- scheduling
    def gpu_holders(self) -> dict[int, dict[int, list[int]]]:
        out: dict[int, dict[int, list[int]]] = {}
        for a in self._active.values():
            per = out.setdefault(a.node_id, {})
            for g in a.gpus:
                per.setdefault(g, []).append(a.job_id)
        return out

    def _node_caps(self, now: float) -> list[sched.NodeCap]:
        holders = self.gpu_holders()
        held_ds = self.datasets.holders() if self.datasets is not None else {}
        reserved: dict[int, tuple[float, int]] = {}
        for a in self._active.values():
            c, m = reserved.get(a.node_id, (0.0, 0))
            reserved[a.node_id] = (c + a.cpus, m + a.mem)
        caps = []
        for n in self.nodes.nodes.values():
            rc, rm = reserved.get(n.id, (0.0, 0))
            state = self.nodes.state_of(n, now)
            mine = holders.get(n.id, {})
            mlsm_pids = {r.pid for r in n.jobs.values() if r.pid}
            gpus = []
            for g in n.gpus:
                foreign = any(pr.job_id is None and pr.pid not in mlsm_pids for pr in g.processes)
                free = g.index not in mine and not foreign and not g.error
                gpus.append(sched.GpuSlot(index=g.index, mem_total_bytes=g.mem_total, free=free))
            runtimes = set(n.info.runtimes) | {"process", "venv"}
            if n.info.docker_available:
                runtimes.add("docker")
            caps.append(
                sched.NodeCap(
                    name=n.name,
                    schedulable=state == "online",
                    gpus=gpus,
                    labels=n.labels,
                    datasets=frozenset(held_ds.get(n.id, ())),
                    runtimes=frozenset(runtimes),
                    reason_unschedulable=state,
                    # CPUs and memory that jobs asked for are reserved against the node's
                    # size; a node that has not said its size is not limited.
                    cpus_free=n.info.cpu_cores - rc if n.info.cpu_cores else math.inf,
                    mem_free_bytes=n.info.mem_total - rm if n.info.mem_total else sys.maxsize,
                    accounts=_node_accounts(n.info),
                )
            )
        return caps

    async def _dep_states(self) -> dict[int, str]:
        want = {d for j in self._pending.values() for d, _ in j.deps}
        out: dict[int, str] = {}
        unknown = []
        for d in want:
            if d in self._pending:
                out[d] = "queued"
            elif d in self._active:
                out[d] = self._active[d].state
            elif d in self._final_states:
                out[d] = self._final_states[d]
            else:
                unknown.append(d)
        if unknown:
            async with self.db.session() as s:
                for jid, st in (
                    await s.execute(select(JobRow.id, JobRow.state).where(JobRow.id.in_(unknown)))
                ).all():
                    out[jid] = st
                    if st in api.FINAL_STATES:
                        self._final_states[jid] = st
        return out

    def _update_usage(self, now: float) -> None:
        """Charge the GPUs running jobs hold since the last update, decayed.

        Called before the set of running jobs changes (a start, an end), so every job is
        charged for exactly its run, however short, not just for the ticks it overlapped.
        """
        dt = now - self._usage_at
        if dt <= 0:
            return
        self._usage_at = now
        hl = self._half_life()
        held: dict[str, int] = {}
        for a in self._active.values():
            if a.state == "running":
                held[a.user] = held.get(a.user, 0) + a.gpu_count
        for user in set(self._usage) | set(held):
            self._usage[user] = sched.add_usage(
                sched.decay_usage(self._usage.get(user, 0.0), dt, hl), held.get(user, 0), dt
            )

    def _effective_usage(self) -> dict[str, float]:
        """Recent GPU-hours plus the scheduler's placement charge for what users hold now.

        A pass charges each placement as it goes, so that users alternate; a job placed in
        an earlier pass and still holding its GPUs is charged the same, so the order does
        not depend on how the queue happened to be split into passes (without this, two
        users with equal history never alternate: ties go to the older job).
        """
        out = dict(self._usage)
        for a in self._active.values():
            charge = (
                a.gpu_count * sched.PASS_CHARGE_GPU_HOURS if a.gpu_count else sched.CPU_JOB_CHARGE
            )
            out[a.user] = out.get(a.user, 0.0) + charge
        return out

    async def schedule_pass(self) -> sched.SchedResult | None:
        if not self._pending:
            return None
        t0 = time.perf_counter()
        now = time.time()
        self._update_usage(now)
        in_use: dict[str, int] = {}
        running_array: dict[int, int] = {}
        for a in self._active.values():
            in_use[a.user] = in_use.get(a.user, 0) + a.gpu_count
            if a.array_parent is not None:
                running_array[a.array_parent] = running_array.get(a.array_parent, 0) + 1
        ctx = sched.SchedContext(
            dep_states=await self._dep_states(),
            running_array=running_array,
            user_gpus_in_use=in_use,
            user_caps=self._caps,
            usage=self._effective_usage(),
            mapped_users=frozenset(self._unix) | self._admins,
        )
        result = sched.schedule(list(self._pending.values()), self._node_caps(now), ctx)
        await self._apply(result, now)
        self.passes += 1
        self.last_pass_ms = (time.perf_counter() - t0) * 1000
        return result

    async def _apply(self, result: sched.SchedResult, now: float) -> None:
        changed_reasons = {j: r for j, r in result.reasons.items() if self._reasons.get(j) != r}
        starts: list[tuple[int, w.JobSpec]] = []
        async with self.db.transaction() as s:
            if result.placements:
                ids = [pl.job_id for pl in result.placements]
                rows = {
                    r.id: r
                    for r in (await s.execute(select(JobRow).where(JobRow.id.in_(ids)))).scalars()
                }
                for pl in result.placements:
                    r = rows.get(pl.job_id)
                    node = self.nodes.by_name.get(pl.node)
                    if r is None or node is None or r.state != "queued":
                        self._pending.pop(pl.job_id, None)
                        continue
                    r.state = "assigned"
                    r.node = pl.node
                    r.gpu_indices = list(pl.gpu_indices)
                    r.reason = ""
                    r.history = [
                        *r.history,
                        _event(
                            "assigned",
                            f"on {pl.node} GPUs {list(pl.gpu_indices)}"
                            if pl.gpu_indices
                            else f"on {pl.node}",
                        ),
                    ]
                    self._pending.pop(r.id, None)
                    self._reasons.pop(r.id, None)
                    self._active[r.id] = Active(
                        r.id,
                        r.user,
                        node.id,
                        pl.gpu_indices,
                        r.attempt,
                        "assigned",
                        now,
                        r.gpus,
                        r.array_parent,
                        cpus=float(r.spec.get("cpus", 0.0)),
                        mem=int(r.spec.get("mem_gib", 0.0) * GIB),
                    )
                    starts.append((node.id, self._agent_spec(r, node, pl.gpu_indices)))
            for jid, why in result.never.items():
                r = await s.get(JobRow, jid)
                if r is not None and r.state == "queued":
                    self._finish_row(r, "cancelled", why, now)
            if changed_reasons:
                await s.execute(
                    update(JobRow).execution_options(synchronize_session=False),
                    [{"id": j, "reason": why} for j, why in changed_reasons.items()],
                )
                self._reasons.update(changed_reasons)
        for node_id, spec in starts:
            await self.nodes.enqueue(node_id, w.StartJob, job=spec)

    def _agent_spec(self, r: JobRow, node: LiveNode, gpus: tuple[int, ...]) -> w.JobSpec:
        spec = r.spec
        datasets = {}
        if self.datasets is not None:
            for name in spec.get("datasets", []):
                path = self.datasets.path_on(node.id, name)
                if path:
                    datasets[name] = path
        uuids = []
        by_index = {g.index: g for g in node.gpus}
        for g in gpus:
            if g in by_index and by_index[g].uuid:
                uuids.append(by_index[g].uuid)
        return w.JobSpec(
            job_id=r.id,
            attempt=r.attempt,
            name=r.name,
            user=r.user,
            unix_user=self._unix.get(r.user, ""),
            admin=r.user in self._admins,
            argv=spec["argv"],
            env=spec.get("env", {}),
            workdir=spec.get("workdir", ""),
            env_kind=spec.get("env_kind", "process"),
            venv=spec.get("venv", ""),
            conda=spec.get("conda", ""),
            image=spec.get("image", ""),
            mounts=[parse_mount(m) for m in spec.get("mounts", [])],
            network=node.docker_network,
            keep_container=spec.get("keep_container", False),
            gpus=list(gpus),
            gpu_uuids=uuids,
            cpus=spec.get("cpus", 0.0),
            mem_bytes=int(spec.get("mem_gib", 0.0) * GIB),
            timeout_s=spec.get("timeout_s", 0.0),
            kill_grace_s=KILL_GRACE_S,
            array_index=r.array_index,
            datasets=datasets,
            mount_roots=(
                list(self.policy.settings.current.mount_allow)
                if spec.get("member_mounts") and self.policy is not None
                else None
            ),
        )

    # ---------------------------------------------------------------- agent reports
    async def on_reports(self, node: LiveNode, reports: list[w.JobReport], full: bool) -> None:
        now = time.time()
        ended = False
        stale: list[w.JobReport] = []
        updates: dict[int, w.JobReport] = {}
        for rep in reports:
            a = self._active.get(rep.job_id)
            if a is None or a.node_id != node.id or a.attempt != rep.attempt:
                if rep.state in ("starting", "running"):
                    stale.append(rep)
                continue
            if rep.state in ("running", "starting") and a.state == "running":
                continue
            updates[rep.job_id] = rep
        missing: list[Active] = []
        if full:
            seen = {r.job_id for r in reports}
            for a in self._active.values():
                if a.node_id != node.id:
                    continue
                if a.job_id in seen:
                    a.missed = 0
                elif a.state == "running":
                    # One heartbeat may have been sampled before the job's start event was
                    # sent; only a second one in a row that lacks it means the agent lost it.
                    a.missed += 1
                    if a.missed >= MISSED_REPORTS_LOST:
                        missing.append(a)
                elif now - a.assigned_at > ASSIGN_GRACE_S:
                    missing.append(a)
        resend: list[w.JobSpec] = []
        if updates or missing:
            async with self.db.transaction() as s:
                for jid, rep in updates.items():
                    r = await s.get(JobRow, jid)
                    a = self._active[jid]
                    if r is None:
                        continue
                    if rep.state in ("starting", "running"):
                        if r.state == "assigned":
                            r.state = "running"
                            r.started_at = rep.started_at or now
                            r.history = [
                                *r.history,
                                _event("running", f"pid {rep.pid}" if rep.pid else ""),
                            ]
                            self._update_usage(time.time())  # charged from now on
                            a.state = "running"
                        continue
                    ended = True
                    self._end(r, rep, now)
                for a in missing:
                    r = await s.get(JobRow, a.job_id)
                    if r is None:
                        continue
                    if a.state == "assigned":
                        # The StartJob may have been lost with a restart: send it again (idempotent).
                        a.assigned_at = now
                        resend.append(self._agent_spec(r, node, a.gpus))
                        continue
                    ended = True
                    self._interrupt(r, f"the agent on {node.name} no longer knows this job", now)
        for spec in resend:  # after the transaction: enqueue writes in its own
            await self.nodes.enqueue(node.id, w.StartJob, job=spec)
        pending_cancels = {
            (c.job_id, c.attempt) for c in node.outbox.values() if isinstance(c, w.CancelJob)
        }
        for rep in stale:
            if (rep.job_id, rep.attempt) in pending_cancels:
                continue  # already told; every heartbeat would otherwise add one more
            await self.nodes.enqueue(
                node.id,
                w.CancelJob,
                job_id=rep.job_id,
                attempt=rep.attempt,
                reason="this attempt is no longer wanted by the master",
                end_kind="cancelled",
            )
        if ended:
            self.kick()

    def _end(self, r: JobRow, rep: w.JobReport, now: float) -> None:
        if rep.state == "lost" or rep.end_kind == "lost":
            self._interrupt(r, rep.reason or "lost", now)
            return
        if rep.state == "failed_to_start":
            self._finish_row(r, "failed", rep.reason or "failed to start", now)
            return
        code = rep.exit_code
        if rep.end_kind == "cancelled":
            state = "cancelled"
        elif rep.end_kind in ("timeout", "oom", "error"):
            state = "failed"
        else:
            state = "succeeded" if code == 0 else "failed"
        reason = rep.reason or (f"exit code {code}" if code is not None else state)
        if r.reason.startswith("cancelling: ") and state == "cancelled":
            reason = r.reason.removeprefix("cancelling: ")
        r.ended_at = rep.ended_at or now
        self._finish_row(r, state, reason, r.ended_at, exit_code=code)

    def _interrupt(self, r: JobRow, why: str, now: float) -> None:
        if r.attempt < r.retries:
            self._update_usage(time.time())
            r.history = [
                *r.history,
                _event("interrupted", why),
                _event("queued", f"requeued as attempt {r.attempt + 1}"),
            ]
            r.attempt += 1
            r.state = "queued"
            r.node = None
            r.gpu_indices = []
            r.reason = f"requeued after interruption: {why}"
            self._active.pop(r.id, None)
            self._pending[r.id] = self._pending_of(r)
            self.logs.notify(r.id)
        else:
            self._finish_row(r, "interrupted", why, now)

    async def on_node_lost(self, node: LiveNode) -> None:
        mine = [a for a in self._active.values() if a.node_id == node.id]
        if not mine:
            return
        now = time.time()
        async with self.db.transaction() as s:
            for a in mine:
                r = await s.get(JobRow, a.job_id)
                if r is not None:
                    self._interrupt(
                        r,
                        f"node {node.name} was lost (no heartbeat for {self.settings.node_lease:.0f} s)",
                        now,
                    )
        self.kick()

    async def remove_node(self, name: str, *, force: bool) -> list[int]:
        node = self.nodes.get(name)
        mine = [a for a in self._active.values() if a.node_id == node.id]
        if mine and not force:
            raise Conflict(
                f"node {name} runs {len(mine)} job(s) ({', '.join(str(a.job_id) for a in mine[:5])}); "
                "drain it and wait, or remove it with --force"
            )
        for a in mine:
            await self._send_cancel(a, f"node {name} was removed", "cancelled", grace=KILL_GRACE_S)
        # Give a connected agent the moment it needs to take the cancels before its secret
        # stops working; an offline node's jobs are interrupted all the same.
        deadline = time.monotonic() + REMOVE_ACK_WAIT_S
        while (  # noqa: ASYNC110 - polls the outbox the agent drains, with a deadline
            mine
            and node.outbox
            and time.monotonic() < deadline
            and self.nodes.state_of(node) == "online"
        ):
            await asyncio.sleep(REMOVE_ACK_POLL_S)
        now = time.time()
        async with self.db.transaction() as s:
            for a in mine:
                r = await s.get(JobRow, a.job_id)
                if r is not None:
                    self._interrupt(r, f"node {name} was removed by an admin", now)
        await self.nodes.remove(name)
        self.kick()
        return [a.job_id for a in mine]

    # ---------------------------------------------------------------- logs
    async def append_log(self, node: LiveNode, chunk: w.LogChunk) -> int:
        a = self._active.get(chunk.job_id)
        if a is None or a.node_id != node.id:
            async with self.db.session() as s:
                r = await s.get(JobRow, chunk.job_id)
            if r is None or r.node != node.name:
                raise PermissionDenied(f"job {chunk.job_id} does not run on node {node.name}")
        return self.logs.append(chunk.job_id, chunk.attempt, chunk.offset, chunk.data)

    async def _readable(self, p: Principal, job_id: int) -> JobRow:
        async with self.db.session() as s:
            r = await s.get(JobRow, job_id)
        if r is None:
            raise NotFound(f"no job {job_id}")
        if not self._may_see_private(p, r):
            raise PermissionDenied(
                f"job {job_id} belongs to {r.user}: only its owner and admins read its log"
            )
        return r

    async def log_stream(
        self, p: Principal, job_id: int, offset: int, limit: int | None
    ) -> tuple[int, AsyncIterator[bytes]]:
        r = await self._readable(p, job_id)
        return self.logs.size(job_id, r.attempt), self.logs.stream(job_id, r.attempt, offset, limit)

    async def follow(
        self, p: Principal, job_id: int, offset: int
    ) -> AsyncIterator[tuple[str, str, int]]:
        """(event, text, byte offset after it): 'log' with new output, 'attempt' when a retry
        starts a new log, then 'end' with the final state.

        Bytes are decoded incrementally, so a UTF-8 character split between two blocks
        arrives whole; the offset lets a client resume exactly where it stopped.
        """
        r = await self._readable(p, job_id)
        attempt = r.attempt
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            async for block in self.logs.stream(job_id, attempt, offset):
                offset += len(block)
                text = decoder.decode(block)
                if text:
                    yield "log", text, offset
            state, cur_attempt = await self._state_of(job_id)
            if cur_attempt != attempt:
                attempt, offset = cur_attempt, 0
                decoder.reset()
                yield "attempt", str(cur_attempt), 0
                continue
            if state in api.FINAL_STATES and offset >= self.logs.size(job_id, attempt):
                tail = decoder.decode(b"", final=True)
                if tail:
                    yield "log", tail, offset
                yield "end", state, offset
                return
            await self.logs.wait(job_id, FOLLOW_POLL_S)

    async def _state_of(self, job_id: int) -> tuple[str, int]:
        if job_id in self._final_states:
            async with self.db.session() as s:
                r = await s.get(JobRow, job_id)
            return (r.state, r.attempt) if r else ("cancelled", 0)
        a = self._active.get(job_id)
        if a is not None:
            return a.state, a.attempt
        async with self.db.session() as s:
            r = await s.get(JobRow, job_id)
        return (r.state, r.attempt) if r else ("cancelled", 0)

    # ---------------------------------------------------------------- summary
    async def summary(self) -> api.LabSummary:
        now = time.time()
        online = total = busy = 0
        holders = self.gpu_holders()
        for n in self.nodes.nodes.values():
            st = self.nodes.state_of(n, now)
            if st in ("online", "draining"):
                online += 1
            mine = holders.get(n.id, {})
            for g in n.gpus:
                total += 1
                if g.index in mine or g.processes or g.error:
                    busy += 1
        by_user: dict[str, int] = {}
        running = 0
        for a in self._active.values():
            by_user[a.user] = by_user.get(a.user, 0) + a.gpu_count
            running += 1
        return api.LabSummary(
            nodes_online=online,
            nodes_total=len(self.nodes.nodes),
            gpus_total=total,
            gpus_busy=busy,
            jobs_running=running,
            jobs_queued=len(self._pending),
            gpus_by_user={u: g for u, g in by_user.items() if g},
        )

    async def refresh_users(self) -> None:
        async with self.db.session() as s:
            await self._load_users(s)
        self.kick()

    async def flush_usage(self) -> None:
        now = time.time()
        self._update_usage(now)
        if not self._usage:
            return
        async with self.db.transaction() as s:
            for user, hours in self._usage.items():
                rec = await s.get(UsageRecord, user)
                if rec is None:
                    s.add(UsageRecord(user=user, gpu_hours=hours, updated_at=now))
                else:
                    rec.gpu_hours, rec.updated_at = hours, now


def _node_accounts(info: w.NodeInfo) -> frozenset[str] | None:
    """Whose jobs a node takes by account name (see accounts.py on the agent): None when
    it takes anyone's (every job runs as one account there, or it has a default account for
    users without one); an agent that runs as root and predates the account list takes
    only mapped users' jobs."""
    if not info.runs_as_root or info.job_account or info.default_unix_user:
        return None
    return frozenset(info.unix_users)
