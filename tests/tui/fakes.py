"""TEST DOUBLE: a fake master for the dashboard.

``FakeSource`` holds canned, deterministic structs so snapshot tests (and the benchmark,
when the master's node/job routes are missing) can drive the real app without a network.
Behaviour tests against a real master live in ``test_real_master.py``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path

from mlsm import errors
from mlsm.wire import api
from mlsm.wire import usage as wu
from mlsm.wire.agent import GpuProcess, GpuSample, HostSample, NodeInfo
from mlsm.wire.channels import ForwardInfo
from mlsm.wire.events import Event
from mlsm.wire.follow import LogEnded, LogEvent, from_sse
from mlsm.wire.outputs import OutputEntry, OutputListing
from tui.outputs import Downloaded, OutputText
from tui.source import OUTPUT_VIEW_BYTES, DataSource

NOW = 1_750_000_000.0  # frozen clock of every fake lab
#: (user, GPU-hours, jobs) of the fake lab's usage report.
USAGE_ROWS = [("alice", 412.5, 37), ("bob", 201.0, 122), ("carol", 66.25, 9), ("admin", 3.0, 2)]
GIB = 1 << 30


def _gpu(
    index: int,
    util: float,
    mem_gib: float,
    *,
    name: str = "NVIDIA A100-SXM4-80GB",
    total_gib: float = 80,
    procs: list[GpuProcess] | None = None,
) -> GpuSample:
    return GpuSample(
        index=index,
        name=name,
        uuid=f"GPU-{index:04d}",
        mem_total=int(total_gib * GIB),
        mem_used=int(mem_gib * GIB),
        util=util,
        temperature=40 + util / 3,
        power_w=60 + util * 3,
        power_limit_w=400,
        processes=procs or [],
        simulated=True,
    )


def make_node(
    i: int, *, gpus: int = 8, state: str = "online", draining: bool = False, load: float = 0.5
) -> api.Node:
    views = []
    for g in range(gpus):
        util = ((i * 37 + g * 53) % 100) * load * 2 if load else 0.0
        util = min(util, 100.0)
        busy = util > 30
        procs = (
            [
                GpuProcess(
                    pid=1000 + i * 10 + g,
                    used_mem=int(20 * GIB),
                    user="alice",
                    name="python",
                    job_id=100 + i,
                )
            ]
            if busy
            else []
        )
        views.append(
            api.GpuView(
                sample=_gpu(g, util, 20.0 if busy else 0.5, procs=procs),
                job_ids=[100 + i] if busy else [],
                busy=busy,
            )
        )
    return api.Node(
        id=i,
        name=f"gpu{i:03d}",
        state=state,
        draining=draining,
        last_seen=NOW - 2,
        registered_at=NOW - 86400,
        labels={"rack": f"r{i % 4}"},
        info=NodeInfo(
            hostname=f"gpu{i:03d}.lab",
            os="Debian GNU/Linux 12",
            arch="x86_64",
            cpu_model="AMD EPYC 7742",
            cpu_cores=128,
            mem_total=512 * GIB,
            gpu_probe="simulated",
            driver_version="550.54",
            cuda_version="12.4",
        ),
        host=HostSample(
            ts=NOW,
            cpu_percent=(i * 17) % 100,
            load1=3.2,
            mem_total=512 * GIB,
            mem_used=int(((i * 29) % 100) / 100 * 512 * GIB),
        ),
        gpus=views,
        running_jobs=sum(1 for v in views if v.busy),
    )


def small_lab() -> tuple[list[api.Node], list[api.Job]]:
    """Three nodes and a dozen jobs: what the snapshots show."""
    a = make_node(1, gpus=8, load=0.6)
    b = make_node(2, gpus=2, load=0.3)
    b.gpus[1].sample.processes.append(
        GpuProcess(pid=4242, used_mem=6 * GIB, user="mallory", name="jupyter")
    )
    b.gpus[1].foreign = True
    b.gpus[1].busy = True
    c = make_node(3, gpus=4, state="offline", load=0)
    c.host = None
    d = make_node(4, gpus=0, draining=True)
    d.gpu_error = "no NVIDIA driver"
    states = [
        "running",
        "running",
        "queued",
        "queued",
        "held",
        "succeeded",
        "failed",
        "cancelled",
        "running",
        "interrupted",
        "assigned",
        "queued",
    ]
    users = ["alice", "bob", "carol", "admin"]
    jobs = []
    for k, state in enumerate(states):
        jid = 100 + k
        node = ["gpu001", "gpu002", None][k % 3] if state not in ("queued", "held") else None
        started = NOW - 3600 + k * 60 if state not in ("queued", "held") else None
        ended = NOW - 60 if state in api.FINAL_STATES else None
        jobs.append(
            api.Job(
                id=jid,
                name=f"train-{k}",
                user=users[k % 4],
                state=state,
                argv=["python", "train.py", f"--seed={k}"],
                created_at=NOW - 7200 + k * 60,
                gpus=1 + k % 2,
                node=node,
                gpu_indices=[k % 2] if node else [],
                reason={
                    "queued": "waiting for 2 free GPUs",
                    "held": "held by user",
                    "failed": "exit code 1",
                    "cancelled": "cancelled by bob",
                }.get(state, ""),
                exit_code=1 if state == "failed" else (0 if state == "succeeded" else None),
                started_at=started,
                ended_at=ended,
                log_size=120,
                history=[
                    api.JobEvent(ts=NOW - 7200 + k * 60, state="queued", message="submitted"),
                    *(
                        [api.JobEvent(ts=started, state="running", message=f"on {node}")]
                        if started and node
                        else []
                    ),
                ],
            )
        )
    return [a, b, c, d], jobs


def big_lab(nodes: int = 100, jobs: int = 1000) -> tuple[list[api.Node], list[api.Job]]:
    ns = [make_node(i, gpus=8) for i in range(1, nodes + 1)]
    js = [
        api.Job(
            id=i,
            name=f"job-{i}",
            user=f"user{i % 20}",
            state="running" if i % 3 == 0 else "queued",
            argv=["python", "x.py"],
            created_at=NOW - i,
            node=f"gpu{i % nodes + 1:03d}" if i % 3 == 0 else None,
            gpus=1,
        )
        for i in range(1, jobs + 1)
    ]
    return ns, js


class FakeSource(DataSource):
    """TEST DOUBLE of a master: canned structs, mutations recorded in ``calls``."""

    def __init__(
        self,
        *,
        role: str = "admin",
        user: str = "admin",
        lab: tuple[list[api.Node], list[api.Job]] | None = None,
    ) -> None:
        self.url = "http://fake-master:8765"
        self.role = role
        self.user = user
        self.down = False
        self.token = "t"
        self.calls: list[tuple[str, object]] = []
        self.submit_error: str | None = None
        self.log_lines = 50
        # Each job's output files (path -> bytes), as its node would list and serve them.
        self.output_files: dict[int, dict[str, bytes]] = {
            100: {
                "metrics.json": b'{"loss": 0.25}\n',
                "ckpt/last.pt": b"\x00" * 2048,
                "train.txt": "".join(
                    f"epoch {i} loss {1 / (i + 1):.3f}\n" for i in range(40)
                ).encode(),
            }
        }
        self.follow_queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        nodes, jobs = lab or small_lab()
        self._nodes = {n.name: n for n in nodes}
        self._jobs = {j.id: j for j in jobs}
        self._users = [
            api.User(
                id=1,
                username="admin",
                role="superadmin",
                disabled=False,
                created_at=NOW - 9e5,
                last_login=NOW - 60,
            ),
            api.User(
                id=2,
                username="alice",
                role="member",
                disabled=False,
                created_at=NOW - 8e5,
                unix_user="alice",
                gpu_cap=4,
                last_login=NOW - 3600,
            ),
            api.User(id=3, username="bob", role="admin", disabled=False, created_at=NOW - 7e5),
            api.User(id=4, username="carol", role="member", disabled=True, created_at=NOW - 6e5),
        ]
        self._tokens = [
            api.JoinToken(
                id=1,
                created_by="admin",
                created_at=NOW - 3600,
                expires_at=NOW + 80000,
                uses=5,
                used=2,
                revoked=False,
                note="rack 2",
            )
        ]
        self._datasets = [
            api.Dataset(
                name="imagenet",
                tags=["vision", "large"],
                owner="alice",
                description="ILSVRC 2012",
                used_by=[100],
                copies=[
                    api.DatasetCopy(
                        node="gpu001",
                        path="/data/imagenet",
                        size=150 * GIB,
                        files=1_281_167,
                        modified=NOW - 86400 * 30,
                        node_state="online",
                    ),
                    api.DatasetCopy(
                        node="gpu002",
                        path="/data/imagenet",
                        size=150 * GIB,
                        files=1_281_167,
                        modified=NOW - 86400 * 29,
                        node_state="online",
                    ),
                ],
            ),
            api.Dataset(
                name="wikitext",
                tags=["nlp"],
                copies=[
                    api.DatasetCopy(
                        node="gpu002",
                        path="/data/wikitext",
                        size=500 << 20,
                        files=3,
                        modified=NOW - 7200,
                        node_state="online",
                    )
                ],
            ),
        ]
        self._transfers = [
            api.Transfer(
                id=7,
                kind="import",
                dataset="coco",
                node="gpu001",
                state="running",
                done_bytes=9 * GIB,
                total_bytes=20 * GIB,
                rate_bps=110e6,
                created_at=NOW - 90,
                message="downloading",
            )
        ]
        self._events = [
            Event(id=i + 1, ts=NOW - 300 + i * 20, kind=k, message=m, user=u, job_id=j, node=n)
            for i, (k, m, u, j, n) in enumerate(
                [
                    ("node.online", "node gpu001 is online", "", None, "gpu001"),
                    ("job.submitted", "job 100 (train-resnet) submitted", "alice", 100, ""),
                    (
                        "job.started",
                        "job 100 (train-resnet) started on gpu001",
                        "alice",
                        100,
                        "gpu001",
                    ),
                    ("node.stale", "node gpu003 is stale", "", None, "gpu003"),
                    (
                        "job.idle_warning",
                        "job 101 (notebook) is idle: its GPUs stayed below 5% for 60 min: "
                        "it will be cancelled in 30 min unless they get busy",
                        "bob",
                        101,
                        "gpu002",
                    ),
                    ("job.failed", "job 102 (eval) failed: exit code 1", "alice", 102, "gpu001"),
                    (
                        "node.disk_full",
                        "node gpu002: /data is 93% full (threshold 90%)",
                        "",
                        None,
                        "gpu002",
                    ),
                ]
            )
        ]
        self._audit = [
            api.AuditEntry(
                id=i,
                ts=NOW - 600 + i * 10,
                actor="admin",
                role="superadmin",
                action=a,
                target=t,
                outcome="ok",
                client="127.0.0.1",
                request_id=f"r{i}",
            )
            for i, (a, t) in enumerate(
                [
                    ("user.create", "alice"),
                    ("user.create", "bob"),
                    ("join_token.create", "1"),
                    ("node.drain", "gpu004"),
                ],
                1,
            )
        ]

    def _check(self) -> None:
        if self.down:
            raise errors.UnavailableError(f"cannot reach the master at {self.url}: ConnectError")

    def set_token(self, token: str) -> None:
        self.token = token

    async def login(self, username: str, password: str) -> api.LoginReply:
        self._check()
        if password != "correct-horse":
            raise errors.AuthenticationError("wrong user name or password")
        self.token = "t"
        self.user = username
        return api.LoginReply(token="t", username=username, role=self.role, expires_at=NOW + 3600)

    async def me(self) -> api.Me:
        self._check()
        if not self.token:
            raise errors.AuthenticationError("not logged in")
        return api.Me(username=self.user, role=self.role, token_kind="session")

    async def summary(self) -> api.LabSummary:
        self._check()
        nodes = list(self._nodes.values())
        by_user: dict[str, int] = {}
        for j in self._jobs.values():
            if j.state == "running":
                by_user[j.user] = by_user.get(j.user, 0) + j.gpus
        return api.LabSummary(
            nodes_online=sum(n.state == "online" for n in nodes),
            nodes_total=len(nodes),
            gpus_total=sum(len(n.gpus) for n in nodes),
            gpus_busy=sum(g.busy for n in nodes for g in n.gpus),
            jobs_running=sum(j.state == "running" for j in self._jobs.values()),
            jobs_queued=sum(j.state == "queued" for j in self._jobs.values()),
            gpus_by_user=by_user,
        )

    async def nodes(self) -> list[api.Node]:
        self._check()
        return list(self._nodes.values())

    async def node(self, name: str) -> api.Node:
        self._check()
        if name not in self._nodes:
            raise errors.NotFound(f"no node {name!r}")
        return self._nodes[name]

    async def node_history(self, name: str, window_s: int = 600) -> api.NodeHistory:
        self._check()
        node = self._nodes[name]
        series: dict[str, list[api.HistoryPoint]] = {}
        for g in node.gpus:
            for key in ("util", "mem", "temp", "power"):
                series[f"gpu{g.sample.index}.{key}"] = [
                    api.HistoryPoint(
                        ts=NOW - 600 + t * 10,
                        mean=float((t * 7 + g.sample.index * 13) % 100),
                        max=100.0,
                    )
                    for t in range(60)
                ]
        return api.NodeHistory(node=name, resolution_s=10, series=series)

    async def drain(self, name: str) -> api.Node:
        self._check()
        self.calls.append(("drain", name))
        self._nodes[name].draining = True
        return self._nodes[name]

    async def resume(self, name: str) -> api.Node:
        self._check()
        self.calls.append(("resume", name))
        self._nodes[name].draining = False
        return self._nodes[name]

    async def remove_node(self, name: str, force: bool = False) -> None:
        self._check()
        self.calls.append(("remove_node", name))
        self._nodes.pop(name, None)

    async def jobs(
        self,
        *,
        state: str | None = None,
        user: str | None = None,
        node: str | None = None,
        all: bool = True,
        limit: int = 2000,
    ) -> api.JobList:
        self._check()
        out = [
            j
            for j in self._jobs.values()
            if (not state or j.state == state)
            and (not user or j.user == user)
            and (not node or j.node == node)
        ]
        return api.JobList(jobs=out[:limit], total=len(out))

    async def job(self, job_id: int) -> api.Job:
        self._check()
        if job_id not in self._jobs:
            raise errors.NotFound(f"no job {job_id}")
        return self._jobs[job_id]

    async def forwards(self, job_id: int) -> list[ForwardInfo]:
        """Job 100 (alice's, running) has two forwards held open."""
        self._check()
        if job_id != 100:
            return []
        return [
            ForwardInfo(job_id=100, port=8888, user="alice", local="127.0.0.1:8888",
                        opened_at=NOW - 600, connections=2),
            ForwardInfo(job_id=100, port=6006, user="alice", local="127.0.0.1:16006",
                        opened_at=NOW - 60, connections=0),
        ]  # fmt: skip

    def shell_env(self) -> dict[str, str]:
        return {"MLSM_URL": "http://fake-master", "MLSM_TOKEN": "fake-token"}

    async def submit(self, spec: api.JobSubmit) -> api.SubmitReply:
        self._check()
        self.calls.append(("submit", spec))
        if self.submit_error:
            raise errors.ValidationError(self.submit_error)
        jid = max(self._jobs) + 1
        job = api.Job(
            id=jid,
            name=spec.name,
            user=self.user,
            state="queued",
            argv=spec.argv,
            created_at=NOW,
            gpus=spec.gpus,
        )
        self._jobs[jid] = job
        return api.SubmitReply(job=job, ids=[jid])

    async def cancel(self, ids: list[int]) -> api.CancelResult:
        self._check()
        self.calls.append(("cancel", ids))
        for i in ids:
            self._jobs[i].state = "cancelled"
        return api.CancelResult(cancelled=ids)

    async def log(self, job_id: int, offset: int = 0, limit: int = 1 << 20) -> bytes:
        self._check()
        return "".join(
            f"[{job_id}] step {i} loss {1 / (i + 1):.4f}\n" for i in range(self.log_lines)
        ).encode()

    async def follow_log(self, job_id: int, offset: int = 0) -> AsyncIterator[LogEvent]:
        """``(event, data)`` pairs put in ``follow_queue``, typed as the master's SSE are."""
        self._check()
        job = self._jobs[job_id]
        if job.state in api.FINAL_STATES:
            yield LogEnded(state=job.state, offset=0)
            return
        while True:
            kind, data = await self.follow_queue.get()
            event = from_sse(kind, data, "0")
            if event is not None:
                yield event
            if isinstance(event, LogEnded):
                return

    async def outputs(self, job_id: int, path: str = "") -> OutputListing:
        self._check()
        files = self.output_files.get(job_id, {})
        dirs = sorted({p.rsplit("/", 1)[0] for p in files if "/" in p})
        entries = [OutputEntry(path=d, kind="d", mtime=NOW - 60) for d in dirs]
        entries += [
            OutputEntry(path=p, kind="f", size=len(b), mtime=NOW - 30) for p, b in files.items()
        ]
        return OutputListing(
            job_id=job_id, node="gpu-a", entries=sorted(entries, key=lambda e: e.path)
        )

    async def read_output(
        self, job_id: int, path: str, start: int | None, limit: int = OUTPUT_VIEW_BYTES
    ) -> OutputText:
        self._check()
        self.calls.append(("read_output", (job_id, path, start)))
        data = self.output_files[job_id][path]
        begin = max(0, len(data) - limit) if start is None else min(start, len(data))
        return OutputText(data[begin : begin + limit], begin, len(data))

    async def download_outputs(self, job_id: int, paths: list[str], dest: Path) -> Downloaded:
        self._check()
        self.calls.append(("download_outputs", (job_id, list(paths), str(dest))))
        files = self.output_files.get(job_id, {})
        chosen = {
            p: b for p, b in files.items()
            if not paths or any(p == x or p.startswith(x + "/") for x in paths)
        }  # fmt: skip
        for p, b in chosen.items():
            (dest / p).parent.mkdir(parents=True, exist_ok=True)
            (dest / p).write_bytes(b)
        return Downloaded(str(dest), len(chosen), sum(map(len, chosen.values())), 0)

    async def datasets(self, node: str | None = None) -> list[api.Dataset]:
        self._check()
        return [d for d in self._datasets if not node or any(c.node == node for c in d.copies)]

    async def dataset(self, name: str) -> api.Dataset:
        self._check()
        return next(d for d in self._datasets if d.name == name)

    async def import_dataset(self, req: api.DatasetImport) -> api.Transfer:
        self._check()
        self.calls.append(("import", req))
        t = api.Transfer(
            id=8, kind="import", dataset=req.name, node=req.node, state="pending", created_at=NOW
        )
        self._transfers.append(t)
        return t

    async def transfer_dataset(self, req: api.DatasetTransfer) -> api.Transfer:
        self._check()
        self.calls.append(("transfer", req))
        return api.Transfer(
            id=9,
            kind="move" if req.move else "copy",
            dataset=req.name,
            node=req.dst,
            state="pending",
        )

    async def delete_dataset(self, name: str, node: str) -> None:
        self._check()
        self.calls.append(("delete_dataset", (name, node)))

    async def transfers(self) -> list[api.Transfer]:
        self._check()
        return list(self._transfers)

    async def users(self) -> list[api.User]:
        self._check()
        if api.ROLE_RANK[self.role] < 2:
            raise errors.PermissionDenied("admins only")
        return list(self._users)

    async def create_user(self, req: api.UserCreate) -> api.User:
        self._check()
        self.calls.append(("create_user", req))
        user = api.User(
            id=len(self._users) + 1,
            username=req.username,
            role=req.role,
            disabled=False,
            created_at=NOW,
        )
        self._users.append(user)
        return user

    async def update_user(self, name: str, req: api.UserUpdate) -> api.User:
        self._check()
        self.calls.append(("update_user", (name, req)))
        user = next(u for u in self._users if u.username == name)
        if req.role is not None:
            user.role = req.role
        if req.disabled is not None:
            user.disabled = req.disabled
        return user

    async def join_tokens(self) -> list[api.JoinToken]:
        self._check()
        return list(self._tokens)

    async def create_join_token(self, req: api.JoinTokenCreate) -> api.JoinTokenCreated:
        self._check()
        self.calls.append(("create_join_token", req))
        info = api.JoinToken(
            id=2,
            created_by=self.user,
            created_at=NOW,
            expires_at=NOW + req.ttl_s,
            uses=req.uses,
            used=0,
            revoked=False,
            note=req.note,
        )
        self._tokens.append(info)
        return api.JoinTokenCreated(token="jt_SECRET", info=info)

    async def revoke_join_token(self, token_id: int) -> None:
        self._check()
        self.calls.append(("revoke_join_token", token_id))

    async def audit(self, limit: int = 500) -> list[api.AuditEntry]:
        self._check()
        return list(self._audit)

    async def audit_verify(self) -> api.AuditVerify:
        self._check()
        return api.AuditVerify(ok=True, rows=len(self._audit))

    async def events(self, limit: int = 200) -> list[Event]:
        self._check()
        return self._events[-limit:]

    async def usage_report(self, *, since: float, until: float) -> wu.UsageReport:
        """GPU-hours per user; a member gets only their own row (as the master answers)."""
        self._check()
        self.calls.append(("usage_report", (since, until)))
        rows = [
            wu.UsageRow(key=u, gpu_hours=h, util_gpu_hours=h * 0.6, jobs=j, energy_kwh=h * 0.3)
            for u, h, j in USAGE_ROWS
            if self.role != "member" or u == self.user
        ]
        total = wu.UsageRow(
            key="total",
            gpu_hours=sum(r.gpu_hours for r in rows),
            util_gpu_hours=sum(r.util_gpu_hours for r in rows),
            jobs=sum(r.jobs for r in rows),
            energy_kwh=sum(r.energy_kwh for r in rows),
        )
        return wu.UsageReport(
            by="user",
            since=since,
            until=until,
            rows=rows,
            total=total,
            user=self.user if self.role == "member" else "",
        )

    async def usage_timeline(self, *, since: float, until: float, steps: int) -> wu.UsageTimeline:
        self._check()
        step = (until - since) / steps
        ts = [since + k * step for k in range(steps)]
        wave = [50 + 40 * math.sin(k / 5) for k in range(steps)]
        return wu.UsageTimeline(
            since=since,
            until=until,
            step_s=step,
            ts=ts,
            util_total=wave,
            util_by_node={
                "gpu-a": [min(100.0, w + 10) for w in wave],
                "gpu-b": [max(0.0, w - 30) for w in wave],
            },
            queue_length=[(k * 7) % 13 for k in range(steps)],
            wait_median_s=[None if k % 6 == 0 else 60.0 * ((k * 5) % 17) for k in range(steps)],
        )
