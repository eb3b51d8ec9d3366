"""User accounts under ``/api/v1/users`` (admins)."""

from __future__ import annotations

from typing import Any

from litestar import Request, get, patch, post

from mlsm.master.http import audit_target
from mlsm.master.routes.common import ServicesDep, principal
from mlsm.wire import api


@get("/api/v1/users", opt={"role": "admin"}, tags=["users"])
async def list_users(services: ServicesDep) -> list[api.User]:
    return await services.users.query()


@post("/api/v1/users", opt={"role": "admin", "audit": "user.create"}, tags=["users"])
async def create_user(
    request: Request[Any, Any, Any], services: ServicesDep, data: api.UserCreate
) -> api.User:
    audit_target(request, f"user:{data.username}", role=data.role)
    return await services.users.create(principal(request), data)


@get("/api/v1/users/{username:str}", opt={"role": "admin"}, tags=["users"])
async def get_user(services: ServicesDep, username: str) -> api.User:
    return await services.users.get(username)


@patch(
    "/api/v1/users/{username:str}", opt={"role": "admin", "audit": "user.update"}, tags=["users"]
)
async def update_user(
    request: Request[Any, Any, Any], services: ServicesDep, username: str, data: api.UserUpdate
) -> api.User:
    changes = {
        k: v
        for k, v in {
            "role": data.role,
            "disabled": data.disabled,
            "gpu_cap": data.gpu_cap,
            "unix_user": data.unix_user,
        }.items()
        if v is not None
    }
    if data.password is not None:
        changes["password"] = "changed"
    if data.revoke_api_tokens:
        changes["revoke_api_tokens"] = True
    audit_target(request, f"user:{username}", **changes)
    return await services.users.update(principal(request), username, data)


ROUTES = [list_users, create_user, get_user, update_user]
