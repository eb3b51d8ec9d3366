"""Transfers: changes to datasets that run on the agents (import, copy, move, delete, digest).

Each is a :class:`~mlsm.master.db.models.Transfer` row plus, while it runs, a
:class:`LiveTransfer` in memory: commands go to agents, progress arrives with their
heartbeats (``TransferProgress`` under the command id, :meth:`Transfers.node_transfers`)
and is kept in memory; the row is written when a transfer starts, changes phase and ends,
never per heartbeat. Starting them is :mod:`.operations`' job, relaying a copy's bytes
:mod:`.relay`'s.

A copy or move runs in phases: ``receive`` (the target pulls the source's manifest and
the files it lacks through the master's relay pipes (:mod:`.relay`), verifies every file
and renames the dataset into place; only its success report, sent after the target's
catalog delta, ends the copy) and, for a move, ``delete-source``. The master keeps no byte
of a copy: a failed or cancelled one leaves nothing here, and the target removes its
work dir.

An import URL may carry a secret (userinfo, a presigned query, a fragment): the full URL
goes only into the agent's ImportDataset command, and is redacted there too once the
import ends. Every message that reaches a transfer row, a view, a log line or an error is
passed through :func:`mlsm.redact.redact_text` where the master takes it in (with the
import's own secrets as literals while it runs), and rows written before that rule are
redacted again when read.

About 400 lines, as one piece: every transfer's life (its row, commands, progress reports
and end) goes through the one in-memory book of running transfers kept here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from sqlalchemy import select
from sqlalchemy.orm import Session

from mlsm.errors import Conflict, NotFound
from mlsm.master.db import Database
from mlsm.master.db.models import Command as CommandRow
from mlsm.master.db.models import Transfer as TransferRow
from mlsm.master.security import Principal
from mlsm.master.services.datasets.catalog import DatasetCatalog
from mlsm.master.services.events.record import record
from mlsm.master.services.livenode import LiveNode, NodeEvents
from mlsm.master.services.nodes import NodeRegistry
from mlsm.redact import redact_text, redact_url, url_secrets
from mlsm.wire import agent as w
from mlsm.wire import api
from mlsm.wire import bulk as wb

log = logging.getLogger("mlsm.master.datasets")

ACTIVE = ("pending", "running")
TRANSFER_LIST_LIMIT = 200
MESSAGE_MAX = 4096  # characters of a transfer's message a row keeps
SINGLE = ("import", "delete", "digest")  # transfers that are one command on one node
_decode_import = msgspec.msgpack.Decoder(w.ImportDataset).decode
_cmd_decoder = msgspec.msgpack.Decoder(w.Command)
#: Transfers that bring a dataset somewhere: their end is an event (deletes and digests not).
EVENT_KINDS_OF_TRANSFERS = ("import", "copy", "move")


def _record_end(s: Session, r: TransferRow) -> None:
    """``dataset.transfer_done`` / ``dataset.transfer_failed`` for a transfer whose row
    now holds its end, in the transaction that writes it (seen by its creator and admins)."""
    if r.kind not in EVENT_KINDS_OF_TRANSFERS or r.state not in ("succeeded", "failed"):
        return
    done = r.state == "succeeded"
    src = f" from {r.src_node}" if r.src_node else ""
    record(
        s,
        "dataset.transfer_done" if done else "dataset.transfer_failed",
        f"dataset {r.dataset}: {r.kind}{src} to {r.node} {'done' if done else 'failed'}: "
        f"{r.message}",
        user=r.created_by,
        node=r.node,
        transfer_id=r.id,
        dataset=r.dataset,
        transfer_kind=r.kind,
        state=r.state,
    )


@dataclass(eq=False)
class LiveTransfer:
    """A transfer in progress: its row's fields plus what only the master's memory holds."""

    id: int
    kind: api.TransferKind
    dataset: str
    node: str  # the target node (import, copy/move destination, delete)
    node_id: int
    created_at: float
    created_by: str = ""
    src_node: str | None = None
    src_id: int | None = None
    src_path: str = ""
    state: api.TransferState = "pending"
    done: int = 0
    total: int | None = None
    rate: float = 0.0
    message: str = ""
    command_id: int | None = None
    phase: str = ""  # copy/move: receive -> delete-source
    phase_started: float = field(default_factory=time.monotonic)
    cmds: dict[int, tuple[str, int]] = field(default_factory=dict)  # cmd id -> (role, node id)
    cancel_by: str = ""  # who asked to cancel a copy that is already being received
    secrets: tuple[str, ...] = ()  # an import URL's secret parts, scrubbed from its messages
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def running(self) -> bool:
        return self.state in ACTIVE

    @property
    def from_path(self) -> bool:
        """An import from another node's disk (``src_path`` there), pulled as a copy is."""
        return self.kind == "import" and self.src_id is not None

    @property
    def pulled(self) -> bool:
        """The target pulls it from a source node (a copy, a move, an import from a node)."""
        return self.kind in ("copy", "move") or self.from_path

    def spec(self) -> wb.SourceSpec:
        """What the source node serves for it."""
        if self.from_path:
            return wb.SourceSpec(kind="path", name=self.src_path)
        return wb.SourceSpec(kind="dataset", name=self.dataset)

    @property
    def route(self) -> str:
        """``src -> dst`` as its messages say it (the source's path for an import)."""
        src = f"{self.src_node}:{self.src_path}" if self.from_path else self.src_node
        return f"{src} -> {self.node}"

    def view(self) -> api.Transfer:
        return api.Transfer(
            id=self.id,
            kind=self.kind,
            dataset=self.dataset,
            node=self.node,
            state=self.state,
            done_bytes=self.done,
            total_bytes=self.total,
            rate_bps=self.rate,
            message=self.message,
            created_at=self.created_at,
            src_node=self.src_node or None,
        )


class Transfers(NodeEvents):
    def __init__(
        self,
        db: Database,
        nodes: NodeRegistry,
        catalog: DatasetCatalog,
        max_bytes: Callable[[], int] = lambda: 0,
    ) -> None:
        """``max_bytes`` is the lab's import limit now (a receive is refused above it)."""
        self.db = db
        self.nodes = nodes
        self.catalog = catalog
        self.max_bytes = max_bytes
        self._live: dict[int, LiveTransfer] = {}
        self._by_cmd: dict[int, int] = {}  # command id -> transfer id

    async def load(self) -> None:
        """After a restart: single-command transfers go on (the agent still reports them),
        and so do copies and moves (:meth:`_resume_copy`); the rest is failed."""
        resend: list[tuple[LiveTransfer, str]] = []
        async with self.db.transaction() as s:
            rows = (
                (await s.execute(select(TransferRow).where(TransferRow.state.in_(ACTIVE))))
                .scalars()
                .all()
            )
            for r in rows:
                node = self.nodes.by_name.get(r.node)
                cmd = await s.get(CommandRow, r.command_id) if r.command_id is not None else None
                pulled = r.kind in ("copy", "move") or (r.kind == "import" and bool(r.src_node))
                if pulled and node is not None and cmd is not None:
                    resumed, phase_cmd = self._resume_copy(r, node.id, cmd)
                    if resumed is None:
                        r.state = "failed"
                        r.message = "the master restarted and lost this transfer's source node"
                        _record_end(s.sync_session, r)
                        continue
                    if not cmd.acked:  # still in the node's outbox: delivered as it is
                        phase_cmd = ""
                    resend.append((resumed, phase_cmd))
                elif r.kind in SINGLE and node is not None and r.command_id is not None:
                    live = _live_of(r, node.id)
                    live.cmds[r.command_id] = (r.kind, node.id)
                    if r.kind == "import":
                        if cmd is not None and cmd.kind == w.ImportDataset.__name__:
                            live.secrets = url_secrets(_decode_import(cmd.body).url)
                    self._live[r.id] = live
                    self._by_cmd[r.command_id] = r.id
                else:
                    r.state = "failed"
                    r.message = "the master restarted while this transfer ran; start it again"
                    _record_end(s.sync_session, r)
        for live, phase_cmd in resend:
            if phase_cmd:
                await self._resend(live)

    def _resume_copy(
        self, r: TransferRow, node_id: int, cmd: CommandRow
    ) -> tuple[LiveTransfer | None, str]:
        """A copy or move the master was running when it stopped: back in memory in the
        phase its current command (the row's ``command_id``) names. The agents kept their
        work: a target goes on receiving into its journaled work dir and pulls again once
        the master answers."""
        src = self.nodes.by_name.get(r.src_node or "")
        if src is None:
            return None, ""
        live = _live_of(r, node_id)
        live.src_id = src.id
        if cmd.kind == w.DeleteDataset.__name__:
            live.phase = "delete-source"
            live.cmds[cmd.id] = ("delete-source", src.id)
            delete = _cmd_decoder.decode(cmd.body)
            assert isinstance(delete, w.DeleteDataset)
            live.src_path = delete.path
        elif r.kind == "import":  # from a node's disk: its path is in the receive command
            live.phase = "receive"
            live.cmds[cmd.id] = ("receive", node_id)
            receive = _cmd_decoder.decode(cmd.body)
            if not isinstance(receive, wb.BulkReceive) or receive.source.kind != "path":
                return None, ""
            live.src_path = receive.source.name
        else:
            live.phase = "receive"
            live.cmds[cmd.id] = ("receive", node_id)
            live.src_path = self.catalog.path_on(src.id, r.dataset) or ""
        self._live[r.id] = live
        self._by_cmd[cmd.id] = r.id
        return live, live.phase

    async def _resend(self, live: LiveTransfer) -> None:
        """Send the current phase's command again (both are idempotent on the agents: a
        receive by transfer id, a delete of what is already gone succeeds): its report may
        have been lost with the master's memory."""
        if live.phase == "delete-source" and live.src_id is not None:
            live.command_id = await self.command(
                live, "delete-source", live.src_id, w.DeleteDataset, path=live.src_path
            )
        else:
            live.command_id = await self.command(
                live, "receive", live.node_id, wb.BulkReceive, **self.receive_fields(live)
            )
        await self.save(live)

    def receive_fields(self, live: LiveTransfer) -> dict[str, Any]:
        """The ``BulkReceive`` of a copy or move (the same for every send of it)."""
        return {
            "transfer_id": live.id,
            "source": live.spec(),
            "src_node": live.src_node or "",
            "name": live.dataset,
            "max_bytes": self.max_bytes(),
        }

    # ---------------------------------------------------------------- what runs
    def live(self, transfer_id: int) -> LiveTransfer | None:
        return self._live.get(transfer_id)

    def copy(self, transfer_id: int) -> LiveTransfer:
        """The copy, move or import from a node in progress with this id."""
        live = self._live.get(transfer_id)
        if live is None or not live.pulled:
            raise NotFound(f"no copy or move {transfer_id} is in progress")
        return live

    def bringing(self, name: str, node_id: int) -> int | None:
        """A transfer that brings ``name`` to the node (an import, copy or move)."""
        for t in self._live.values():
            if not t.running:  # ended: its row is being written, it brings nothing more
                continue
            if t.dataset == name and t.node_id == node_id and t.kind in ("import", "copy", "move"):
                return t.id
        return None

    def touching(self, name: str, node_id: int) -> int | None:
        """A transfer that reads or writes the node's copy of ``name``."""
        for t in self._live.values():
            if t.running and t.dataset == name and node_id in (t.node_id, t.src_id):
                return t.id
        return None

    # ---------------------------------------------------------------- rows and commands
    async def new(self, live: LiveTransfer) -> LiveTransfer:
        async with self.db.transaction() as s:
            row = TransferRow(
                kind=live.kind,
                dataset=live.dataset,
                node=live.node,
                src_node=live.src_node,
                state=live.state,
                message=live.message,
                created_by=live.created_by,
                created_at=live.created_at,
            )
            s.add(row)
            await s.flush()
            live.id = row.id
        self._live[live.id] = live
        return live

    async def command(
        self, live: LiveTransfer, role: str, node_id: int, kind: type, **fields: Any
    ) -> int:
        """Send a command for this transfer; its progress reports come back as ``role``."""
        cmd_id = await self.nodes.enqueue(node_id, kind, **fields)
        live.cmds[cmd_id] = (role, node_id)  # before any await: a report may come next
        self._by_cmd[cmd_id] = live.id
        if live.command_id is None:
            live.command_id = cmd_id
        return cmd_id

    async def save(self, live: LiveTransfer) -> None:
        async with self.db.transaction() as s:
            row = await s.get(TransferRow, live.id)
            if row is None:
                return
            was = row.state
            row.state = live.state
            row.done_bytes = live.done
            row.total_bytes = live.total
            row.rate_bps = live.rate
            row.message = live.message[:MESSAGE_MAX]
            row.command_id = live.command_id
            if was != row.state:
                _record_end(s.sync_session, row)

    async def end(self, live: LiveTransfer, state: api.TransferState, message: str) -> None:
        if not live.running:
            return
        live.state, live.message = state, message  # final now: a second end returns above
        for cmd_id in live.cmds:
            self._by_cmd.pop(cmd_id, None)
        if live.kind == "delete" and state != "succeeded" and live.src_path:
            self.catalog.restore(live.node_id, live.dataset, live.src_path)
        if live.kind == "import" and live.command_id is not None:
            await self._forget_url(live.command_id)
        log.info("transfer %s (%s %s) %s: %s", live.id, live.kind, live.dataset, state, message)
        try:
            await self.save(live)
        finally:  # readers see the live view until the row holds the end
            self._live.pop(live.id, None)

    async def _forget_url(self, command_id: int) -> None:
        """Redact the URL in a finished import's stored command: no agent needs it now."""
        try:
            async with self.db.transaction() as s:
                row = await s.get(CommandRow, command_id)
                if row is None or row.kind != w.ImportDataset.__name__:
                    return
                cmd = _decode_import(row.body)
                row.body = w.encoder.encode(msgspec.structs.replace(cmd, url=redact_url(cmd.url)))
        except Exception:  # the transfer's end must still be saved
            log.exception("could not redact the URL of command %s", command_id)

    # ---------------------------------------------------------------- reading and cancelling
    async def _reap(self) -> None:
        """End transfers whose working node went offline (its agent lost the work, or
        cannot report it): checked when transfers are read, which is what waits on them."""
        for live in list(self._live.values()):
            if live.phase == "delete-source":
                node_id = live.src_id
            else:
                node_id = live.node_id
            node = self.nodes.nodes.get(node_id) if node_id is not None else None
            if node is not None and live.phase == "receive":
                continue  # its agent resumes the receive when it is back (agent.bulk.receives)
            if node is None or self.nodes.state_of(node) == "offline":
                name = node.name if node is not None else "(removed)"
                await self.end(live, "failed", f"node {name} went offline during the transfer")

    async def query(self) -> list[api.Transfer]:
        await self._reap()
        async with self.db.session() as s:
            rows = (
                (
                    await s.execute(
                        select(TransferRow)
                        .order_by(TransferRow.id.desc())
                        .limit(TRANSFER_LIST_LIMIT)
                    )
                )
                .scalars()
                .all()
            )
        return [self._row_view(r) for r in rows]

    def _row_view(self, r: TransferRow) -> api.Transfer:
        live = self._live.get(r.id)
        if live is not None:
            return live.view()
        return api.Transfer(
            id=r.id,
            kind=r.kind,
            dataset=r.dataset,
            node=r.node,
            state=r.state,
            done_bytes=r.done_bytes,
            total_bytes=r.total_bytes,
            rate_bps=r.rate_bps,
            message=redact_text(r.message),  # rows written before redaction was the rule
            created_at=r.created_at,
            src_node=r.src_node,
        )

    async def get(self, transfer_id: int) -> api.Transfer:
        await self._reap()
        live = self._live.get(transfer_id)
        if live is not None:
            return live.view()
        async with self.db.session() as s:
            row = await s.get(TransferRow, transfer_id)
        if row is None:
            raise NotFound(f"no transfer {transfer_id}")
        return self._row_view(row)

    async def cancel(self, p: Principal, transfer_id: int) -> api.Transfer:
        live = self._live.get(transfer_id)
        if live is None:
            t = await self.get(transfer_id)
            raise Conflict(f"transfer {transfer_id} already ended ({t.state})")
        if live.kind in ("delete", "digest") or live.phase == "delete-source":
            raise Conflict(f"transfer {transfer_id} is removing files; it cannot be cancelled")
        for cmd_id, (_role, node_id) in list(live.cmds.items()):
            await self.nodes.enqueue(node_id, w.CancelTransfer, command_id=cmd_id)
        target = self.nodes.nodes.get(live.node_id)
        offline = target is None or self.nodes.state_of(target) == "offline"
        if live.kind == "import" or (live.phase == "receive" and not offline):
            # The agent removes its temp dir and reports "cancelled", or "succeeded" when
            # the dataset was already in place: the transfer ends with what really happened.
            live.cancel_by = p.name
            live.message = f"cancelling (asked by {p.name})"
            return live.view()
        await self.end(live, "cancelled", f"cancelled by {p.name}")
        return live.view()

    # ---------------------------------------------------------------- reports from agents
    async def node_transfers(self, node: LiveNode, progress: list[w.TransferProgress]) -> None:
        for pr in progress:
            tid = self._by_cmd.get(pr.command_id)
            live = self._live.get(tid) if tid is not None else None
            if live is None:
                continue
            role, node_id = live.cmds.get(pr.command_id, ("", -1))
            if node_id != node.id:  # a node reports only the commands it was sent
                continue
            clean = redact_text(pr.message, live.secrets)  # whatever the agent's version
            if clean != pr.message:
                pr = msgspec.structs.replace(pr, message=clean)
            try:
                await self._progress(live, role, pr)
            except Exception:
                log.exception("transfer %s: could not apply a progress report", live.id)

    async def _progress(self, live: LiveTransfer, role: str, pr: w.TransferProgress) -> None:
        if role in SINGLE:  # an import from a node reports as "receive"
            live.done, live.rate = pr.done_bytes, pr.rate_bps
            live.total = pr.total_bytes if pr.total_bytes is not None else live.total
            if pr.state == "running":
                live.message = pr.message or live.message
            else:
                await self.end(live, pr.state, pr.message)
            return
        where = live.route
        if role == "receive":
            await self._received(live, pr, where)
        elif role == "delete-source" and pr.state != "running":
            if pr.state == "succeeded":
                await self.end(live, "succeeded", f"{where}: moved and verified file by file")
            else:
                await self.end(
                    live,
                    "failed",
                    f"{where}: copied and verified, but removing the source failed: {pr.message}",
                )

    async def _received(self, live: LiveTransfer, pr: w.TransferProgress, where: str) -> None:
        live.done, live.rate = pr.done_bytes, pr.rate_bps
        live.total = pr.total_bytes if pr.total_bytes is not None else live.total
        if pr.state == "running":
            if not live.cancel_by:
                live.message = f"{where}: {pr.message or 'receiving'} on {live.node}"
        elif pr.state != "succeeded" and live.cancel_by:
            await self.end(live, "cancelled", f"{where}: cancelled by {live.cancel_by}")
        elif pr.state != "succeeded":
            await self.end(live, pr.state, f"{where}: receiving failed: {pr.message}")
        elif live.cancel_by:
            await self.end(
                live,
                "succeeded",
                f"{where}: copied and verified before the cancel arrived"
                + ("; the source was kept" if live.kind == "move" else ""),
            )
        elif live.kind == "move" and live.src_id is not None:
            live.phase = "delete-source"
            live.message = (
                f"{where}: verified on {live.node} ({pr.message}); removing it from {live.src_node}"
            )
            if not live.src_path:
                live.src_path = self.catalog.path_on(live.src_id, live.dataset) or live.dataset
            live.command_id = await self.command(
                live, "delete-source", live.src_id, w.DeleteDataset, path=live.src_path
            )
            await self.save(live)  # a restarted master resumes the move in this phase
        else:
            done = "imported" if live.kind == "import" else "copied"
            await self.end(
                live, "succeeded", f"{where}: {done} and verified file by file ({pr.message})"
            )


def _live_of(r: TransferRow, node_id: int) -> LiveTransfer:
    return LiveTransfer(
        id=r.id,
        kind=r.kind,
        dataset=r.dataset,
        node=r.node,
        node_id=node_id,
        created_at=r.created_at,
        created_by=r.created_by,
        src_node=r.src_node,
        state=r.state,
        done=r.done_bytes,
        total=r.total_bytes,
        rate=r.rate_bps,
        message=r.message,
        command_id=r.command_id,
    )
