"""Join tokens: the one-time credentials an agent registers with (``mlsm join-token create``).

Only hashes are stored. A token may carry the master certificate's fingerprint
(``secret@fingerprint``) so an agent's first contact is pinned; the node registry consumes
tokens when agents register.
"""

from __future__ import annotations

import time

from sqlalchemy import select

from mlsm.errors import NotFound
from mlsm.master.db import Database
from mlsm.master.db.models import JoinToken
from mlsm.master.security import Principal, new_token, token_hash
from mlsm.wire import api


class JoinTokens:
    def __init__(self, db: Database, tls_fingerprint: str = "") -> None:
        self.db = db
        self.tls_fingerprint = tls_fingerprint  # "" without TLS

    async def create(self, actor: Principal, body: api.JoinTokenCreate) -> api.JoinTokenCreated:
        now = time.time()
        secret = new_token("join")
        async with self.db.transaction() as s:
            row = JoinToken(
                token_hash=token_hash(secret),
                created_by=actor.name,
                created_at=now,
                expires_at=now + body.ttl_s,
                uses=body.uses,
                note=body.note,
            )
            s.add(row)
            await s.flush()
            info = _join_wire(row)
        fingerprint = self.tls_fingerprint
        token = f"{secret}@{fingerprint}" if fingerprint else secret
        return api.JoinTokenCreated(token=token, info=info)

    async def query(self) -> list[api.JoinToken]:
        async with self.db.session() as s:
            rows = (await s.execute(select(JoinToken).order_by(JoinToken.id))).scalars().all()
        return [_join_wire(r) for r in rows]

    async def revoke(self, token_id: int) -> None:
        async with self.db.transaction() as s:
            row = await s.get(JoinToken, token_id)
            if row is None:
                raise NotFound(f"no join token {token_id}")
            row.revoked = True


def _join_wire(r: JoinToken) -> api.JoinToken:
    return api.JoinToken(
        id=r.id,
        created_by=r.created_by,
        created_at=r.created_at,
        expires_at=r.expires_at,
        uses=r.uses,
        used=r.used,
        revoked=r.revoked,
        note=r.note,
    )
