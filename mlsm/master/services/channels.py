"""Shells and port forwards into running jobs, relayed between two WebSockets.

A person's tool opens a WebSocket to the master (``/api/v1/jobs/{id}/shell``, or
``.../forwards/{port}/connect`` for one forwarded TCP connection); :meth:`Channels.open`
checks who may (the job's owner and admins: another member is refused with 403, and the
refusal is audited), that the job runs on a node that is online and whose agent knows
``open_channel``, then sends the node :class:`~mlsm.wire.channels.OpenChannel` over its
command long-poll and waits up to ``channel_open_timeout`` for the agent to dial
``/agent/v1/channels/{channel_id}`` (:meth:`Channels.attach`: only the node the channel
was opened for may take it, and only once). :meth:`Channel.splice` then copies messages
both ways until either side ends.

Bounded: each direction holds one message at a time (at most
:data:`~mlsm.wire.channels.MAX_MESSAGE` bytes, which uvicorn enforces as the socket's
``ws_max_size``) and reads the next only once the other side took it, so a slow reader
holds back the writer through TCP, never the master's memory. Control messages from a
person are checked: only ``resize`` and ``eof`` pass.

Ends: the job ends (its node reports it, or the node is lost) -> its channels are closed
with a message saying so; the master stops -> uvicorn closes every socket (the CLI says
the master went away; the job keeps running); the agent's side ends -> the person's side
is told the shell's exit status. A session (``kind="session"``) whose last shell leaves is
ended unless it was started with ``--keep``. Every shell opened and closed is audited
(``job.shell.open`` / ``job.shell.close``), and so is every forward held open
(``job.forward.open`` / ``job.forward.close``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from mlsm import COMMAND_SINCE, errors
from mlsm.master.db import Database
from mlsm.master.db.models import Job as JobRow
from mlsm.master.security import Principal
from mlsm.master.services.jobs.table import JobTable
from mlsm.master.services.jobs.views import may_see_private
from mlsm.master.services.livenode import LiveNode, NodeEvents
from mlsm.master.services.nodes import NodeRegistry
from mlsm.wire import agent as w
from mlsm.wire import channels as wc

log = logging.getLogger("mlsm.master.channels")

CHANNEL_ID_BYTES = 18  # random bytes of a channel id (no secret: the agent's side is node-checked)
END_WAIT_S = 5.0  # how long a closing splice waits for the other side's close


class Socket(Protocol):
    """The part of a Litestar ``WebSocket`` a splice uses."""

    def receive(self) -> Awaitable[Any]: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


AuditFn = Callable[..., Awaitable[None]]


@dataclass(eq=False)
class Channel:
    """One relayed stream (see the module docstring)."""

    id: str
    kind: wc.ChannelKind
    job_id: int
    node_id: int
    node_name: str
    user: str
    port: int = 0
    session: bool = False  # the job is a session that ends with its last shell
    opened_at: float = field(default_factory=time.time)
    exit_code: int | None = None
    bytes_in: int = 0  # from the person
    bytes_out: int = 0  # to the person
    end_reason: str = ""
    _agent: asyncio.Future[Socket] = field(default_factory=lambda: asyncio.Future())
    _done: asyncio.Event = field(default_factory=asyncio.Event)
    _ending: str = ""  # set when the master ends the channel (the job ended)
    _person: Socket | None = None

    # ---------------------------------------------------------------- the agent's side
    async def agent_connected(self, ws: Socket) -> None:
        """Hand the agent's socket over, and hold it until the splice is done."""
        if self._agent.done():
            raise errors.Conflict(f"channel {self.id} is already connected")
        self._agent.set_result(ws)
        await self._done.wait()

    async def wait_agent(self, timeout: float) -> Socket:
        try:
            return await asyncio.wait_for(asyncio.shield(self._agent), timeout)
        except TimeoutError:
            raise errors.UnavailableError(
                f"node {self.node_name} did not connect the {self.kind} within {timeout:g} s "
                "(its agent may be busy or cut off from the master)",
                details={"node": self.node_name},
            ) from None

    # ---------------------------------------------------------------- splice
    async def splice(self, person: Socket) -> None:
        """Copy both ways until one side ends; both sockets are closed when it returns."""
        self._person = person
        agent = self._agent.result()
        up = asyncio.create_task(self._person_to_agent(person, agent))
        down = asyncio.create_task(self._agent_to_person(agent, person))
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (up, down):
                t.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            with contextlib.suppress(Exception):
                await agent.close(wc.NORMAL_CLOSE)
            self._done.set()
        code = wc.NORMAL_CLOSE
        if self._ending:
            await self._say(person, errors.Conflict(self._ending))
            code = wc.close_code(errors.Conflict.status)
        with contextlib.suppress(Exception):
            await person.close(code)

    async def _person_to_agent(self, person: Socket, agent: Socket) -> None:
        while True:
            msg = await person.receive()
            if msg["type"] != "websocket.receive":
                self.end_reason = self.end_reason or "the person's side closed"
                return
            data = msg.get("bytes")
            if data is not None:
                self.bytes_in += len(data)
                await agent.send_bytes(data)
                continue
            text = msg.get("text") or ""
            try:
                ctl = wc.decode_control(text)
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.debug("channel %s: dropped a malformed control message", self.id)
                continue
            if isinstance(ctl, wc.FromPerson):
                await agent.send_text(wc.encode_control(ctl))

    async def _agent_to_person(self, agent: Socket, person: Socket) -> None:
        while True:
            msg = await agent.receive()
            if msg["type"] != "websocket.receive":
                if self.exit_code is None and self.kind == "shell" and not self._ending:
                    self._ending = f"the connection to node {self.node_name} was lost"
                self.end_reason = self.end_reason or "the node's side closed"
                return
            data = msg.get("bytes")
            if data is not None:
                self.bytes_out += len(data)
                await person.send_bytes(data)
                continue
            text = msg.get("text") or ""
            try:
                ctl = wc.decode_control(text)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if isinstance(ctl, wc.Exit):
                self.exit_code = ctl.code
            await person.send_text(wc.encode_control(ctl))

    @staticmethod
    async def _say(ws: Socket, exc: errors.MlsmError) -> None:
        with contextlib.suppress(Exception):
            await ws.send_text(wc.encode_control(wc.Error(code=exc.code, message=exc.message)))

    def end(self, why: str) -> None:
        """End the channel from the master's side (the job ended): both sockets close."""
        if not self._ending:
            self._ending = why
        if self._agent.done():
            agent = self._agent.result()
            asyncio.get_running_loop().create_task(_close_quietly(agent))
        else:
            self._agent.set_exception(errors.Conflict(why))
            self._agent.exception()  # retrieved: nobody else may wait for it


async def _close_quietly(ws: Socket) -> None:
    with contextlib.suppress(Exception):
        await ws.close(wc.NORMAL_CLOSE)


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
