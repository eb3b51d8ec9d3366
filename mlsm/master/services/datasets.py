"""The dataset catalog: what data lives on which node.

Agents report deltas of their dataset roots (:class:`~mlsm.wire.agent.DatasetReport`); the
same name on two nodes is two copies of one dataset. Metadata people edit (description,
tags, owner) lives on the dataset, sizes and paths on each copy. The scheduler asks
:meth:`holders` which nodes hold which names, the job service :meth:`path_on` for the path
a job gets in ``MLSM_DATASET_<NAME>``.

Changes on nodes (import, copy/move, delete, digest) run on the agents as commands and
are tracked as :class:`~mlsm.master.db.models.Transfer` rows: progress arrives with the
heartbeats (``TransferProgress`` under the command id) and is kept in memory; a row is
written when a transfer starts, changes phase and ends, never per heartbeat.

Copy and move relay the bytes through the master, so agents only ever dial out: the source
uploads the manifest and then the packed dataset in chunks (idempotent by offset) to
``<data>/transfers/<id>.manifest`` and ``<id>.tar``; once both are whole the target gets
:class:`~mlsm.wire.agent.ReceiveDataset`, downloads by offset, verifies every file against
the manifest and renames the dataset into place; only its success report (sent after the
target's catalog delta) ends the copy, and only then is a move's source deleted. A failed
or cancelled transfer deletes its spool files; the agents remove their temp dirs.

An import URL may carry a secret (userinfo, a presigned query, a fragment): the full URL
goes only into the agent's ImportDataset command, and is redacted there too once the
import ends. Every message that reaches a transfer row, a view, a log line or an error is
passed through :func:`mlsm.redact.redact_text` where the master takes it in (with the
import's own secrets as literals while it runs), and rows written before that rule are
redacted again when read.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
from sqlalchemy import delete, select

from mlsm import COMMAND_SINCE
from mlsm.datasets_names import dataset_name_problem
from mlsm.errors import Conflict, NotFound, PayloadTooLarge, PermissionDenied, ValidationError
from mlsm.master.db import Database
from mlsm.master.db.models import Command as CommandRow
from mlsm.master.db.models import Dataset as DatasetRow
from mlsm.master.db.models import DatasetCopy
from mlsm.master.db.models import Job as JobRow
from mlsm.master.db.models import Transfer as TransferRow
from mlsm.master.security import Principal
from mlsm.master.services.nodes import LiveNode, NodeRegistry
from mlsm.redact import redact_text, redact_url, url_secrets
from mlsm.wire import agent as w
from mlsm.wire import api

log = logging.getLogger("mlsm.master.datasets")

ACTIVE = ("pending", "running")
#: Jobs in these states hold on to the datasets they name (a delete may be refused).
HOLDING_JOB_STATES = ("queued", "held", "assigned", "running")
MANIFEST_MAX_BYTES = 256 << 20  # a million files' manifest is ~100 MiB of MessagePack
TRANSFER_LIST_LIMIT = 200
IMPORT_SCHEMES = ("http", "https")
_SINGLE = ("import", "delete", "digest")  # transfers that are one command on one node
_decode_import = msgspec.msgpack.Decoder(w.ImportDataset).decode


@dataclass(eq=False)
class _Live:
    """A transfer in progress: its row's fields plus what only the master's memory holds."""

    id: int
    kind: str
    dataset: str
    node: str  # the target node (import, copy/move destination, delete)
    node_id: int
    created_at: float
    created_by: str = ""
    src_node: str | None = None
    src_id: int | None = None
    src_path: str = ""
    state: str = "pending"
    done: int = 0
    total: int | None = None
    rate: float = 0.0
    message: str = ""
    command_id: int | None = None
    phase: str = ""  # copy/move: send -> receive -> delete-source
    phase_started: float = field(default_factory=time.monotonic)
    cmds: dict[int, tuple[str, int]] = field(default_factory=dict)  # cmd id -> (role, node id)
    sizes: dict[str, int] = field(default_factory=dict)  # spooled bytes per part
    closed: set[str] = field(default_factory=set)  # parts uploaded whole
    digest: str = ""
    cancel_by: str = ""  # who asked to cancel a copy that is already being received
    secrets: tuple[str, ...] = ()  # an import URL's secret parts, scrubbed from its messages
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class DatasetService:
    def __init__(self, db: Database, nodes: NodeRegistry) -> None:
        self.db = db
        self.nodes = nodes
        # node id -> name -> path; the scheduler's view, rebuilt from the database at start.
        self._where: dict[int, dict[str, str]] = {}
        self.lab_settings: Any = None  # set by the routes' setup: .current.import_*
        self._live: dict[int, _Live] = {}
        self._by_cmd: dict[int, int] = {}  # command id -> transfer id
        self.spool = nodes.settings.data_path / "transfers"

    async def load(self) -> None:
        async with self.db.session() as s:
            for c in (await s.execute(select(DatasetCopy))).scalars():
                self._where.setdefault(c.node_id, {})[c.name] = c.path
        await self._load_transfers()

    def holders(self) -> dict[int, set[str]]:
        return {nid: set(names) for nid, names in self._where.items()}

    def path_on(self, node_id: int, name: str) -> str | None:
        return self._where.get(node_id, {}).get(name)

    async def apply_report(self, node: LiveNode, report: w.DatasetReport) -> None:
        now = time.time()
        async with self.db.transaction() as s:
            if report.full:
                await s.execute(delete(DatasetCopy).where(DatasetCopy.node_id == node.id))
                self._where[node.id] = {}
            elif report.removed:
                await s.execute(
                    delete(DatasetCopy).where(
                        DatasetCopy.node_id == node.id, DatasetCopy.path.in_(report.removed)
                    )
                )
                where = self._where.setdefault(node.id, {})
                for name in [n for n, p in where.items() if p in set(report.removed)]:
                    del where[name]
            known = set((await s.execute(select(DatasetRow.name))).scalars())
            for e in report.upsert:
                row = (
                    await s.execute(
                        select(DatasetCopy).where(
                            DatasetCopy.node_id == node.id, DatasetCopy.path == e.path
                        )
                    )
                ).scalar_one_or_none()
                if row is None:
                    row = DatasetCopy(node_id=node.id, path=e.path, name=e.name, root=e.root)
                    s.add(row)
                row.size, row.files, row.modified, row.top = (
                    e.size,
                    e.files,
                    e.modified,
                    list(e.top),
                )
                row.digest = e.digest  # None once the content changed since it was hashed
                if e.name not in known:
                    s.add(DatasetRow(name=e.name, created_at=now))
                    known.add(e.name)
                self._where.setdefault(node.id, {})[e.name] = e.path
        node.datasets_digest = report.catalog_digest or node.datasets_digest
        if self.nodes.on_change is not None and report.upsert:
            self.nodes.on_change()

    async def query(self, node: str | None = None) -> list[api.Dataset]:
        async with self.db.session() as s:
            metas = {d.name: d for d in (await s.execute(select(DatasetRow))).scalars()}
            copies = (
                (await s.execute(select(DatasetCopy).order_by(DatasetCopy.name))).scalars().all()
            )
        return self._assemble(metas, copies, node)

    def _assemble(
        self,
        metas: dict[str, DatasetRow],
        copies: Any,
        node: str | None,
        used: dict[str, list[int]] | None = None,
    ) -> list[api.Dataset]:
        out: dict[str, api.Dataset] = {}
        now = time.time()
        for c in copies:
            n = self.nodes.nodes.get(c.node_id)
            if n is None or (node and n.name != node):
                continue
            m = metas.get(c.name)
            d = out.get(c.name)
            if d is None:
                d = out[c.name] = api.Dataset(
                    name=c.name,
                    description=m.description if m else "",
                    tags=list(m.tags) if m else [],
                    owner=m.owner if m else "",
                    used_by=(used or {}).get(c.name, []),
                )
            d.copies.append(
                api.DatasetCopy(
                    node=n.name,
                    path=c.path,
                    size=c.size,
                    files=c.files,
                    modified=c.modified,
                    digest=c.digest,
                    top=list(c.top or []),
                    node_state=self.nodes.state_of(n, now),
                )
            )
        return sorted(out.values(), key=lambda d: d.name)

    async def show(self, name: str) -> api.Dataset:
        async with self.db.session() as s:
            metas = {
                d.name: d
                for d in (
                    await s.execute(select(DatasetRow).where(DatasetRow.name == name))
                ).scalars()
            }
            copies = (
                (await s.execute(select(DatasetCopy).where(DatasetCopy.name == name)))
                .scalars()
                .all()
            )
            jobs = (
                await s.execute(
                    select(JobRow.id, JobRow.spec).order_by(JobRow.id.desc()).limit(5000)
                )
            ).all()
        used = [jid for jid, spec in jobs if name in (spec or {}).get("datasets", [])][:50]
        found = self._assemble(metas, copies, None, {name: used})
        if not found:
            raise NotFound(f"no dataset named {name!r}")
        return found[0]

    async def update(self, p: Principal, name: str, body: api.DatasetUpdate) -> api.Dataset:
        async with self.db.transaction() as s:
            row = (
                await s.execute(select(DatasetRow).where(DatasetRow.name == name))
            ).scalar_one_or_none()
            if row is None:
                raise NotFound(f"no dataset named {name!r}")
            if not p.is_admin and row.owner != p.name:
                raise PermissionDenied(
                    f"only the owner of {name} ({row.owner or 'nobody'}) and admins edit it"
                )
            if body.owner is not None and not p.is_admin:
                raise PermissionDenied("only admins change a dataset's owner")
            if body.description is not None:
                row.description = body.description
            if body.tags is not None:
                row.tags = sorted(set(body.tags))
            if body.owner is not None:
                row.owner = body.owner
        return await self.show(name)

    # ================================================================ transfers
    async def _load_transfers(self) -> None:
        """After a restart: single-command transfers go on (the agent still reports them);
        a copy's spool and phase lived in memory, so an unfinished copy is failed."""
        async with self.db.transaction() as s:
            rows = (
                (await s.execute(select(TransferRow).where(TransferRow.state.in_(ACTIVE))))
                .scalars()
                .all()
            )
            for r in rows:
                node = self.nodes.by_name.get(r.node)
                if r.kind in _SINGLE and node is not None and r.command_id is not None:
                    live = _live_of(r, node.id)
                    live.cmds[r.command_id] = (r.kind, node.id)
                    if r.kind == "import":
                        cmd = await s.get(CommandRow, r.command_id)
                        if cmd is not None and cmd.kind == w.ImportDataset.__name__:
                            live.secrets = url_secrets(_decode_import(cmd.body).url)
                    self._live[r.id] = live
                    self._by_cmd[r.command_id] = r.id
                else:
                    r.state = "failed"
                    r.message = "the master restarted while this transfer ran; start it again"
                    self._drop_spool(r.id)

    def _spool_path(self, transfer_id: int, part: str) -> Path:
        return self.spool / f"{transfer_id}.{'tar' if part == 'data' else 'manifest'}"

    def _drop_spool(self, transfer_id: int) -> None:
        for part in ("data", "manifest"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._spool_path(transfer_id, part))

    def _online(self, name: str, what: str) -> LiveNode:
        node = self.nodes.get(name)
        state = self.nodes.state_of(node)
        if state not in ("online", "draining"):
            raise Conflict(f"{what} node {name} is {state}: it must be online")
        return node

    @staticmethod
    def _check_name(name: str) -> None:
        why = dataset_name_problem(name)
        if why is not None:
            raise ValidationError(why, path="name")

    def _with_roots(self, node: LiveNode) -> None:
        if not node.info.dataset_roots:
            raise Conflict(
                f"node {node.name} has no dataset root: start its agent with --dataset-root PATH"
            )

    def _not_there(self, node: LiveNode, name: str) -> None:
        if self.path_on(node.id, name) is not None:
            raise Conflict(f"dataset {name} already exists on node {node.name}")
        busy = [
            t.id
            for t in self._live.values()
            if t.dataset == name and t.node_id == node.id and t.kind in ("import", "copy", "move")
        ]
        if busy:
            raise Conflict(
                f"dataset {name} is already being brought to {node.name} (transfer {busy[0]})"
            )

    async def _new(self, live: _Live) -> _Live:
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

    async def _command(
        self, live: _Live, role: str, node_id: int, kind: type, **fields: Any
    ) -> int:
        cmd_id = await self.nodes.enqueue(node_id, kind, **fields)
        live.cmds[cmd_id] = (role, node_id)  # before any await: a report may come next
        self._by_cmd[cmd_id] = live.id
        if live.command_id is None:
            live.command_id = cmd_id
        return cmd_id

    async def _save(self, live: _Live) -> None:
        async with self.db.transaction() as s:
            row = await s.get(TransferRow, live.id)
            if row is None:
                return
            row.state = live.state
            row.done_bytes = live.done
            row.total_bytes = live.total
            row.rate_bps = live.rate
            row.message = live.message[:4096]
            row.command_id = live.command_id

    async def _end(self, live: _Live, state: str, message: str) -> None:
        if live.state not in ACTIVE:
            return
        live.state, live.message = state, message  # final now: a second _end returns above
        for cmd_id in live.cmds:
            self._by_cmd.pop(cmd_id, None)
        self._drop_spool(live.id)
        if live.kind == "delete" and state != "succeeded":
            self._restore(live)
        if live.kind == "import" and live.command_id is not None:
            await self._forget_url(live.command_id)
        log.info("transfer %s (%s %s) %s: %s", live.id, live.kind, live.dataset, state, message)
        try:
            await self._save(live)
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

    def _restore(self, live: _Live) -> None:
        """A failed delete: the copy is still there, so the scheduler may use it again."""
        if live.src_path:
            self._where.setdefault(live.node_id, {})[live.dataset] = live.src_path

    # ---------------------------------------------------------------- starting them
    async def start_import(self, p: Principal, body: api.DatasetImport) -> api.Transfer:
        self._check_name(body.name)
        _check_url(body.url, list(self._settings().import_allow_cidrs))
        node = self._online(body.node, "the")
        self._with_roots(node)
        self._not_there(node, body.name)
        settings = self._settings()
        live = await self._new(
            _Live(
                id=0,
                kind="import",
                dataset=body.name,
                node=node.name,
                node_id=node.id,
                created_at=time.time(),
                created_by=p.name,
                state="running",
                message="queued on the node",
                secrets=url_secrets(body.url),
            )
        )
        await self._command(
            live,
            "import",
            node.id,
            w.ImportDataset,
            url=body.url,
            name=body.name,
            sha256=body.sha256,
            max_bytes=settings.import_max_bytes,
            allow_cidrs=list(settings.import_allow_cidrs),
            unpack=body.unpack,
        )
        await self._save(live)
        return _view(live)

    def _settings(self) -> api.LabSettings:
        return self.lab_settings.current if self.lab_settings is not None else api.LabSettings()

    async def start_transfer(self, p: Principal, body: api.DatasetTransfer) -> api.Transfer:
        self._check_name(body.name)
        if body.src == body.dst:
            raise ValidationError("--from and --to name the same node", path="dst")
        src = self._online(body.src, "source")
        path = self.path_on(src.id, body.name)
        if path is None:
            raise NotFound(f"node {src.name} holds no dataset {body.name}")
        dst = self._online(body.dst, "target")
        self._with_roots(dst)
        self._not_there(dst, body.name)
        for n in (src, dst):
            if n.protocol < COMMAND_SINCE["send_dataset"]:
                raise Conflict(
                    f"the agent on {n.name} speaks protocol {n.protocol}, too old for copies between "
                    f"servers (needs {COMMAND_SINCE['send_dataset']}): upgrade mlsm on that server"
                )
        kind = "move" if body.move else "copy"
        live = await self._new(
            _Live(
                id=0,
                kind=kind,
                dataset=body.name,
                node=dst.name,
                node_id=dst.id,
                src_node=src.name,
                src_id=src.id,
                src_path=path,
                created_at=time.time(),
                created_by=p.name,
                state="running",
                phase="send",
                message=f"{src.name} -> {dst.name}: queued on {src.name}",
            )
        )
        await asyncio.to_thread(self.spool.mkdir, parents=True, exist_ok=True, mode=0o700)
        await self._command(live, "send", src.id, w.SendDataset, transfer_id=live.id, path=path)
        await self._save(live)
        return _view(live)

    async def start_delete(self, p: Principal, name: str, node_name: str) -> api.Transfer:
        self._check_name(name)
        node = self.nodes.get(node_name)
        path = self.path_on(node.id, name)
        if path is None:
            raise NotFound(f"node {node_name} holds no dataset {name}")
        if self.nodes.state_of(node) == "offline":
            raise Conflict(f"node {node_name} is offline: its disk cannot be changed now")
        await self._refuse_if_needed(name, node)
        for t in self._live.values():
            if t.dataset == name and node.id in (t.node_id, t.src_id):
                raise Conflict(
                    f"dataset {name} on {node_name} is in transfer {t.id}; wait or cancel it"
                )
        live = await self._new(
            _Live(
                id=0,
                kind="delete",
                dataset=name,
                node=node.name,
                node_id=node.id,
                src_path=path,
                created_at=time.time(),
                created_by=p.name,
                state="running",
                message=f"deleting {path}",
            )
        )
        self._where.get(node.id, {}).pop(name, None)  # no new job is placed on it meanwhile
        await self._command(live, "delete", node.id, w.DeleteDataset, path=path)
        await self._save(live)
        return _view(live)

    async def start_digest(self, p: Principal, name: str, node_name: str) -> api.Transfer:
        """Hash every file of the copy on ``node_name``; the digest shows on that copy."""
        self._check_name(name)
        node = self._online(node_name, "the")
        path = self.path_on(node.id, name)
        if path is None:
            raise NotFound(f"node {node_name} holds no dataset {name}")
        live = await self._new(
            _Live(
                id=0,
                kind="digest",
                dataset=name,
                node=node.name,
                node_id=node.id,
                created_at=time.time(),
                created_by=p.name,
                state="running",
                message=f"hashing {path}",
            )
        )
        await self._command(live, "digest", node.id, w.DigestDataset, path=path)
        await self._save(live)
        return _view(live)

    async def _refuse_if_needed(self, name: str, node: LiveNode) -> None:
        """409 while a job needs this copy: it runs there, or it waits and no other online
        node holds the dataset."""
        async with self.db.session() as s:
            rows = (
                await s.execute(
                    select(JobRow.id, JobRow.state, JobRow.node, JobRow.spec).where(
                        JobRow.state.in_(HOLDING_JOB_STATES)
                    )
                )
            ).all()
        elsewhere = any(
            nid != node.id
            and name in names
            and (n := self.nodes.nodes.get(nid)) is not None
            and self.nodes.schedulable(n)
            for nid, names in self._where.items()
        )
        needing = []
        for jid, state, where, spec in rows:
            if name not in (spec or {}).get("datasets", []):
                continue
            if state in ("assigned", "running"):
                if where == node.name:
                    needing.append(jid)
            elif not elsewhere:
                needing.append(jid)
        if needing:
            shown = ", ".join(str(j) for j in sorted(needing)[:10])
            raise Conflict(
                f"dataset {name} on {node.name} is needed by job(s) {shown} "
                "(queued or running, and no other online node holds it); "
                "wait for them or cancel them first",
                details={"jobs": sorted(needing)},
            )

    # ---------------------------------------------------------------- reading and cancelling
    async def _reap(self) -> None:
        """End transfers whose working node went offline (its agent lost the work, or
        cannot report it): checked when transfers are read, which is what waits on them."""
        for live in list(self._live.values()):
            if live.phase in ("send", "delete-source"):
                node_id = live.src_id
            else:
                node_id = live.node_id
            node = self.nodes.nodes.get(node_id) if node_id is not None else None
            if node is None or self.nodes.state_of(node) == "offline":
                name = node.name if node is not None else "(removed)"
                await self._end(live, "failed", f"node {name} went offline during the transfer")

    async def list_transfers(self) -> list[api.Transfer]:
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
            return _view(live)
        return api.Transfer(
            id=r.id,
            kind=r.kind,  # type: ignore[arg-type]
            dataset=r.dataset,
            node=r.node,
            state=r.state,  # type: ignore[arg-type]
            done_bytes=r.done_bytes,
            total_bytes=r.total_bytes,
            rate_bps=r.rate_bps,
            message=redact_text(r.message),  # rows written before redaction was the rule
            created_at=r.created_at,
            src_node=r.src_node,
        )

    async def get_transfer(self, transfer_id: int) -> api.Transfer:
        await self._reap()
        live = self._live.get(transfer_id)
        if live is not None:
            return _view(live)
        async with self.db.session() as s:
            row = await s.get(TransferRow, transfer_id)
        if row is None:
            raise NotFound(f"no transfer {transfer_id}")
        return self._row_view(row)

    async def cancel_transfer(self, p: Principal, transfer_id: int) -> api.Transfer:
        live = self._live.get(transfer_id)
        if live is None:
            t = await self.get_transfer(transfer_id)
            raise Conflict(f"transfer {transfer_id} already ended ({t.state})")
        if live.kind in ("delete", "digest") or live.phase == "delete-source":
            raise Conflict(f"transfer {transfer_id} is removing files; it cannot be cancelled")
        for cmd_id, (_role, node_id) in list(live.cmds.items()):
            await self.nodes.enqueue(node_id, w.CancelTransfer, command_id=cmd_id)
        if live.kind == "import" or live.phase == "receive":
            # The agent removes its temp dir and reports "cancelled", or "succeeded" when
            # the dataset was already in place: the transfer ends with what really happened.
            live.cancel_by = p.name
            live.message = f"cancelling (asked by {p.name})"
            return _view(live)
        await self._end(live, "cancelled", f"cancelled by {p.name}")
        return _view(live)

    # ---------------------------------------------------------------- reports from agents
    async def on_transfers(self, node: LiveNode, progress: list[w.TransferProgress]) -> None:
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

    async def _progress(self, live: _Live, role: str, pr: w.TransferProgress) -> None:
        if role in _SINGLE:
            live.done, live.rate = pr.done_bytes, pr.rate_bps
            live.total = pr.total_bytes if pr.total_bytes is not None else live.total
            if pr.state == "running":
                live.message = pr.message or live.message
            else:
                await self._end(live, pr.state, pr.message)
            return
        where = f"{live.src_node} -> {live.node}"
        if role == "send":
            if pr.state in ("failed", "cancelled"):
                await self._end(live, pr.state, f"{where}: sending failed: {pr.message}")
            elif pr.state == "running" and live.phase == "send" and not live.sizes.get("data"):
                live.message = f"{where}: {pr.message} on {live.src_node}"
        elif role == "receive":
            live.done, live.rate = pr.done_bytes, pr.rate_bps
            if pr.state == "running":
                if not live.cancel_by:
                    live.message = f"{where}: {pr.message or 'receiving'} on {live.node}"
            elif pr.state != "succeeded" and live.cancel_by:
                await self._end(live, "cancelled", f"{where}: cancelled by {live.cancel_by}")
            elif pr.state != "succeeded":
                await self._end(live, pr.state, f"{where}: receiving failed: {pr.message}")
            elif live.cancel_by:
                await self._end(
                    live,
                    "succeeded",
                    f"{where}: copied and verified before the cancel arrived"
                    + ("; the source was kept" if live.kind == "move" else ""),
                )
            elif live.kind == "move" and live.src_id is not None:
                live.phase = "delete-source"
                live.message = f"{where}: verified on {live.node}; removing it from {live.src_node}"
                self._drop_spool(live.id)
                await self._command(
                    live, "delete-source", live.src_id, w.DeleteDataset, path=live.src_path
                )
                await self._save(live)
            else:
                await self._end(live, "succeeded", f"{where}: copied and verified file by file")
        elif role == "delete-source" and pr.state != "running":
            if pr.state == "succeeded":
                await self._end(live, "succeeded", f"{where}: moved and verified file by file")
            else:
                await self._end(
                    live,
                    "failed",
                    f"{where}: copied and verified, but removing the source failed: {pr.message}",
                )

    # ---------------------------------------------------------------- spooling (agent routes)
    def _copy_for(self, transfer_id: int) -> _Live:
        live = self._live.get(transfer_id)
        if live is None or live.kind not in ("copy", "move"):
            raise NotFound(f"no copy or move {transfer_id} is in progress")
        return live

    async def upload(self, node: LiveNode, chunk: w.TransferChunk) -> w.TransferAck:
        live = self._live.get(chunk.transfer_id)
        if live is None:  # ended: tell its sender why, so it stops
            async with self.db.session() as s:
                row = await s.get(TransferRow, chunk.transfer_id)
            if row is None or row.kind not in ("copy", "move") or row.src_node != node.name:
                raise NotFound(f"no copy or move {chunk.transfer_id} from node {node.name}")
            state = "failed" if row.state in ACTIVE else row.state
            return w.TransferAck(
                transfer_id=row.id,
                next_offset=0,
                state=state,  # type: ignore[arg-type]
                message=row.message,
            )
        live = self._copy_for(chunk.transfer_id)
        if live.src_id != node.id:
            raise PermissionDenied(f"transfer {live.id} does not read from node {node.name}")
        async with live.lock:
            part = chunk.part
            size = live.sizes.get(part, 0)
            if live.state not in ACTIVE or part in live.closed or chunk.offset > size:
                return self._ack(live, size)
            skip = size - chunk.offset
            data = chunk.data[skip:] if skip < len(chunk.data) else b""
            limit = self._part_limit(part)
            if limit and size + len(data) > limit:
                await self._end(
                    live,
                    "failed",
                    f"{live.src_node} -> {live.node}: {live.dataset} is over the limit of "
                    f"{limit} bytes (lab setting import_max_bytes)",
                )
                raise PayloadTooLarge(live.message)
            if data:
                await asyncio.to_thread(_pwrite, self._spool_path(live.id, part), size, data)
                size += len(data)
                live.sizes[part] = size
                if live.state not in ACTIVE:  # cancelled while writing: no spool may remain
                    self._drop_spool(live.id)
                    return self._ack(live, size)
            if part == "data":
                live.done = size
                elapsed = max(time.monotonic() - live.phase_started, 1e-6)
                live.rate = size / elapsed
                live.message = f"{live.src_node} -> {live.node}: uploading from {live.src_node}"
            if chunk.eof:
                if chunk.offset + len(chunk.data) != size:
                    await self._end(live, "failed", f"the {part} upload ended at a wrong offset")
                    return self._ack(live, size)
                live.closed.add(part)
                if part == "manifest":
                    live.digest = chunk.digest
                else:
                    await self._start_receive(live)
            return self._ack(live, size)

    def _part_limit(self, part: str) -> int:
        return MANIFEST_MAX_BYTES if part == "manifest" else self._settings().import_max_bytes

    @staticmethod
    def _ack(live: _Live, size: int) -> w.TransferAck:
        return w.TransferAck(
            transfer_id=live.id,
            next_offset=size,
            state=live.state if live.state != "pending" else "running",  # type: ignore[arg-type]
            message=live.message if live.state not in ACTIVE else "",
        )

    async def _start_receive(self, live: _Live) -> None:
        if "manifest" not in live.closed:
            await self._end(live, "failed", "the source sent the dataset before its manifest")
            return
        live.phase = "receive"
        live.phase_started = time.monotonic()
        live.total = live.sizes.get("data", 0)
        live.done, live.rate = 0, 0.0
        live.message = f"{live.src_node} -> {live.node}: queued on {live.node}"
        await self._command(
            live,
            "receive",
            live.node_id,
            w.ReceiveDataset,
            transfer_id=live.id,
            name=live.dataset,
            manifest_digest=live.digest,
            total_bytes=live.total,
        )
        await self._save(live)

    async def fetch(self, node: LiveNode, req: w.TransferFetch) -> w.TransferData:
        live = self._live.get(req.transfer_id)
        if live is None:
            raise Conflict(f"transfer {req.transfer_id} is not in progress (ended or cancelled)")
        live = self._copy_for(req.transfer_id)
        if live.node_id != node.id:
            raise PermissionDenied(f"transfer {live.id} does not go to node {node.name}")
        if live.cancel_by:
            raise Conflict(f"transfer {live.id} was cancelled by {live.cancel_by}")
        if req.part not in live.closed or live.phase != "receive":
            raise Conflict(f"the {req.part} of transfer {live.id} is not uploaded yet")
        size = live.sizes.get(req.part, 0)
        data = await asyncio.to_thread(
            _pread,
            self._spool_path(live.id, req.part),
            req.offset,
            min(req.max_bytes, max(size - req.offset, 0)),
        )
        return w.TransferData(
            transfer_id=live.id,
            offset=req.offset,
            data=data,
            eof=req.offset + len(data) >= size,
            size=size,
        )


def _pwrite(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _pread(path: Path, offset: int, n: int) -> bytes:
    if n <= 0:
        return b""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, n, offset)
    finally:
        os.close(fd)


def _check_url(url: str, allowed: list[str]) -> None:
    """Scheme allow-list, and for an IP literal the same address guard the agent applies
    (hosts by name are resolved and checked by the agent, which is where DNS answers)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port  # raises for a port that is not a number up to 65535
    except ValueError:  # the parser's words may quote a password: none are echoed
        raise ValidationError(
            "invalid URL: its host or port cannot be read (a port is a number up to 65535)",
            path="url",
        ) from None
    if port == 0:
        raise ValidationError("invalid URL: port 0", path="url")
    if parts.scheme.lower() not in IMPORT_SCHEMES:
        raise ValidationError(
            f"URL scheme {parts.scheme or '(none)'!r} is not allowed: only http and https",
            path="url",
        )
    if not host:
        raise ValidationError("the URL has no host", path="url")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return
    nets = []
    for c in allowed:
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.ip_network(c, strict=False))
    if any(ip.version == n.version and ip in n for n in nets):
        return
    if not ip.is_global or ip.is_multicast:
        raise ValidationError(
            f"refusing to import from {host}: it is an internal address (loopback, private or "
            "link-local); an admin can allow its range with "
            "`mlsm settings set --import-allow-cidr CIDR`",
            path="url",
        )


def _live_of(r: TransferRow, node_id: int) -> _Live:
    return _Live(
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


def _view(live: _Live) -> api.Transfer:
    return api.Transfer(
        id=live.id,
        kind=live.kind,  # type: ignore[arg-type]
        dataset=live.dataset,
        node=live.node,
        state=live.state,  # type: ignore[arg-type]
        done_bytes=live.done,
        total_bytes=live.total,
        rate_bps=live.rate,
        message=live.message,
        created_at=live.created_at,
        src_node=live.src_node or None,
    )
