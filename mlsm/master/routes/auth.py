"""Logging in and out, changing one's password, and ``/api/v1/auth/me``."""

from __future__ import annotations

from typing import Any

from litestar import Request, get, post

from mlsm.master.http import audit_target, client_addr
from mlsm.master.routes.common import ServicesDep, principal
from mlsm.wire import api


@post(
    "/api/v1/auth/login",
    opt={"role": "public", "audit": "auth.login"},
    status_code=200,
    tags=["auth"],
)
async def login(
    request: Request[Any, Any, Any], services: ServicesDep, data: api.LoginRequest
) -> api.LoginReply:
    request.scope["state"]["audit_actor"] = data.username
    audit_target(request, f"user:{data.username}")
    return await services.auth.login(data.username, data.password, client_addr(request.scope))


@post(
    "/api/v1/auth/logout",
    opt={"role": "member", "audit": "auth.logout"},
    status_code=200,
    tags=["auth"],
)
async def logout(request: Request[Any, Any, Any], services: ServicesDep) -> dict[str, bool]:
    await services.auth.logout(principal(request))
    return {"ok": True}


@post(
    "/api/v1/auth/password",
    opt={"role": "member", "audit": "auth.password"},
    status_code=200,
    tags=["auth"],
)
async def change_password(
    request: Request[Any, Any, Any], services: ServicesDep, data: api.PasswordChange
) -> api.PasswordChanged:
    """Change your own password (the current one is checked, under the login limits); your
    other sessions end, and your API tokens too when asked."""
    p = principal(request)
    audit_target(request, f"user:{p.name}", revoke_api_tokens=data.revoke_api_tokens)
    revoked = await services.auth.change_password(p, data, client_addr(request.scope))
    return api.PasswordChanged(revoked=revoked)


@get("/api/v1/auth/me", opt={"role": "member"}, tags=["auth"])
async def me(request: Request[Any, Any, Any]) -> api.Me:
    p = principal(request)
    return api.Me(username=p.name, role=p.person_role(), token_kind=p.token_kind or "api")


ROUTES = [login, logout, change_password, me]
