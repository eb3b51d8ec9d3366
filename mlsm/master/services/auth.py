"""Logins, session and API tokens, token resolution with a small cache, login limits.

Rules kept here:

- a caller never sees or touches the tokens of a user whose role ranks above theirs
  (listing, revoking); an admin asking for another's token id of a superadmin gets 404;
- a user's session tokens end (revoked, not merely refused) when their password is
  changed, by an admin or by themselves (the session that made the change goes on), when
  they are disabled, and when their role is lowered; API tokens are separate credentials
  for scripts and survive a password change unless the change asks to revoke them too;
- cached principals are dropped at every such change, and a resolution that raced with one
  is not cached (the cache's epoch moved while it read the database).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mlsm.config import Settings
from mlsm.errors import AuthenticationError, Conflict, NotFound, PermissionDenied
from mlsm.master.db import Database
from mlsm.master.db.models import Token, User
from mlsm.master.security import (
    Principal,
    burn_password_check,
    hash_password,
    new_token,
    token_hash,
    verify_password,
)
from mlsm.master.services.loginlimits import LoginLimiter
from mlsm.master.services.nodes import NodeRegistry
from mlsm.wire import api
from mlsm.wire.api import ROLE_RANK

TOKEN_CACHE_TTL_S = 10.0  # revocations invalidate explicitly; this bounds staleness otherwise
LAST_USED_WRITE_EVERY_S = 60.0


def roles_up_to(role: str) -> list[str]:
    """The roles ranking no higher than ``role``: whose tokens its holder may see."""
    rank = ROLE_RANK.get(role, 0)
    return [r for r, n in ROLE_RANK.items() if n <= rank]


async def end_sessions(
    s: AsyncSession, user_id: int, *, keep_token_id: int | None = None, api_too: bool = False
) -> int:
    """Revoke a user's session tokens (and API tokens with ``api_too``) in the caller's
    transaction, except ``keep_token_id``; returns how many. The caller drops the cache."""
    kinds = ["session", "api"] if api_too else ["session"]
    q = update(Token).where(
        Token.user_id == user_id, Token.revoked.is_(False), Token.kind.in_(kinds)
    )
    if keep_token_id is not None:
        q = q.where(Token.id != keep_token_id)
    result = await s.execute(q.values(revoked=True))
    return int(getattr(result, "rowcount", 0) or 0)


@dataclass(slots=True)
class _Cached:
    principal: Principal
    expires_at: float | None
    cached_at: float


class AuthService:
    def __init__(self, db: Database, settings: Settings, nodes: NodeRegistry) -> None:
        self.db = db
        self.settings = settings
        self.nodes = nodes  # resolves node secrets from memory (the heartbeat path)
        self._cache: dict[str, _Cached] = {}
        self.limits = LoginLimiter(settings.login_attempts_per_minute)
        self._last_used_written: dict[int, float] = {}
        # Moves on every invalidation; a resolution that saw it move does not cache.
        self._epoch = 0

    # ------------------------------------------------------------- login / logout
    async def _check_password(self, username: str, password: str, client: str) -> tuple[int, str]:
        """The user's id and password hash, if ``password`` is theirs and they are enabled;
        under the login limits. Outside any write transaction: the limits' delay and the
        argon2 check (in a worker thread) hold up nobody else's writes; the caller's write
        checks that the hash is still the one checked (no reset came in between)."""
        attempt = self.limits.begin(username, client)
        if attempt.delay:
            await asyncio.sleep(attempt.delay)
        async with self.db.session() as s:
            user = (
                await s.execute(select(User).where(User.username == username))
            ).scalar_one_or_none()
        if user is None:
            await asyncio.to_thread(burn_password_check, password)
            ok = False
        else:
            ok = not user.disabled and await asyncio.to_thread(
                verify_password, user.password_hash, password
            )
        if not ok or user is None:
            self.limits.failed(attempt, user_exists=user is not None)
            raise AuthenticationError("wrong username or password")
        self.limits.succeeded(attempt)
        return user.id, user.password_hash

    async def login(self, username: str, password: str, client: str) -> api.LoginReply:
        user_id, checked = await self._check_password(username, password, client)
        async with self.db.transaction() as s:
            user = await s.get(User, user_id)
            if user is None or user.disabled or user.password_hash != checked:
                raise AuthenticationError("wrong username or password")  # changed meanwhile
            now = time.time()
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
                role=user.role,
                expires_at=expires,
            )

    async def logout(self, principal: Principal) -> None:
        if principal.token_id is None:
            return
        await self.revoke_token_id(principal.token_id)

    async def change_password(
        self, principal: Principal, body: api.PasswordChange, client: str
    ) -> int:
        """A user sets their own password, proving the current one (under the login limits,
        so a stolen session cannot guess it); their other sessions end. Returns how many
        tokens were revoked."""
        try:
            user_id, checked = await self._check_password(
                principal.name, body.current_password, client
            )
        except AuthenticationError:
            # 403, not 401: the caller's session is fine, the proof is not.
            raise PermissionDenied("the current password is wrong") from None
        new_hash = await asyncio.to_thread(hash_password, body.new_password)
        async with self.db.transaction() as s:
            user = await s.get(User, user_id)
            if user is None or user.password_hash != checked:
                raise Conflict("the password was changed meanwhile: try again")
            user.password_hash = new_hash
            keep = principal.token_id if principal.token_kind == "session" else None
            ended = await end_sessions(
                s, user.id, keep_token_id=keep, api_too=body.revoke_api_tokens
            )
        self.forget_user(user_id)
        return ended

    # ------------------------------------------------------------- resolution
    async def resolve_user(self, token: str) -> Principal:
        h = token_hash(token)
        now = time.time()
        hit = self._cache.get(h)
        if hit is not None and now - hit.cached_at < TOKEN_CACHE_TTL_S:
            if hit.expires_at is not None and hit.expires_at <= now:
                raise AuthenticationError("your session has expired: log in again")
            return hit.principal
        epoch = self._epoch
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
        if epoch == self._epoch:  # nothing was invalidated while the database was read
            self._cache[h] = _Cached(principal, tok.expires_at, now)
        return principal

    async def resolve_node(self, secret: str) -> Principal:
        found = self.nodes.resolve_secret(secret)
        if found is None:
            raise AuthenticationError("unknown node secret: this node was removed or never joined")
        return found

    def forget_user(self, user_id: int) -> None:
        self._epoch += 1
        for k in [k for k, v in self._cache.items() if v.principal.user_id == user_id]:
            del self._cache[k]

    def _forget_token(self, token_id: int) -> None:
        self._epoch += 1
        for k in [k for k, v in self._cache.items() if v.principal.token_id == token_id]:
            del self._cache[k]

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
            if all_users and principal.is_admin:
                q = q.where(User.role.in_(roles_up_to(principal.role)))
            else:
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
                kind=t.kind,
            )
            for t, u in rows
            if t.expires_at is None or t.expires_at > now
        ]

    async def revoke(self, principal: Principal, token_id: int) -> str:
        async with self.db.transaction() as s:
            row = (
                await s.execute(
                    select(Token, User.role)
                    .join(User, User.id == Token.user_id)
                    .where(Token.id == token_id)
                )
            ).one_or_none()
            tok, owner_role = row if row is not None else (None, "")
            if (
                tok is None
                or tok.revoked
                or ROLE_RANK.get(owner_role, 0) > ROLE_RANK.get(principal.role, 0)
            ):
                # A higher role's token is answered like one that does not exist.
                raise NotFound(f"no token {token_id}")
            if tok.user_id != principal.user_id and not principal.is_admin:
                raise PermissionDenied("you can only revoke your own tokens")
            tok.revoked = True
            name = tok.name
        self._forget_token(token_id)
        return name

    async def revoke_token_id(self, token_id: int) -> None:
        async with self.db.transaction() as s:
            tok = await s.get(Token, token_id)
            if tok is not None:
                tok.revoked = True
        self._forget_token(token_id)
