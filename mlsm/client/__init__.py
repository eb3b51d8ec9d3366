"""Typed client of the master's JSON API: :class:`Client` (sync, the CLI) and
:class:`AsyncClient` (async, the dashboard), grouped by resource as httpx groups its faces::

    client.auth          health, login, logout, me, change_password
    client.users         list, get, create, update
    client.tokens        list, create, revoke               (API tokens)
    client.join_tokens   list, create, revoke               (agents join with them)
    client.nodes         list, get, history, drain, resume, set_labels, update, remove, summary
    client.jobs          submit, list, get, cancel, release, log, follow
    client.datasets      list, get, update, start_import, start_transfer, delete, digest
    client.transfers     list, get, cancel
    client.settings      get, update                        (the lab's policies)
    client.audit         list, verify

Methods take and return :mod:`mlsm.wire.api` structs; ``jobs.follow`` yields
:mod:`mlsm.wire.follow` events. Every API path is spelled once, in this package: the
CLI and the dashboard call methods. Errors come back as the same :mod:`mlsm.errors`
classes the master raised; a master that cannot be reached raises
:class:`~mlsm.errors.Unreachable`, an :class:`~mlsm.errors.UnavailableError`. A client refuses a plain-HTTP URL of another
machine unless told ``allow_plain_http``. ``transport`` takes an httpx transport, so
tests run the real Litestar app in-process (``httpx.ASGITransport``); without one the sync
face sends over the standard library (:mod:`mlsm.client.wires`), so a CLI call never
imports httpx. ``DEFAULT_TIMEOUT`` and ``STREAM_TIMEOUT`` (httpx ``Timeout`` objects) are
made on first use for the same reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlsm.client.clients import AsyncClient, Client
from mlsm.client.http import (
    CONNECT_TIMEOUT_S,
    READ_TIMEOUT_S,
    Verify,
    check_url,
    is_loopback,
    ssl_context,
    verify_from,
)

if TYPE_CHECKING:
    from mlsm.client.http import DEFAULT_TIMEOUT, STREAM_TIMEOUT

__all__ = [
    "CONNECT_TIMEOUT_S",
    "DEFAULT_TIMEOUT",
    "READ_TIMEOUT_S",
    "STREAM_TIMEOUT",
    "AsyncClient",
    "Client",
    "Verify",
    "check_url",
    "is_loopback",
    "ssl_context",
    "verify_from",
]


def __getattr__(name: str) -> Any:
    if name in ("DEFAULT_TIMEOUT", "STREAM_TIMEOUT"):
        from mlsm.client import http

        return getattr(http, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
