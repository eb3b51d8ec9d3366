"""The node registry: joins, heartbeats, node states, the command outbox and long-polls.

Hot state lives in memory (one :class:`~mlsm.master.services.livenode.LiveNode` per node): heartbeats update it and the
telemetry history without touching the database; a flusher writes ``last_seen`` and node
info of changed nodes, and finished history minutes, in one transaction every few seconds.
Commands for agents are written to the database when queued (so a master restart loses
none) and kept in memory until the agent acknowledges them.

What other services must hear about nodes (job reports, transfer progress, a node lost, a
change that may let queued jobs run) goes to
:class:`~mlsm.master.services.livenode.NodeListener` objects, subscribed once
by the service container (:mod:`mlsm.master.services.container`), in that order.

About 400 lines, as one piece: joins, heartbeats, polls, the outbox and the lease watchdog
all read and write the same in-memory node state, and its rules are easier to keep
together (join tokens, the node views and the hot state's type live apart).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import msgspec
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError

from mlsm import MIN_AGENT_PROTOCOL, PROTOCOL_VERSION
from mlsm.config import Settings
from mlsm.errors import (
    AuthenticationError,
    NodeNameTaken,
    NotFound,
    ProtocolMismatch,
    ValidationError,
)
from mlsm.master.db import Database
from mlsm.master.db.models import Command as CommandRow
from mlsm.master.db.models import JoinToken, Node
from mlsm.master.security import Principal, new_token, token_hash
from mlsm.master.services.livenode import LiveNode, NodeListener
from mlsm.master.services.telemetry import History
from mlsm.wire import agent as w
from mlsm.wire.api import NodeState

log = logging.getLogger("mlsm.master.nodes")

FLUSH_INTERVAL_S = 5.0
WATCH_INTERVAL_S = 1.0
PRUNE_INTERVAL_S = 3600.0
_cmd_decoder = msgspec.msgpack.Decoder(w.Command)
# A container network mode an admin may give a node: a name, never "container:<id>".
DOCKER_NETWORK_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NODE_NAME_MAX = 63  # the nodes.name column (and the wire struct) allow this much
_SET_LAST_SEEN = text("UPDATE nodes SET last_seen = :ls WHERE id = :id")


class NodeRegistry:
    def __init__(self, db: Database, settings: Settings, history: History) -> None:
        self.db = db
        self.settings = settings
        self.history = history
        self.nodes: dict[int, LiveNode] = {}
        self.by_name: dict[str, LiveNode] = {}
        self.by_secret: dict[str, LiveNode] = {}
        self._listeners: tuple[NodeListener, ...] = ()
        self.closing = False  # set at shutdown: long-polls answer at once
        #: Bumped whenever what the lab could ever run changes (a node joins or leaves,
        #: its labels, info or datasets change), not when a node merely comes and goes.
        self.shape_version = 0

    def subscribe(self, listener: NodeListener) -> None:
        """Hear node events from now on, after the listeners subscribed before."""
        self._listeners = (*self._listeners, listener)

    def announce_change(self, *, shape: bool = False) -> None:
        """Tell the listeners that queued work may be able to run now: a node came online,
        or (``shape``) joined, left, or changed its labels, info or datasets, which also
        makes verdicts about what the lab could ever run stale (:attr:`shape_version`)."""
        if shape:
            self.shape_version += 1
        for listener in self._listeners:
            listener.node_changed()

    def release_polls(self) -> None:
        """Answer every open long-poll now (the master is stopping; agents retry elsewhere)."""
        self.closing = True
        for n in self.nodes.values():
            n.wake.set()

    # ---------------------------------------------------------------- lifecycle
    async def load(self) -> None:
        async with self.db.session() as s:
            rows = (await s.execute(select(Node).where(Node.removed.is_(False)))).scalars().all()
            cmds = (
                (await s.execute(select(CommandRow).where(CommandRow.acked.is_(False))))
                .scalars()
                .all()
            )
        now = time.time()
        for r in rows:
            n = LiveNode(
                id=r.id,
                name=r.name,
                secret_hash=r.secret_hash,
                labels=dict(r.labels or {}),
                registered_at=r.registered_at,
                draining=r.draining,
                docker_network=r.docker_network,
                info=msgspec.convert(r.info or {}, w.NodeInfo),
                last_seen=r.last_seen,
            )
            # After a master restart a node's lease counts from now: it gets a full lease to
            # reconnect before its jobs are declared lost.
            if n.last_seen is not None:
                n.last_seen = max(n.last_seen, now - self.settings.stale_after)
            self._index(n)
        for c in cmds:
            node = self.nodes.get(c.node_id)
            if node is None:
                continue
            try:
                node.outbox[c.id] = _cmd_decoder.decode(c.body)
            except (msgspec.DecodeError, msgspec.ValidationError):
                # A command of a kind this master no longer sends (a retired copy protocol):
                # it cannot be delivered, and what it served was failed at the restart.
                log.warning("dropping queued command %s (%s): no longer known", c.id, c.kind)

    def _index(self, n: LiveNode) -> None:
        self.nodes[n.id] = n
        self.by_name[n.name] = n
        self.by_secret[n.secret_hash] = n

    def _unindex(self, n: LiveNode) -> None:
        self.nodes.pop(n.id, None)
        self.by_name.pop(n.name, None)
        self.by_secret.pop(n.secret_hash, None)

    async def run_background(self) -> None:
        """Flusher + lease watchdog; runs for the master's lifetime."""
        last_flush = last_prune = time.monotonic()
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                await self._watch()
                mono = time.monotonic()
                if mono - last_flush >= FLUSH_INTERVAL_S:
                    last_flush = mono
                    await self.flush()
                if mono - last_prune >= PRUNE_INTERVAL_S:
                    last_prune = mono
                    await self.history.prune()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("node registry background step failed; carrying on")

    async def flush(self) -> None:
        seen = [{"ls": n.last_seen, "id": n.id} for n in self.nodes.values() if n.dirty]
        infos = [n for n in self.nodes.values() if n.info_dirty]
        if seen or infos:
            for n in self.nodes.values():
                n.dirty = False
            async with self.db.transaction() as s:
                if seen:  # one executemany for every node that heartbeated
                    await s.execute(_SET_LAST_SEEN, seen)
                for n in infos:
                    n.info_dirty = False
                    await s.execute(
                        update(Node).where(Node.id == n.id).values(info=msgspec.to_builtins(n.info))
                    )
        await self.history.flush()

    async def _watch(self) -> None:
        now = time.time()
        for n in list(self.nodes.values()):
            if n.last_seen is None or n.lost:
                continue
            if now - n.last_seen > self.settings.node_lease:
                n.lost = True
                log.warning(
                    "node %s missed its lease (%.0f s): offline", n.name, self.settings.node_lease
                )
                for listener in self._listeners:
                    await listener.node_lost(n)

    # ---------------------------------------------------------------- states
    def state_of(self, n: LiveNode, now: float | None = None) -> NodeState:
        now = now or time.time()
        if n.last_seen is None:
            return "offline"
        age = now - n.last_seen
        if age > self.settings.node_lease:
            return "offline"
        if age > self.settings.stale_after:
            return "stale"
        return "draining" if n.draining else "online"

    def schedulable(self, n: LiveNode, now: float | None = None) -> bool:
        return self.state_of(n, now) == "online"

    def get(self, name: str) -> LiveNode:
        n = self.by_name.get(name)
        if n is None:
            raise NotFound(f"no node named {name!r}")
        return n

    # ---------------------------------------------------------------- agent calls
    def check_protocol(self, version: int) -> None:
        if not MIN_AGENT_PROTOCOL <= version <= PROTOCOL_VERSION:
            raise ProtocolMismatch(
                f"this master speaks agent protocol {MIN_AGENT_PROTOCOL}..{PROTOCOL_VERSION}, the agent "
                f"speaks {version}: install the same mlsm version on the agent and the master"
            )

    async def register(self, req: w.RegisterRequest) -> w.RegisterReply:
        self.check_protocol(req.protocol)
        secret_token = req.join_token.split("@", 1)[0]
        now = time.time()
        node_secret = new_token("node")
        async with self.db.transaction() as s:
            jt = (
                await s.execute(
                    select(JoinToken).where(JoinToken.token_hash == token_hash(secret_token))
                )
            ).scalar_one_or_none()
            if jt is None:
                raise AuthenticationError(
                    "unknown join token: ask an admin for a new one (mlsm join-token create)"
                )
            if jt.revoked:
                raise AuthenticationError("this join token was revoked")
            if jt.expires_at <= now:
                raise AuthenticationError("this join token has expired: ask an admin for a new one")
            if jt.used >= jt.uses:
                raise AuthenticationError(f"this join token is used up ({jt.uses} uses)")
            existing = (
                await s.execute(select(Node).where(Node.name == req.name))
            ).scalar_one_or_none()
            if existing is not None and not existing.removed:
                # Online or not: a registered node's name (and with it the jobs pinned to it,
                # their environments and its datasets) is never handed to another join.
                raise _name_taken(req.name)
            if existing is not None:  # a removed node's name is free again
                existing.name = removed_name(existing.id, existing.name)
                await s.flush()
            row = Node(
                name=req.name,
                secret_hash=token_hash(node_secret),
                labels=dict(req.labels),
                info=msgspec.to_builtins(req.info),
                registered_at=now,
                join_token_id=jt.id,
            )
            s.add(row)
            jt.used += 1
            try:
                await s.flush()
            except IntegrityError:  # a concurrent join took the name first
                raise _name_taken(req.name) from None
            node_id, name = row.id, row.name
        n = LiveNode(
            id=node_id,
            name=name,
            secret_hash=token_hash(node_secret),
            labels=dict(req.labels),
            registered_at=now,
            info=req.info,
        )
        self._index(n)
        log.info("node %s (id %s) joined", name, node_id)
        self.announce_change(shape=True)
        return w.RegisterReply(
            node_id=node_id,
            name=name,
            node_secret=node_secret,
            heartbeat_interval=self.settings.heartbeat_interval,
            lease=self.settings.node_lease,
        )

    def node_for(self, principal: Principal) -> LiveNode:
        n = self.nodes.get(principal.node_id or -1)
        if n is None:
            raise AuthenticationError("this node was removed: join it again with a new join token")
        return n

    def resolve_secret(self, secret: str) -> Principal | None:
        n = self.by_secret.get(token_hash(secret))
        if n is None:
            return None
        return Principal(kind="node", name=n.name, role="node", node_id=n.id)

    async def heartbeat(self, n: LiveNode, hb: w.Heartbeat) -> w.HeartbeatReply:
        self.check_protocol(hb.protocol)
        now = time.time()
        came_back = n.last_seen is None or self.state_of(n, now) in ("offline", "stale") or n.lost
        n.last_seen = now
        n.lost = False
        n.protocol = hb.protocol
        info_changed = hb.info is not None and hb.info != n.info
        if hb.info is not None and info_changed:
            n.info = hb.info
            n.info_dirty = True
        n.host = hb.host
        n.gpus = hb.gpus
        n.gpu_error = hb.gpu_error
        n.seq += 1
        n.dirty = True
        self.history.record(n.id, now, hb.host, hb.gpus)
        want_catalog = bool(hb.datasets_digest) and hb.datasets_digest != n.datasets_digest
        if hb.jobs or n.jobs or n.has_work:
            n.jobs = {r.job_id: r for r in hb.jobs}
            for listener in self._listeners:
                await listener.node_reported(n, hb.jobs, True)
        if hb.transfers:
            for listener in self._listeners:
                await listener.node_transfers(n, hb.transfers)
        if came_back:
            log.info("node %s is online", n.name)
        if came_back or info_changed:  # info: runtimes, accounts, size, what it can run
            self.announce_change(shape=info_changed)
        return w.HeartbeatReply(
            heartbeat_interval=self.settings.heartbeat_interval,
            lease=self.settings.node_lease,
            want_full_catalog=want_catalog,
            drain=n.draining,
        )

    async def events(self, n: LiveNode, reports: list[w.JobReport]) -> None:
        n.last_seen = time.time()
        for r in reports:
            n.jobs[r.job_id] = r
        n.seq += 1
        for listener in self._listeners:
            await listener.node_reported(n, reports, False)

    # ---------------------------------------------------------------- commands
    async def enqueue(self, node_id: int, kind: type[Any], **fields: Any) -> int:
        """Persist a command (its id comes from the database) and wake the node's long-poll."""
        (cmd_id,) = await self.enqueue_many([(node_id, kind, fields)])
        return cmd_id

    async def enqueue_many(self, items: list[tuple[int, type[Any], dict[str, Any]]]) -> list[int]:
        """Persist commands ``(node id, kind, fields)`` in one transaction, in order, and
        wake their nodes' long-polls: a pass that starts or stops a thousand jobs writes
        one transaction, not a thousand. Their ids, in the same order."""
        if not items:
            return []
        now = time.time()
        async with self.db.transaction() as s:
            rows = [
                CommandRow(node_id=nid, kind="", body=b"", created_at=now) for nid, _, _ in items
            ]
            s.add_all(rows)
            await s.flush()
            cmds = []
            for row, (_, kind, fields) in zip(rows, items, strict=True):
                cmd = kind(id=row.id, **fields)
                row.kind = type(cmd).__name__
                row.body = w.encoder.encode(cmd)
                cmds.append(cmd)
        for row, cmd in zip(rows, cmds, strict=True):
            n = self.nodes.get(row.node_id)
            if n is not None:
                n.outbox[row.id] = cmd
                n.has_work |= isinstance(cmd, w.StartJob)
                n.wake.set()
        return [row.id for row in rows]

    async def poll(self, n: LiveNode, req: w.CommandPoll) -> w.CommandBatch:
        n.last_seen = time.time()
        if req.ack:
            acked = [i for i in req.ack if i in n.outbox]
            for i in acked:
                n.outbox.pop(i, None)
            if acked:
                async with self.db.transaction() as s:
                    await s.execute(
                        update(CommandRow).where(CommandRow.id.in_(acked)).values(acked=True)
                    )
        if not n.outbox and req.wait_s > 0 and not self.closing:
            n.wake.clear()
            try:
                await asyncio.wait_for(n.wake.wait(), timeout=req.wait_s)
            except TimeoutError:
                pass
        # No last_seen here: a poll that outlived its agent (killed mid-wait) proves nothing.
        return w.CommandBatch(commands=[n.outbox[k] for k in sorted(n.outbox)])

    # ---------------------------------------------------------------- admin actions
    async def set_draining(self, name: str, draining: bool) -> LiveNode:
        n = self.get(name)
        n.draining = draining
        async with self.db.transaction() as s:
            await s.execute(update(Node).where(Node.id == n.id).values(draining=draining))
        if not draining:
            self.announce_change()
        return n

    async def set_labels(self, name: str, labels: dict[str, str]) -> LiveNode:
        n = self.get(name)
        n.labels = dict(labels)
        async with self.db.transaction() as s:
            await s.execute(update(Node).where(Node.id == n.id).values(labels=n.labels))
        self.announce_change(shape=True)
        return n

    async def set_docker_network(self, name: str, network: str) -> LiveNode:
        """The network mode of the node's container jobs (``none``, ``host``, ``bridge`` or
        the name of a network on its engine); jobs started from now on get it."""
        if not DOCKER_NETWORK_RE.fullmatch(network):
            raise ValidationError(
                f"docker network {network!r}: expected none, host, bridge or a network name "
                "(letters, digits, '_', '.', '-')",
                path="docker_network",
            )
        n = self.get(name)
        async with self.db.transaction() as s:
            await s.execute(update(Node).where(Node.id == n.id).values(docker_network=network))
        n.docker_network = network
        return n

    async def remove(self, name: str) -> LiveNode:
        n = self.get(name)
        async with self.db.transaction() as s:
            await s.execute(update(Node).where(Node.id == n.id).values(removed=True))
            await s.execute(update(CommandRow).where(CommandRow.node_id == n.id).values(acked=True))
        self._unindex(n)
        self.history.forget(n.id)
        n.wake.set()
        self.announce_change(shape=True)
        return n


def removed_name(node_id: int, name: str) -> str:
    """The name a removed node's row keeps once its name is reused: unique (it has the id)
    and never a valid node name (those start with a letter or digit), within the column."""
    return f"~removed-{node_id}~{name}"[:NODE_NAME_MAX]


def _name_taken(name: str) -> NodeNameTaken:
    return NodeNameTaken(
        f"the name {name!r} belongs to a registered node: an admin must remove it first "
        f"(`mlsm node remove {name}`), or start this agent with another --name",
        details={"name": name},
    )
