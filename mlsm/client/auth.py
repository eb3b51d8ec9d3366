"""Who the client is: log in (a session token), log out, ask who the token belongs to,
change one's own password; and whether the master answers at all (``/healthz``, public)."""

from __future__ import annotations

from mlsm.client.call import Ack, Call
from mlsm.client.resource import AsyncResource, SyncResource, async_method, sync_method
from mlsm.wire import api

AUTH = "/api/v1/auth"


def _health() -> Call[api.Health]:
    """The master's version and protocol; answers without a token."""
    return Call("GET", "/healthz", api.Health)


def _login(username: str, password: str) -> Call[api.LoginReply]:
    """A new session token for ``username``."""
    body = api.LoginRequest(username=username, password=password)
    return Call("POST", f"{AUTH}/login", api.LoginReply, body=body)


def _logout() -> Call[Ack]:
    """Revoke the session token this client uses."""
    return Call("POST", f"{AUTH}/logout", Ack)


def _me() -> Call[api.Me]:
    return Call("GET", f"{AUTH}/me", api.Me)


def _change_password(body: api.PasswordChange) -> Call[api.PasswordChanged]:
    """Change the caller's own password; the caller's other sessions end."""
    return Call("POST", f"{AUTH}/password", api.PasswordChanged, body=body)


class Auth(SyncResource):
    health = sync_method(_health)
    login = sync_method(_login)
    logout = sync_method(_logout)
    me = sync_method(_me)
    change_password = sync_method(_change_password)


class AsyncAuth(AsyncResource):
    health = async_method(_health)
    login = async_method(_login)
    logout = async_method(_logout)
    me = async_method(_me)
    change_password = async_method(_change_password)
