"""Authentication and authorisation.

- Passwords: argon2id (argon2-cffi's defaults, RFC 9106 low-memory profile).
- Tokens (session, API, node, join): 32 random bytes, URL-safe, with a readable prefix; the
  database holds only their SHA-256. A random 256-bit secret needs no slow hash: a hash
  lookup is safe and fast, which matters for agents heartbeating every few seconds.
- Every route handler declares who may call it in ``opt={"role": ...}``; the one guard
  :class:`RoleGuard`, attached at app level, enforces it. The app factory refuses to start
  when a handler lacks the declaration, so a new route cannot ship unguarded.

Roles: ``public`` < ``member`` < ``admin`` < ``superadmin``; ``node`` is the separate
identity of an agent (its node secret) and is accepted only on agent routes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.handlers.base import BaseRouteHandler

from mlsm.errors import AuthenticationError, MlsmError, PermissionDenied
from mlsm.wire.api import ROLE_RANK, Role, TokenKind

TOKEN_PREFIX = {"session": "mlsm_s_", "api": "mlsm_a_", "node": "mlsm_n_", "join": "mlsm_j_"}
ROUTE_ROLES = ("public", "member", "admin", "superadmin", "node")
SCHEMA_PATH = "/schema"  # the OpenAPI document and its viewer are public
#: Where the guard leaves a WebSocket's refusal for its handler (see RoleGuard).
WS_REFUSAL = "ws_refusal"

_hasher = PasswordHasher()
# A fixed hash verified when a user does not exist, so timing does not reveal usernames.
_DUMMY_HASH = _hasher.hash("mlsm-no-such-user")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def burn_password_check(password: str) -> None:
    verify_password(_DUMMY_HASH, password)


def new_token(kind: str) -> str:
    return TOKEN_PREFIX[kind] + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a person (via a token) or a node (via its secret)."""

    kind: Literal["user", "node"]
    name: str
    role: Role | Literal["node"]
    user_id: int | None = None
    node_id: int | None = None
    token_id: int | None = None
    token_kind: TokenKind | Literal[""] = ""  # "" for a node

    def at_least(self, role: str) -> bool:
        return ROLE_RANK.get(self.role, 0) >= ROLE_RANK[role]

    def person_role(self) -> Role:
        """A person's role; a node (which no person's route lets in) has none."""
        if self.role == "node":
            raise PermissionDenied("a node has no user role")
        return self.role

    @property
    def is_admin(self) -> bool:
        return self.kind == "user" and self.at_least("admin")


def bearer(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("bearer", "node") and value.strip():
        return value.strip()
    return None


def check_metrics_token(expected: str, connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """``/metrics`` behind the ``metrics_token`` setting (open when it is empty): the caller
    must send ``Authorization: Bearer <token>``. Both sides are hashed before the
    constant-time comparison, so neither the content nor the length of the token leaks."""
    if not expected:
        return
    scheme, _, value = connection.headers.get("authorization", "").partition(" ")
    given = value.strip() if scheme.lower() == "bearer" else ""
    if not same(token_hash(given), token_hash(expected)):
        raise AuthenticationError(
            "/metrics needs Authorization: Bearer <token> (the master's metrics_token)"
        )


class Authenticator(Protocol):
    """Who a credential belongs to (:class:`~mlsm.master.services.auth.AuthService`)."""

    async def resolve_user(self, token: str) -> Principal: ...

    async def resolve_node(self, secret: str) -> Principal: ...


class RoleGuard:
    """The single guard: authenticate the caller and check the route's declared role."""

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth

    async def __call__(
        self, connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
    ) -> None:
        if connection.scope["type"] != ScopeType.WEBSOCKET:
            return await self._check(connection, handler)
        try:
            await self._check(connection, handler)
        except MlsmError as exc:
            # A WebSocket closed before it is accepted reaches the client as a bare HTTP 403
            # (the ASGI rule), whatever the reason. So the refusal is kept for the handler,
            # which accepts, says why (an error message) and closes with 4000 + the status
            # (mlsm.master.routes.channels.admitted; mlsm.wire.channels). A WebSocket handler must
            # begin with that check: the permission matrix proves each one refuses.
            connection.scope.setdefault("state", {})[WS_REFUSAL] = exc
            connection.scope["user"] = None  # a handler that skips the check fails closed
        return None

    async def _check(
        self, connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
    ) -> None:
        need = handler.opt.get("role")
        if need == "public" or (
            need is None
            and (
                connection.scope["path"].startswith(SCHEMA_PATH)
                or connection.scope.get("method") == "OPTIONS"
            )
        ):
            return  # OpenAPI document, and Litestar's automatic OPTIONS answers (they run no handler code)
        if need not in ROUTE_ROLES:
            raise PermissionDenied("this route declares no role")
        token = bearer(connection)
        if token is None:
            raise AuthenticationError("authentication required: log in with `mlsm login URL`")
        if need == "node":
            principal = await self.auth.resolve_node(token)
        else:
            principal = await self.auth.resolve_user(token)
        connection.scope["user"] = principal
        if need == "node":
            return
        if not principal.at_least(need):
            raise PermissionDenied(f"this needs the {need} role; you are {principal.role}")


def check_handler_roles(handlers: list[BaseRouteHandler]) -> None:
    """Refuse to build an app whose routes do not all declare a role."""
    missing = [h for h in handlers if h.opt.get("role") not in ROUTE_ROLES]
    if missing:
        names = ", ".join(sorted(str(sorted(h.paths)) for h in missing))
        raise RuntimeError(f"route handlers without a valid opt['role']: {names}")
