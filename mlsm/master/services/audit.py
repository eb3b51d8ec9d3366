"""The append-only, hash-chained, sealed audit log.

Each row's ``hash`` is SHA-256 over its own fields (id included, so reordering shows) and the
previous row's hash; the first row chains from 64 zeros. Changing, deleting or inserting a
row breaks the chain at that row. Because anyone who can write the database can also
recompute that public chain, every row is also *sealed*: ``mac`` is an HMAC of its hash
under the audit key, and the newest row is recorded in the tail anchor; both live in the
master's data dir, never in the database (:mod:`mlsm.master.services.auditseal`).
:meth:`AuditLog.verify` checks all three and names the first thing that is wrong.

Appends are serialised by one writer task in this (single) master process, which commits
the rows that queue up meanwhile together (group commit), moves the anchor, and only then
answers the appenders: a request that waits for its row (the request middleware does) is
acknowledged only once the row is committed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from mlsm.master.db import Database
from mlsm.master.db.models import AuditRow
from mlsm.master.services.auditseal import (
    Anchor,
    AnchorDamaged,
    AnchorFile,
    AuditKey,
    incident_report,
    load_or_create_key,
    span,
)
from mlsm.wire import api

log = logging.getLogger("mlsm.master.audit")
GENESIS = "0" * 64
VERIFY_BATCH = 5000
SYSTEM_ACTOR = "mlsm"  # rows the master writes about the log itself


def _digest(row_id: int, f: dict[str, Any], prev: str) -> str:
    payload = json.dumps(
        [
            row_id,
            repr(float(f["ts"])),
            f["actor"],
            f["role"],
            f["action"],
            f["target"],
            f["outcome"],
            f["client"],
            f["request_id"],
            f["details"],
            prev,
        ],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def row_hash(prev: str, r: AuditRow) -> str:
    """The chain hash of a stored row (its fields, its id and the previous row's hash)."""
    return _digest(r.id, {k: getattr(r, k) for k in _HASHED}, prev)


_HASHED = ("ts", "actor", "role", "action", "target", "outcome", "client", "request_id", "details")


def to_wire(r: AuditRow) -> api.AuditEntry:
    return api.AuditEntry(
        id=r.id,
        ts=r.ts,
        actor=r.actor,
        role=r.role,
        action=r.action,
        target=r.target,
        outcome=r.outcome,
        client=r.client,
        request_id=r.request_id,
        details=r.details,
        hash=r.hash,
    )


async def _tail(s: AsyncSession) -> tuple[int, str]:
    last = (
        await s.execute(select(AuditRow.id, AuditRow.hash).order_by(AuditRow.id.desc()).limit(1))
    ).one_or_none()
    return (int(last[0]), str(last[1])) if last is not None else (0, GENESIS)


async def _hash_of(s: AsyncSession, row_id: int) -> str | None:
    found = (
        await s.execute(select(AuditRow.hash).where(AuditRow.id == row_id))
    ).scalar_one_or_none()
    return None if found is None else str(found)


class AuditLog:
    def __init__(self, db: Database, data_dir: Path | None = None) -> None:
        self.db = db
        self.data_dir = data_dir
        self._queue: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        # (id, hash) of the newest row: this process is the only appender.
        self._last: tuple[int, str] | None = None
        self.key: AuditKey | None = None
        self._anchor_file: AnchorFile | None = None
        self.anchor: Anchor | None = None

    # ---------------------------------------------------------------- start
    async def load(self) -> None:
        """At master start: the key (made on first start), the anchor, and the check of the
        database's newest rows against the anchor; what is found wrong is recorded."""
        if self.data_dir is None:
            return  # an unsealed log (tools and tests that build the service alone)
        async with self.db.session() as s:
            last_id, last_hash = await _tail(s)
            key, created = load_or_create_key(self.data_dir, last_id + 1)
            self.key = key
            self._anchor_file = AnchorFile(self.data_dir, key)
            notes: list[tuple[str, dict[str, Any]]] = []
            try:
                anchor = self._anchor_file.read()
            except AnchorDamaged as exc:
                anchor = Anchor(last_id, last_hash)
                anchor.add_incident(
                    {
                        "kind": "anchor_damaged",
                        "at": time.time(),
                        "why": str(exc),
                        "db_last": last_id,
                    }
                )
                notes.append(("audit.anchor_damaged", {"why": str(exc), "db_last": last_id}))
            if anchor is None:
                anchor = Anchor(last_id, last_hash)
                if last_id and not created:
                    # A data dir without its anchor (a restored database, a new machine):
                    # the log says from which row on its tail is anchored again.
                    notes.append(("audit.anchor_created", {"from_row": last_id}))
            else:
                found = await self._check_tail(s, anchor, last_id)
                if found is not None:
                    notes.append(("audit.tail_missing", found))
        self.anchor = anchor
        self._last = (last_id, last_hash)
        self._write_anchor(last_id, last_hash)
        for action, details in notes:
            if action == "audit.anchor_created":
                log.warning(
                    "no audit tail anchor in %s: anchored from row %s", self.data_dir, last_id
                )
            else:
                log.error("the audit log was tampered with: %s %s", action, details)
            await self.append(
                actor=SYSTEM_ACTOR,
                role="system",
                action=action,
                target="audit",
                outcome="ok" if action == "audit.anchor_created" else "error",
                client="-",
                request_id="",
                details=details,
            )

    async def _check_tail(
        self, s: AsyncSession, anchor: Anchor, db_last: int
    ) -> dict[str, Any] | None:
        """Whether the database still holds the row the anchor names; an incident if not."""
        if anchor.last_id == 0:
            return None
        if db_last >= anchor.last_id and await _hash_of(s, anchor.last_id) == anchor.last_hash:
            return None
        kind = "tail_missing" if db_last < anchor.last_id else "tail_replaced"
        incident = {
            "kind": kind,
            "at": time.time(),
            "anchor_last": anchor.last_id,
            "db_last": db_last,
        }
        anchor.add_incident(incident)
        return {k: v for k, v in incident.items() if k != "at"}

    def close(self) -> None:
        if self._anchor_file is not None:
            self._anchor_file.close()

    def _write_anchor(self, last_id: int, last_hash: str) -> None:
        if self._anchor_file is None or self.anchor is None:
            return
        self.anchor.last_id, self.anchor.last_hash = last_id, last_hash
        try:
            self._anchor_file.write(self.anchor)
        except OSError:
            # The rows are committed; a stale anchor only narrows what truncation shows.
            log.exception("could not move the audit tail anchor %s", self._anchor_file.path)

    # ---------------------------------------------------------------- append
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
        """Append one row; returns once it is committed (and the anchor moved past it).

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
                        self._last = await _tail(s)
                        if self.anchor is not None:
                            await self._check_tail(s, self.anchor, self._last[0])
                    last_id, prev = self._last
                    rows = []
                    for fields, _ in batch:
                        last_id += 1
                        h = _digest(last_id, fields, prev)
                        mac = self.key.seal(h) if self.key is not None else None
                        rows.append(
                            {**fields, "id": last_id, "prev_hash": prev, "hash": h, "mac": mac}
                        )
                        prev = h
                    await s.execute(insert(AuditRow), rows)
                self._last = (last_id, prev)
                self._write_anchor(last_id, prev)
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

    # ---------------------------------------------------------------- read
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

    # ---------------------------------------------------------------- verify
    def _seal_problem(self, r: AuditRow) -> str | None:
        """Why row ``r``'s seal fails, or None (also for rows from before the key)."""
        key = self.key
        if r.mac is None:
            if key is not None and r.id >= key.first_row:
                return (
                    f"row {r.id} carries no MAC although the master seals every row since "
                    f"row {key.first_row}: it was written or changed behind the master's back"
                )
            return None
        if key is None or not key.sealed(r.hash, r.mac):
            where = key.path if key is not None else "the data dir"
            return (
                f"row {r.id} does not match its MAC: it was changed (and the hash chain "
                f"recomputed), or it was sealed with another audit key than {where}"
            )
        return None

    async def verify(self) -> api.AuditVerify:
        anchor = self.anchor
        anchor_last = (anchor.last_id, anchor.last_hash) if anchor is not None else None
        prev = GENESIS
        count = chain_only = 0
        last_id = 0
        hash_at_anchor: str | None = None

        def broken(row: int, message: str) -> api.AuditVerify:
            return api.AuditVerify(
                ok=False, rows=count, first_broken=row, message=message, chain_only=chain_only
            )

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
                        return broken(
                            last_id + 1, f"row {last_id + 1} is missing (next row is {r.id})"
                        )
                    if r.prev_hash != prev or row_hash(prev, r) != r.hash:
                        return broken(
                            r.id,
                            f"row {r.id} does not match its hash: it was changed, or a row "
                            "before it was",
                        )
                    problem = self._seal_problem(r)
                    if problem:
                        return broken(r.id, problem)
                    chain_only += r.mac is None
                    if anchor_last is not None and r.id == anchor_last[0]:
                        hash_at_anchor = r.hash
                    prev = r.hash
                    last_id = r.id
                    count += 1
        if anchor is not None and anchor.incidents:
            return broken(*incident_report(anchor))
        if anchor_last is not None and anchor_last[0]:
            where = self._anchor_file.path if self._anchor_file is not None else "the anchor"
            if last_id < anchor_last[0]:
                return broken(
                    last_id + 1,
                    f"the newest rows were deleted: {span(last_id + 1, anchor_last[0])} not in "
                    f"the database (the tail anchor {where} records row {anchor_last[0]})",
                )
            if hash_at_anchor != anchor_last[1]:
                return broken(
                    anchor_last[0],
                    f"row {anchor_last[0]} is not the row the tail anchor {where} records: "
                    "the newest rows were replaced",
                )
        sealed = "no MACs: no audit key" if self.key is None else "MACs and tail anchor checked"
        if chain_only:
            sealed = f"{span(1, chain_only)} from before audit MACs: chain only; " + (
                "the rest " + sealed if chain_only < count else sealed
            )
        return api.AuditVerify(
            ok=True,
            rows=count,
            message=f"OK: {count} rows intact ({sealed})",
            chain_only=chain_only,
        )
