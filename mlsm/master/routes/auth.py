from __future__ import annotations

from typing import Any

from litestar import Request, get, post

from mlsm.master.http import audit_target, client_addr
from mlsm.master.routes.common import principal, services
from mlsm.wire import api


@post(
    "/api/v1/auth/login",
    opt={"role": "public", "audit": "auth.login"},
    status_code=200,
    tags=["auth"],
)
async def login(request: Request[Any, Any, Any], data: api.LoginRequest) -> api.LoginReply:
    request.scope["state"]["audit_actor"] = data.username
    audit_target(request, f"user:{data.username}")
    return await services(request).auth.login(
        data.username, data.password, client_addr(request.scope)
    )


@post(
    "/api/v1/auth/logout",
    opt={"role": "member", "audit": "auth.logout"},
    status_code=200,
    tags=["auth"],
)
async def logout(request: Request[Any, Any, Any]) -> dict[str, bool]:
    await services(request).auth.logout(principal(request))
    return {"ok": True}


@get("/api/v1/auth/me", opt={"role": "member"}, tags=["auth"])
async def me(request: Request[Any, Any, Any]) -> api.Me:
    p = principal(request)
    return api.Me(username=p.name, role=p.role, token_kind=p.token_kind or "api")  # type: ignore[arg-type]


ROUTES = [login, logout, me]
