"""One's own API tokens under ``/api/v1/tokens``; admins may list other users' too."""

from __future__ import annotations

from typing import Any

from litestar import Request, delete, get, post

from mlsm.master.http import audit_target
from mlsm.master.routes.common import DbId, ServicesDep, principal
from mlsm.wire import api

# Ids are 64-bit in the database; a larger number is a bad request, not a driver overflow.


@get("/api/v1/tokens", opt={"role": "member"}, tags=["tokens"])
async def list_tokens(
    request: Request[Any, Any, Any], services: ServicesDep, all: bool = False
) -> list[api.ApiToken]:
    return await services.auth.list_tokens(principal(request), all)


@post("/api/v1/tokens", opt={"role": "member", "audit": "token.create"}, tags=["tokens"])
async def create_token(
    request: Request[Any, Any, Any], services: ServicesDep, data: api.ApiTokenCreate
) -> api.ApiTokenCreated:
    audit_target(request, f"token:{data.name}")
    return await services.auth.create_api_token(principal(request), data)


@delete(
    "/api/v1/tokens/{token_id:int}",
    opt={"role": "member", "audit": "token.revoke"},
    status_code=200,
    tags=["tokens"],
)
async def revoke_token(
    request: Request[Any, Any, Any], services: ServicesDep, token_id: DbId
) -> dict[str, bool]:
    audit_target(request, f"token:{token_id}")
    await services.auth.revoke(principal(request), token_id)
    return {"ok": True}


ROUTES = [list_tokens, create_token, revoke_token]
