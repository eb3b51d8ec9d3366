"""The append-only, hash-chained audit log.

Each row's ``hash`` is SHA-256 over its own fields (id included, so reordering shows) and the
previous row's hash; the first row chains from 64 zeros. Changing, deleting or inserting a
row breaks the chain at that row, and :meth:`AuditLog.verify` names the first broken row.
Appends are serialised by one lock in this (single) master process.
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
        self._lock = asyncio.Lock()

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
        async with self._lock, self.db.transaction() as s:
            last = (
                await s.execute(select(AuditRow).order_by(AuditRow.id.desc()).limit(1))
            ).scalar_one_or_none()
            prev = last.hash if last is not None else GENESIS
            row = AuditRow(
                id=(last.id + 1) if last is not None else 1,
                ts=time.time(),
                actor=actor[:64],
                role=role[:16],
                action=action[:64],
                target=target[:512],
                outcome=outcome,
                client=client[:64],
                request_id=request_id[:64],
                details=details or {},
                prev_hash=prev,
                hash="",
            )
            row.hash = row_hash(prev, row)
            s.add(row)

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
