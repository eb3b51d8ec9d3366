"""Shells and port forwards into jobs: the WebSocket face of the client (:mod:`mlsm.wire.channels`).

Here, and only here, the client meets the ``websockets`` library: a socket that cannot be
opened is :class:`~mlsm.errors.Unreachable`; a refusal (an ``error`` message, or a close
whose code carries an HTTP status) is the :mod:`mlsm.errors` class the master raised; a
socket that breaks off (the master restarted, the network went) is
:class:`ConnectionLost`. Callers see :class:`ChannelSocket` and mlsm errors, nothing of the
library. The token goes in the ``Authorization`` header, never in the URL, and TLS is
checked as for every other call (the stored CA or pinned fingerprint).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode, urlsplit

import msgspec

from mlsm import errors
from mlsm.client.http import CONNECT_TIMEOUT_S, _Core
from mlsm.termsafe import visible
from mlsm.wire import channels as wc

JOBS = "/api/v1/jobs"
#: Seconds between pings on an open channel; a master that does not answer as long is gone.
PING_S = 20.0


class ConnectionLost(errors.Unreachable):
    """The channel's socket broke off (the master stopped or the network went)."""

    code = "connection_lost"


def shell_path(job_id: int) -> str:
    return f"{JOBS}/{int(job_id)}/shell"


def forward_hold_path(job_id: int, port: int) -> str:
    return f"{JOBS}/{int(job_id)}/forwards/{int(port)}"


def forward_connect_path(job_id: int, port: int) -> str:
    return f"{forward_hold_path(job_id, port)}/connect"


def _ws_url(base: str, path: str, params: dict[str, Any]) -> str:
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return f"{scheme}://{parts.netloc}{parts.path}{path}" + (f"?{query}" if query else "")


def _ssl_for(base: str, verify: Any) -> ssl.SSLContext | None:
    if not base.startswith("https://"):
        return None
    if isinstance(verify, ssl.SSLContext):
        return verify
    ctx = ssl.create_default_context()
    if verify is False:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Ended(errors.MlsmError):
    """The channel ended normally while sending (callers stop quietly)."""

    code = "channel_ended"


class ChannelSocket:
    """One open channel: bytes both ways, control messages, the end."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._error: wc.Error | None = None

    async def recv(self) -> bytes | wc.AnyControl | None:
        """The next data or control message; None once the channel ended normally.
        Raises the master's refusal, or :class:`ConnectionLost`."""
        from websockets.exceptions import ConnectionClosed

        while True:
            try:
                msg = await self._ws.recv()
            except ConnectionClosed as exc:
                err = self._ended(exc)
                if err is None:
                    return None
                raise err from None
            if isinstance(msg, bytes):
                return msg
            try:
                ctl = wc.decode_control(msg)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # not ours to read: skipped, as the master skips such
            if isinstance(ctl, wc.Error):
                self._error = ctl
            return ctl

    def _ended(self, exc: Any) -> errors.MlsmError | None:
        rcvd = exc.rcvd
        code = rcvd.code if rcvd is not None else 1006
        reason = rcvd.reason if rcvd is not None else ""
        status = wc.status_of_close(code)
        if status is not None:
            if self._error is not None:
                body = {
                    "error": {
                        "code": self._error.code,
                        "message": visible(self._error.message),
                        "details": self._error.details,
                    }
                }
            else:
                err_code, message = wc.parse_close_reason(reason)
                body = {"error": {"code": err_code, "message": visible(message)}}
            return errors.from_response(status, body)
        if code == wc.NORMAL_CLOSE:
            return None
        return ConnectionLost(
            "the connection to the master was lost"
            + (" (the master stopped or restarted)" if code in (1001, 1012) else "")
        )

    async def send(self, data: bytes) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await self._ws.send(data)
        except ConnectionClosed as exc:
            raise self._ended(exc) or Ended("the channel ended") from None

    async def control(self, msg: wc.Control) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await self._ws.send(wc.encode_control(msg))
        except ConnectionClosed as exc:
            raise self._ended(exc) or Ended("the channel ended") from None

    async def close(self) -> None:
        await self._ws.close()


@asynccontextmanager
async def open_channel(
    core: _Core, path: str, params: dict[str, Any] | None = None
) -> AsyncIterator[ChannelSocket]:
    """Open the channel at ``path`` and wait until the master says it is ready; raises the
    refusal's :mod:`mlsm.errors` class (one readable line) otherwise."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus, WebSocketException

    url = _ws_url(core.url, path, params or {})
    try:
        ws = await connect(
            url,
            additional_headers=core._headers(),
            ssl=_ssl_for(core.url, core.verify),
            max_size=wc.MAX_MESSAGE,
            open_timeout=CONNECT_TIMEOUT_S,
            compression=None,
            ping_interval=PING_S,
            ping_timeout=PING_S,
        )
    except InvalidStatus as exc:
        resp = exc.response
        raise errors.from_response(resp.status_code, None, resp.reason_phrase) from None
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise errors.Unreachable(f"cannot open a channel to {core.url}: {exc}") from None
    sock = ChannelSocket(ws)
    try:
        first = await sock.recv()
        if isinstance(first, wc.Error):
            await sock.recv()  # the close that follows carries the status
            raise errors.Conflict(first.message)
        if not isinstance(first, wc.Ready):
            raise errors.MlsmError("the master answered the channel with something unexpected")
        yield sock
    finally:
        await ws.close()
