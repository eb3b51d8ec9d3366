"""JSON API structs for people: logging in, users, API tokens, join tokens and the audit log."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from mlsm.wire.api.base import AuditOutcome, Password, Role, ShortStr, TokenKind, UserName


# ---------------------------------------------------------------- auth
class LoginRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    username: UserName
    password: Annotated[str, Meta(min_length=1, max_length=1024)]


class LoginReply(Struct, kw_only=True):
    token: str
    username: str
    role: Role
    expires_at: float


class PasswordChange(Struct, kw_only=True, forbid_unknown_fields=True):
    """A user changing their own password; their other sessions end."""

    current_password: Annotated[str, Meta(min_length=1, max_length=1024)]
    new_password: Password
    revoke_api_tokens: bool = False  # end the user's API tokens too


class PasswordChanged(Struct, kw_only=True):
    revoked: int  # tokens that ended with the change (other sessions, API tokens if asked)


class Me(Struct, kw_only=True):
    username: str
    role: Role
    token_kind: TokenKind


# ---------------------------------------------------------------- users
class User(Struct, kw_only=True):
    id: int
    username: str
    role: Role
    disabled: bool
    created_at: float
    unix_user: str = ""
    gpu_cap: int | None = None
    last_login: float | None = None


class UserCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    username: UserName
    password: Password
    role: Role = "member"
    unix_user: Annotated[str, Meta(max_length=32, pattern=r"^([a-z_][a-z0-9_-]*)?$")] = ""


class UserUpdate(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    role: Role | None = None
    disabled: bool | None = None
    password: Password | None = None
    unix_user: Annotated[str, Meta(max_length=32, pattern=r"^([a-z_][a-z0-9_-]*)?$")] | None = None
    gpu_cap: Annotated[int, Meta(ge=0, le=100000)] | None = None
    clear_gpu_cap: bool = False
    revoke_api_tokens: bool = False  # end the user's API tokens (and sessions) too


# ---------------------------------------------------------------- API tokens
class ApiToken(Struct, kw_only=True):
    id: int
    name: str
    username: str
    created_at: float
    expires_at: float | None
    last_used: float | None = None
    kind: TokenKind = "api"


class ApiTokenCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    ttl_s: Annotated[float, Meta(gt=0, le=10 * 365 * 86400)] | None = None


class ApiTokenCreated(Struct, kw_only=True):
    token: str  # shown once
    info: ApiToken


# ---------------------------------------------------------------- join tokens
class JoinTokenCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    ttl_s: Annotated[float, Meta(gt=0, le=365 * 86400)] = 24 * 3600.0
    uses: Annotated[int, Meta(ge=1, le=10000)] = 1
    note: ShortStr = ""


class JoinToken(Struct, kw_only=True):
    id: int
    created_by: str
    created_at: float
    expires_at: float
    uses: int
    used: int
    revoked: bool
    note: str = ""


class JoinTokenCreated(Struct, kw_only=True):
    token: str  # shown once; "<secret>" or "<secret>@<fingerprint>" when the master has TLS
    info: JoinToken


# ---------------------------------------------------------------- audit
class AuditEntry(Struct, kw_only=True):
    id: int
    ts: float
    actor: str
    role: str
    action: str
    target: str
    outcome: AuditOutcome
    client: str
    request_id: str
    details: dict[str, object] = {}
    hash: str = ""


class AuditVerify(Struct, kw_only=True):
    ok: bool
    rows: int
    first_broken: int | None = None
    message: str = ""
    chain_only: int = 0  # rows from before audit MACs, checked by the hash chain alone
