"""Logins, session and API tokens, token resolution with a small cache, login rate limits."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from mlsm.config import Settings
from mlsm.errors import AuthenticationError, NotFound, PermissionDenied, RateLimited
from mlsm.master.db import Database
from mlsm.master.db.models import Node, Token, User
from mlsm.master.security import (
    Principal,
    burn_password_check,
    new_token,
    token_hash,
    verify_password,
)
from mlsm.wire import api

TOKEN_CACHE_TTL_S = 10.0  # revocations invalidate explicitly; this bounds staleness otherwise
LAST_USED_WRITE_EVERY_S = 60.0
RATE_WINDOW_S = 60.0


@dataclass(slots=True)
class _Cached:
    principal: Principal
    expires_at: float | None
    cached_at: float


class _RateLimiter:
    """Sliding-window failure counter per key (username, client address)."""

    def __init__(self, limit: int, window_s: float = RATE_WINDOW_S) -> None:
        self.limit = limit
        self.window_s = window_s
        self._hits: dict[str, deque[float]] = {}

    def _trim(self, key: str, now: float) -> deque[float]:
        q = self._hits.setdefault(key, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def check(self, key: str, now: float) -> float | None:
        """Seconds to wait when the key is over its limit, else None."""
        q = self._trim(key, now)
        if len(q) >= self.limit:
            return max(0.0, q[0] + self.window_s - now)
        return None

    def hit(self, key: str, now: float) -> None:
        self._trim(key, now).append(now)
        if len(self._hits) > 100_000:  # bound memory under a username-spraying attack
            self._hits.clear()

    def reset(self, key: str) -> None:
        self._hits.pop(key, None)


class AuthService:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._cache: dict[str, _Cached] = {}
        self._node_cache: dict[str, _Cached] = {}
        self._rate = _RateLimiter(settings.login_attempts_per_minute)
        self._last_used_written: dict[int, float] = {}
        self.registry: Any = None  # the node registry resolves node secrets from memory

    # ------------------------------------------------------------- login / logout
    async def login(self, username: str, password: str, client: str) -> api.LoginReply:
        now = time.time()
        for key in (f"user:{username}", f"client:{client}"):
            wait = self._rate.check(key, now)
            if wait is not None:
                raise RateLimited(
                    f"too many failed logins; try again in {int(wait) + 1} s",
                    details={"retry_after": int(wait) + 1},
                )
        async with self.db.transaction() as s:
            user = (
                await s.execute(select(User).where(User.username == username))
            ).scalar_one_or_none()
            if user is None:
                burn_password_check(password)
            ok = (
                user is not None
                and not user.disabled
                and verify_password(user.password_hash, password)
            )
            if not ok or user is None:
                self._rate.hit(f"user:{username}", now)
                self._rate.hit(f"client:{client}", now)
                raise AuthenticationError("wrong username or password")
            self._rate.reset(f"user:{username}")
            token = new_token("session")
            expires = now + self.settings.session_ttl
            s.add(
                Token(
                    user_id=user.id,
                    kind="session",
                    name=f"login from {client}",
                    token_hash=token_hash(token),
                    created_at=now,
                    expires_at=expires,
                )
            )
            user.last_login = now
            return api.LoginReply(
                token=token,
                username=user.username,
                role=user.role,  # type: ignore[arg-type]
                expires_at=expires,
            )

    async def logout(self, principal: Principal) -> None:
        if principal.token_id is None:
            return
        await self.revoke_token_id(principal.token_id)

    # ------------------------------------------------------------- resolution
    async def resolve_user(self, token: str) -> Principal:
        h = token_hash(token)
        now = time.time()
        hit = self._cache.get(h)
        if hit is not None and now - hit.cached_at < TOKEN_CACHE_TTL_S:
            if hit.expires_at is not None and hit.expires_at <= now:
                raise AuthenticationError("your session has expired: log in again")
            return hit.principal
        async with self.db.transaction() as s:
            row = (
                await s.execute(
                    select(Token, User)
                    .join(User, User.id == Token.user_id)
                    .where(Token.token_hash == h)
                )
            ).one_or_none()
            if row is None:
                raise AuthenticationError("unknown or revoked token: log in again")
            tok, user = row
            if tok.revoked:
                raise AuthenticationError("this token was revoked: log in again")
            if tok.expires_at is not None and tok.expires_at <= now:
                raise AuthenticationError("your session has expired: log in again")
            if user.disabled:
                raise AuthenticationError(f"user {user.username} is disabled")
            if now - self._last_used_written.get(tok.id, 0.0) > LAST_USED_WRITE_EVERY_S:
                tok.last_used = now
                self._last_used_written[tok.id] = now
            principal = Principal(
                kind="user",
                name=user.username,
                role=user.role,
                user_id=user.id,
                token_id=tok.id,
                token_kind=tok.kind,
            )
        self._cache[h] = _Cached(principal, tok.expires_at, now)
        return principal

    async def resolve_node(self, secret: str) -> Principal:
        if self.registry is not None:
            found = self.registry.resolve_secret(secret)
            if found is None:
                raise AuthenticationError(
                    "unknown node secret: this node was removed or never joined"
                )
            return found
        h = token_hash(secret)
        now = time.time()
        hit = self._node_cache.get(h)
        if hit is not None and now - hit.cached_at < TOKEN_CACHE_TTL_S:
            return hit.principal
        async with self.db.session() as s:
            node = (await s.execute(select(Node).where(Node.secret_hash == h))).scalar_one_or_none()
        if node is None or node.removed:
            raise AuthenticationError("unknown node secret: this node was removed or never joined")
        principal = Principal(kind="node", name=node.name, role="node", node_id=node.id)
        self._node_cache[h] = _Cached(principal, None, now)
        return principal

    def forget_user(self, user_id: int) -> None:
        for k in [k for k, v in self._cache.items() if v.principal.user_id == user_id]:
            del self._cache[k]

    def forget_node(self, node_id: int) -> None:
        for k in [k for k, v in self._node_cache.items() if v.principal.node_id == node_id]:
            del self._node_cache[k]

    # ------------------------------------------------------------- API tokens
    async def create_api_token(
        self, principal: Principal, body: api.ApiTokenCreate
    ) -> api.ApiTokenCreated:
        now = time.time()
        token = new_token("api")
        expires = now + body.ttl_s if body.ttl_s else None
        async with self.db.transaction() as s:
            row = Token(
                user_id=principal.user_id,
                kind="api",
                name=body.name,
                token_hash=token_hash(token),
                created_at=now,
                expires_at=expires,
            )
            s.add(row)
            await s.flush()
            info = api.ApiToken(
                id=row.id,
                name=row.name,
                username=principal.name,
                created_at=now,
                expires_at=expires,
            )
        return api.ApiTokenCreated(token=token, info=info)

    async def list_tokens(self, principal: Principal, all_users: bool) -> list[api.ApiToken]:
        async with self.db.session() as s:
            q = (
                select(Token, User.username)
                .join(User, User.id == Token.user_id)
                .where(Token.revoked.is_(False))
            )
            if not (all_users and principal.is_admin):
                q = q.where(Token.user_id == principal.user_id)
            rows = (await s.execute(q.order_by(Token.id))).all()
        now = time.time()
        return [
            api.ApiToken(
                id=t.id,
                name=t.name,
                username=u,
                created_at=t.created_at,
                expires_at=t.expires_at,
                last_used=t.last_used,
                kind=t.kind,  # type: ignore[arg-type]
            )
            for t, u in rows
            if t.expires_at is None or t.expires_at > now
        ]

    async def revoke(self, principal: Principal, token_id: int) -> str:
        async with self.db.transaction() as s:
            tok = await s.get(Token, token_id)
            if tok is None or tok.revoked:
                raise NotFound(f"no token {token_id}")
            if tok.user_id != principal.user_id and not principal.is_admin:
                raise PermissionDenied("you can only revoke your own tokens")
            tok.revoked = True
            self._cache = {k: v for k, v in self._cache.items() if v.principal.token_id != token_id}
            return tok.name

    async def revoke_token_id(self, token_id: int) -> None:
        async with self.db.transaction() as s:
            tok = await s.get(Token, token_id)
            if tok is not None:
                tok.revoked = True
        self._cache = {k: v for k, v in self._cache.items() if v.principal.token_id != token_id}
