"""Users (admins manage them) and API tokens (everyone has their own)."""

from __future__ import annotations

from mlsm.client.call import Ack, Call, segment
from mlsm.client.resource import AsyncResource, SyncResource, async_method, sync_method
from mlsm.wire import api

USERS = "/api/v1/users"
TOKENS = "/api/v1/tokens"


def _user(name: str) -> str:
    return f"{USERS}/{segment(name, 'user')}"


def _list_users() -> Call[list[api.User]]:
    return Call("GET", USERS, list[api.User])


def _get_user(name: str) -> Call[api.User]:
    return Call("GET", _user(name), api.User)


def _create_user(req: api.UserCreate) -> Call[api.User]:
    return Call("POST", USERS, api.User, body=req)


def _update_user(name: str, req: api.UserUpdate) -> Call[api.User]:
    """Change a user's role, state, password, Unix account or GPU cap (audited)."""
    return Call("PATCH", _user(name), api.User, body=req)


def _list_tokens(*, all: bool = False) -> Call[list[api.ApiToken]]:
    """Your API tokens; every user's with ``all`` (admins)."""
    return Call("GET", TOKENS, list[api.ApiToken], params={"all": all or None})


def _create_token(req: api.ApiTokenCreate) -> Call[api.ApiTokenCreated]:
    """A new API token; its secret is in the answer, once."""
    return Call("POST", TOKENS, api.ApiTokenCreated, body=req)


def _revoke_token(token_id: int) -> Call[Ack]:
    return Call("DELETE", f"{TOKENS}/{int(token_id)}", Ack)


class Users(SyncResource):
    list = sync_method(_list_users)
    get = sync_method(_get_user)
    create = sync_method(_create_user)
    update = sync_method(_update_user)


class AsyncUsers(AsyncResource):
    list = async_method(_list_users)
    get = async_method(_get_user)
    create = async_method(_create_user)
    update = async_method(_update_user)


class Tokens(SyncResource):
    list = sync_method(_list_tokens)
    create = sync_method(_create_token)
    revoke = sync_method(_revoke_token)


class AsyncTokens(AsyncResource):
    list = async_method(_list_tokens)
    create = async_method(_create_token)
    revoke = async_method(_revoke_token)
