"""The open channels and forwards: who may open one, into which job, and when they end
(the package docstring, :mod:`mlsm.master.services.channels`, tells the whole flow)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mlsm import COMMAND_SINCE, errors
from mlsm.master.db import Database
from mlsm.master.db.models import Job as JobRow
from mlsm.master.security import Principal
from mlsm.master.services.channels.relay import Channel
from mlsm.master.services.jobs.table import JobTable
from mlsm.master.services.jobs.views import may_see_private
from mlsm.master.services.livenode import LiveNode, NodeEvents
from mlsm.master.services.nodes import NodeRegistry
from mlsm.wire import agent as w
from mlsm.wire import channels as wc

log = logging.getLogger("mlsm.master.channels")

AuditFn = Callable[..., Awaitable[None]]

CHANNEL_ID_BYTES = 18  # random bytes of a channel id (no secret: the agent's side is node-checked)


@dataclass(eq=False)
class ForwardHold:
    """A forward someone holds open (``mlsm forward``): listed on the job, ended with it."""

    job_id: int
    port: int
    user: str
    local: str
    opened_at: float = field(default_factory=time.time)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    why: str = ""

    def end(self, why: str) -> None:
        self.why = self.why or why
        self.ended.set()


class Channels(NodeEvents):
    """The open channels and forwards (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        nodes: NodeRegistry,
        table: JobTable,
        *,
        open_timeout: float,
        audit: AuditFn,
        end_session: Callable[[int, str], Awaitable[None]],
    ) -> None:
        self.db = db
        self.nodes = nodes
        self.table = table
        self.open_timeout = open_timeout
        self._audit = audit
        self._end_session = end_session
        self._open: dict[str, Channel] = {}
        self._forwards: dict[int, list[ForwardHold]] = {}

    # ---------------------------------------------------------------- who, where
    async def _running_job(self, p: Principal, job_id: int, what: str) -> tuple[JobRow, LiveNode]:
        async with self.db.session() as s:
            r = await s.get(JobRow, job_id)
        if r is None:
            raise errors.NotFound(f"no job {job_id}")
        if not may_see_private(p, r):
            raise errors.PermissionDenied(
                f"job {job_id} belongs to {r.user}: only its owner and admins open {what} into it"
            )
        a = self.table.active.get(job_id)
        if r.state != "running" or a is None:
            raise errors.Conflict(
                f"job {job_id} is {r.state}, not running: {what} opens only into a running job",
                details={"state": r.state},
            )
        node = self.nodes.nodes.get(a.node_id)
        if node is None:
            raise errors.Conflict(f"the node of job {job_id} was removed from the lab")
        need = COMMAND_SINCE["open_channel"]
        if node.protocol < need:
            raise errors.Conflict(
                f"the agent on {node.name} is too old for {what} (it speaks protocol "
                f"{node.protocol}, shells and forwards need {need}): upgrade mlsm there",
                details={"node": node.name, "protocol": node.protocol, "needs": need},
            )
        if self.nodes.state_of(node) in ("offline", "stale"):
            raise errors.UnavailableError(
                f"node {node.name}, where job {job_id} runs, is not reachable now",
                details={"node": node.name},
            )
        return r, node

    # ---------------------------------------------------------------- open / attach
    async def open(
        self,
        p: Principal,
        job_id: int,
        kind: wc.ChannelKind,
        *,
        port: int = 0,
        rows: int = 24,
        cols: int = 80,
        term: str = "xterm-256color",
        client: str = "",
    ) -> Channel:
        """A channel whose agent side is connected; raises an :mod:`mlsm.errors` class."""
        what = "a shell" if kind == "shell" else f"a forward to port {port}"
        try:
            r, node = await self._running_job(p, job_id, what)
        except errors.MlsmError as exc:
            if kind == "shell":
                await self._audit_shell(p, job_id, "open", exc=exc, client=client)
            raise
        ch = Channel(
            id=secrets.token_urlsafe(CHANNEL_ID_BYTES),
            kind=kind,
            job_id=job_id,
            node_id=node.id,
            node_name=node.name,
            user=p.name,
            port=port,
            session=r.spec.kind == "session" and not r.spec.session_keep,
        )
        self._open[ch.id] = ch
        try:
            await self.nodes.enqueue(
                node.id,
                wc.OpenChannel,
                channel_id=ch.id,
                what=kind,
                job_id=job_id,
                attempt=r.attempt,
                port=port,
                rows=rows,
                cols=cols,
                term=term,
                user=p.name,
            )
            await ch.wait_agent(self.open_timeout)
        except BaseException as exc:
            self._open.pop(ch.id, None)
            ch._done.set()  # an agent that connected late lets go of its socket
            if kind == "shell" and isinstance(exc, errors.MlsmError):
                await self._audit_shell(p, job_id, "open", exc=exc, client=client, ch=ch)
            raise
        if kind == "shell":
            await self._audit_shell(p, job_id, "open", client=client, ch=ch)
        return ch

    def attach(self, node: LiveNode, channel_id: str) -> Channel:
        """The channel ``node``'s agent may connect now (once)."""
        ch = self._open.get(channel_id)
        if ch is None:
            raise errors.NotFound(f"no channel {channel_id} is waiting (it ended or timed out)")
        if ch.node_id != node.id:
            log.warning("node %s dialled channel %s of node %s", node.name, ch.id, ch.node_name)
            raise errors.PermissionDenied(f"channel {channel_id} is not for node {node.name}")
        return ch

    async def close(self, p: Principal, ch: Channel, client: str = "") -> None:
        """The splice of ``ch`` is over: forget it, audit a shell's end, end a session."""
        self._open.pop(ch.id, None)
        if ch.kind != "shell":
            return
        await self._audit_shell(p, ch.job_id, "close", client=client, ch=ch)
        if ch.session and not ch._ending and not self.shells_of(ch.job_id):
            await self._end_session(ch.job_id, f"session ended: the last shell left ({ch.user})")

    def shells_of(self, job_id: int) -> list[Channel]:
        return [c for c in self._open.values() if c.job_id == job_id and c.kind == "shell"]

    async def _audit_shell(
        self,
        p: Principal,
        job_id: int,
        what: str,
        *,
        exc: errors.MlsmError | None = None,
        client: str = "",
        ch: Channel | None = None,
    ) -> None:
        details: dict[str, Any] = {}
        if ch is not None:
            details |= {"channel": ch.id, "node": ch.node_name}
            if what == "close":
                details |= {
                    "seconds": round(time.time() - ch.opened_at, 1),
                    "bytes_in": ch.bytes_in,
                    "bytes_out": ch.bytes_out,
                }
                if ch.exit_code is not None:
                    details["exit_code"] = ch.exit_code
                if ch._ending:
                    details["ended"] = ch._ending
        outcome = "ok"
        if exc is not None:
            details |= {"status": exc.status, "error": exc.code}
            outcome = "denied" if exc.status in (401, 403) else "failed"
        await self._audit(
            actor=p.name,
            role=str(p.role),
            action=f"job.shell.{what}",
            target=f"job:{job_id}",
            outcome=outcome,
            client=client,
            details=details,
        )

    # ---------------------------------------------------------------- forwards held open
    async def hold_forward(
        self, p: Principal, job_id: int, port: int, local: str, client: str = ""
    ) -> ForwardHold:
        await self._running_job(p, job_id, f"a forward to port {port}")
        hold = ForwardHold(job_id=job_id, port=port, user=p.name, local=local)
        self._forwards.setdefault(job_id, []).append(hold)
        await self._audit_forward(p, hold, "open", client)
        return hold

    async def release_forward(self, p: Principal, hold: ForwardHold, client: str = "") -> None:
        holds = self._forwards.get(hold.job_id, [])
        if hold in holds:
            holds.remove(hold)
        if not holds:
            self._forwards.pop(hold.job_id, None)
        await self._audit_forward(p, hold, "close", client)

    async def _audit_forward(self, p: Principal, hold: ForwardHold, what: str, client: str) -> None:
        details: dict[str, Any] = {"port": hold.port, "local": hold.local}
        if what == "close":
            details["seconds"] = round(time.time() - hold.opened_at, 1)
            if hold.why:
                details["ended"] = hold.why
        await self._audit(
            actor=p.name,
            role=str(p.role),
            action=f"job.forward.{what}",
            target=f"job:{hold.job_id}",
            outcome="ok",
            client=client,
            details=details,
        )

    async def forwards(self, p: Principal, job_id: int) -> list[wc.ForwardInfo]:
        """The forwards held open into a job (its owner and admins)."""
        async with self.db.session() as s:
            r = await s.get(JobRow, job_id)
        if r is None:
            raise errors.NotFound(f"no job {job_id}")
        if not may_see_private(p, r):
            raise errors.PermissionDenied(
                f"job {job_id} belongs to {r.user}: only its owner and admins see its forwards"
            )
        open_by_port: dict[int, int] = {}
        for c in self._open.values():
            if c.job_id == job_id and c.kind == "forward":
                open_by_port[c.port] = open_by_port.get(c.port, 0) + 1
        return [
            wc.ForwardInfo(
                job_id=h.job_id,
                port=h.port,
                user=h.user,
                local=h.local,
                opened_at=h.opened_at,
                connections=open_by_port.get(h.port, 0),
            )
            for h in self._forwards.get(job_id, [])
        ]

    # ---------------------------------------------------------------- jobs that end
    def _end_job(self, job_id: int, why: str) -> None:
        for ch in [c for c in self._open.values() if c.job_id == job_id]:
            ch.end(why)
        for hold in self._forwards.get(job_id, []):
            hold.end(why)

    async def node_reported(self, node: LiveNode, reports: list[w.JobReport], full: bool) -> None:
        for r in reports:
            if r.state in ("exited", "failed_to_start", "lost"):
                self._end_job(r.job_id, f"job {r.job_id} ended ({r.reason or r.state})")
        if full:
            running = {r.job_id for r in reports}
            for ch in list(self._open.values()):
                if ch.node_id == node.id and ch.job_id not in running:
                    self._end_job(ch.job_id, f"job {ch.job_id} no longer runs on {node.name}")
        for job_id in [j for j in self._forwards if j not in self.table.active]:
            self._end_job(job_id, f"job {job_id} ended")

    async def node_lost(self, node: LiveNode) -> None:
        for ch in list(self._open.values()):
            if ch.node_id == node.id:
                self._end_job(ch.job_id, f"node {node.name} was lost")
        for job_id, holds in list(self._forwards.items()):
            a = self.table.active.get(job_id)
            if a is None or a.node_id == node.id:
                for h in holds:
                    h.end(f"node {node.name} was lost")

    def job_ended(self, job_id: int, why: str) -> None:
        """A job left the running state on the master's side (cancelled, timed out)."""
        self._end_job(job_id, why)
