"""The append-only, hash-chained audit log.

Each row's ``hash`` is SHA-256 over its own fields (id included, so reordering shows) and the
previous row's hash; the first row chains from 64 zeros. Changing, deleting or inserting a
row breaks the chain at that row, and :meth:`AuditLog.verify` names the first broken row.
Appends are serialised by one writer task in this (single) master process, which
commits the rows that queue up meanwhile together (group commit).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from typing import Any

from sqlalchemy import select

from mlsm.master.db import Database
from mlsm.master.db.models import AuditRow
from mlsm.wire import api

log = logging.getLogger("mlsm.master.audit")
GENESIS = "0" * 64
VERIFY_BATCH = 5000


def row_hash(prev: str, r: AuditRow) -> str:
    payload = json.dumps(
        [
            r.id,
            repr(float(r.ts)),
            r.actor,
            r.role,
            r.action,
            r.target,
            r.outcome,
            r.client,
            r.request_id,
            r.details,
            prev,
        ],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def to_wire(r: AuditRow) -> api.AuditEntry:
    return api.AuditEntry(
        id=r.id,
        ts=r.ts,
        actor=r.actor,
        role=r.role,
        action=r.action,
        target=r.target,
        outcome=r.outcome,  # type: ignore[arg-type]
        client=r.client,
        request_id=r.request_id,
        details=r.details,
        hash=r.hash,
    )


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._queue: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        # (id, hash) of the newest row: this process is the only appender.
        self._last: tuple[int, str] | None = None

    async def append(
        self,
        *,
        actor: str,
        role: str,
        action: str,
        target: str,
        outcome: str,
        client: str,
        request_id: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Append one row; returns once it is committed.

        Rows that arrive while a batch is being written are committed together in the
        next transaction (group commit), in arrival order, so a burst of mutations costs a
        few transactions instead of one each.
        """
        fields = {
            "ts": time.time(),
            "actor": actor[:64],
            "role": role[:16],
            "action": action[:64],
            "target": target[:512],
            "outcome": outcome,
            "client": client[:64],
            "request_id": request_id[:64],
            "details": details or {},
        }
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((fields, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_batches())
        await done

    async def _write_batches(self) -> None:
        while self._queue:
            batch = self._queue
            self._queue = []
            try:
                async with self.db.transaction() as s:
                    if self._last is None:
                        last = (
                            await s.execute(
                                select(AuditRow.id, AuditRow.hash)
                                .order_by(AuditRow.id.desc())
                                .limit(1)
                            )
                        ).one_or_none()
                        self._last = (last[0], last[1]) if last is not None else (0, GENESIS)
                    last_id, prev = self._last
                    for fields, _ in batch:
                        last_id += 1
                        row = AuditRow(id=last_id, prev_hash=prev, hash="", **fields)
                        row.hash = prev = row_hash(prev, row)
                        s.add(row)
                self._last = (last_id, prev)
            except BaseException as exc:
                self._last = None  # re-read the chain's end from the database next time
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(
                            exc
                            if isinstance(exc, Exception)
                            else RuntimeError("audit writer stopped")
                        )
                if not isinstance(exc, Exception):
                    raise
                continue
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    async def query(
        self,
        *,
        since: float | None = None,
        actor: str | None = None,
        action: str | None = None,
        limit: int = 1000,
    ) -> list[api.AuditEntry]:
        q = select(AuditRow)
        if since is not None:
            q = q.where(AuditRow.ts >= since)
        if actor:
            q = q.where(AuditRow.actor == actor)
        if action:
            q = q.where(AuditRow.action.like(action.replace("*", "%")))
        q = q.order_by(AuditRow.id.desc()).limit(limit)
        async with self.db.session() as s:
            rows = (await s.execute(q)).scalars().all()
        return [to_wire(r) for r in reversed(rows)]

    async def verify(self) -> api.AuditVerify:
        prev = GENESIS
        count = 0
        last_id = 0
        async with self.db.session() as s:
            while True:
                rows = (
                    (
                        await s.execute(
                            select(AuditRow)
                            .where(AuditRow.id > last_id)
                            .order_by(AuditRow.id)
                            .limit(VERIFY_BATCH)
                        )
                    )
                    .scalars()
                    .all()
                )
                if not rows:
                    break
                for r in rows:
                    if r.id != last_id + 1:
                        return api.AuditVerify(
                            ok=False,
                            rows=count,
                            first_broken=last_id + 1,
                            message=f"row {last_id + 1} is missing (next row is {r.id})",
                        )
                    if r.prev_hash != prev or row_hash(prev, r) != r.hash:
                        return api.AuditVerify(
                            ok=False,
                            rows=count,
                            first_broken=r.id,
                            message=f"row {r.id} does not match its hash: it was changed, or a row before it was",
                        )
                    prev = r.hash
                    last_id = r.id
                    count += 1
        return api.AuditVerify(ok=True, rows=count, message=f"OK: {count} rows, chain intact")
