"""The two sessions with the master: :class:`SyncHttp` (the CLI's) and :class:`AsyncHttp`
(the dashboard's) send a :class:`~mlsm.client.call.Call` and decode its answer.

Here, and only here, the client meets httpx: a failure to reach the master becomes
:class:`~mlsm.errors.Unreachable` (an :class:`~mlsm.errors.UnavailableError`), an error
answer becomes the :mod:`mlsm.errors` class the master raised (:func:`~mlsm.errors.from_response`). A client refuses, when it is
made, a URL that would carry credentials in the clear to another machine. Both faces take
an httpx ``transport``, so tests run the real Litestar app in-process through them.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload
from urllib.parse import urlsplit

import httpx
import msgspec

from mlsm import errors
from mlsm.client.call import Call, Params
from mlsm.termsafe import visible

if TYPE_CHECKING:
    from mlsm.config import Settings

T = TypeVar("T")
#: Seconds to open a connection to the master.
CONNECT_TIMEOUT_S = 5.0
#: Seconds a master may take to answer one request.
READ_TIMEOUT_S = 30.0
DEFAULT_TIMEOUT = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
#: Seconds to check whether a server that dropped a plain-HTTP request speaks TLS.
TLS_PROBE_TIMEOUT_S = 2.0
#: Streams (a log read or followed) wait for the next byte as long as the job runs.
STREAM_TIMEOUT = httpx.Timeout(None, connect=CONNECT_TIMEOUT_S)

Verify = ssl.SSLContext | bool


# ---------------------------------------------------------------- URLs and TLS
def is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def check_url(url: str, *, allow_plain_http: bool = False) -> str:
    """Refuse URLs that would send secrets in the clear to another machine."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.ConfigError(f"setting 'url': {url!r} is not an http(s) URL of a master")
    if parts.scheme == "http" and not is_loopback(url) and not allow_plain_http:
        raise errors.ConfigError(
            f"refusing to send credentials over plain HTTP to {parts.hostname}: use https, "
            "or set MLSM_ALLOW_PLAIN_HTTP=1 on a network you trust"
        )
    return url.rstrip("/")


def ssl_context(ca_file: str = "") -> Verify:
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    return True


def verify_from(s: Settings) -> Verify:
    """How to check the master's certificate: the pinned fingerprint of ``mlsm login
    --fingerprint``, else the stored CA bundle, else the system's."""
    if s.fingerprint:
        from mlsm.tls import pinned_context

        return pinned_context(s.fingerprint, s.url)
    return ssl_context(s.ca_file)


def _verify_for(url: str, verify: Verify) -> Verify:
    """Plain-HTTP URLs use no TLS: skip loading the CA bundle (~50 ms per CLI call)."""
    return False if url.startswith("http://") and verify is True else verify


# ---------------------------------------------------------------- errors
def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
    except ValueError:
        body = None
    raise errors.from_response(resp.status_code, body, visible(resp.reason_phrase))


def _speaks_tls(url: str) -> bool:
    """Whether the server at a plain-HTTP ``url`` completes a TLS handshake (nothing is sent
    but the handshake): a master serving HTTPS drops a plain request without a word."""
    import socket

    parts = urlsplit(url)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(
                (parts.hostname or "", parts.port or 80), timeout=TLS_PROBE_TIMEOUT_S
            ) as raw,
            ctx.wrap_socket(raw, server_hostname=parts.hostname),
        ):
            return True
    except (OSError, ssl.SSLError):
        return False


def _unavailable(base: str, exc: Exception) -> errors.Unreachable:
    """The line a person reads when the master did not answer, with what to do where mlsm
    can tell: an untrusted (self-signed) certificate, or HTTPS asked for in plain HTTP."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return errors.Unreachable(
            f"the master at {base} presents a certificate this machine does not trust "
            f"(self-signed, or from an unknown CA): pin it with `mlsm login {base} "
            "--fingerprint sha256:...` (on the master, `mlsm master --print-fingerprint` "
            "prints it, and its log says it at start), or trust its CA with --ca-file"
        )
    if (
        base.startswith("http://")
        and isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError)
        and _speaks_tls(base)
    ):
        https = "https://" + base.removeprefix("http://")
        return errors.Unreachable(f"the master at {base} speaks HTTPS: use {https}")
    return errors.Unreachable(
        f"cannot reach the master at {base}: {exc.__class__.__name__}: {text}"
    )


async def _unavailable_async(base: str, exc: Exception) -> errors.Unreachable:
    """:func:`_unavailable` off the event loop (its TLS probe blocks for a moment)."""
    import asyncio

    return await asyncio.to_thread(_unavailable, base, exc)


def _json(body: object) -> Any:
    return msgspec.to_builtins(body) if body is not None else None


def _query(params: Params | None) -> dict[str, Any]:
    """Query parameters without the unset (``None``) ones."""
    return {k: v for k, v in (params or {}).items() if v is not None}


def _decode(resp: httpx.Response, reply: type[T]) -> T:
    if reply is bytes:  # a binary answer (a MessagePack manifest)
        return cast(T, resp.content)
    return msgspec.convert(resp.json(), reply)


# ---------------------------------------------------------------- the two faces' cores
class _Core:
    def __init__(self, url: str, token: str, allow_plain_http: bool) -> None:
        self.url = check_url(url, allow_plain_http=allow_plain_http)
        self.token = token
        self.verify: Verify = True  # how the master's certificate is checked (WebSockets too)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


class SyncHttp(_Core):
    """Blocking requests (the CLI)."""

    def __init__(
        self,
        url: str,
        token: str = "",
        *,
        verify: Verify = True,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        allow_plain_http: bool = False,
    ) -> None:
        super().__init__(url, token, allow_plain_http)
        self.verify = verify
        self._http = httpx.Client(
            base_url=self.url,
            verify=_verify_for(self.url, verify),
            transport=transport,
            timeout=timeout,
        )

    def close(self) -> None:
        self._http.close()

    def send(self, call: Call[T]) -> T:
        if call.content is not None:
            return _decode(self._send_content(call), call.reply)
        return _decode(self._request(call.method, call.path, call.body, call.params), call.reply)

    def _send_content(self, call: Call[Any]) -> httpx.Response:
        """A request whose body is raw bytes (or an iterable of them, streamed)."""
        try:
            resp = self._http.request(
                call.method,
                call.path,
                content=call.content,
                params=_query(call.params),
                headers={**self._headers(), "content-type": call.content_type},
                timeout=STREAM_TIMEOUT,
            )
        except httpx.HTTPError as exc:
            raise _unavailable(self.url, exc) from None
        _raise_for(resp)
        return resp

    @overload
    def call(
        self,
        method: str,
        path: str,
        *,
        json: object = ...,
        params: Params | None = ...,
        type: type[T],
    ) -> T: ...
    @overload
    def call(
        self, method: str, path: str, *, json: object = ..., params: Params | None = ...
    ) -> Any: ...
    def call(
        self,
        method: str,
        path: str,
        *,
        json: object = None,
        params: Params | None = None,
        type: type[T] | Any = Any,
    ) -> Any:
        """Any request by hand (scripts, tests); mlsm itself calls the resource methods."""
        resp = self._request(method, path, json, params)
        return resp.json() if type is Any else _decode(resp, type)

    def stream_lines(self, path: str, params: Params | None = None) -> Iterator[bytes]:
        """The raw bytes of any GET by hand, chunk by chunk (scripts, tests)."""
        return self.stream(Call("GET", path, bytes, params))

    def stream(self, call: Call[Any]) -> Iterator[bytes]:
        """The answer's raw bytes, chunk by chunk, as they arrive; memory stays flat."""
        try:
            with self._http.stream(
                call.method,
                call.path,
                params=_query(call.params),
                json=_json(call.body),
                headers=self._headers(),
                timeout=STREAM_TIMEOUT,
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    _raise_for(resp)
                yield from resp.iter_bytes()
        except httpx.HTTPError as exc:
            raise _unavailable(self.url, exc) from None

    def _request(
        self, method: str, path: str, body: object, params: Params | None
    ) -> httpx.Response:
        try:
            resp = self._http.request(
                method, path, json=_json(body), params=_query(params), headers=self._headers()
            )
        except httpx.HTTPError as exc:
            raise _unavailable(self.url, exc) from None
        _raise_for(resp)
        return resp


class AsyncHttp(_Core):
    """Non-blocking requests (the dashboard)."""

    def __init__(
        self,
        url: str,
        token: str = "",
        *,
        verify: Verify = True,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        allow_plain_http: bool = False,
    ) -> None:
        super().__init__(url, token, allow_plain_http)
        self.verify = verify
        self._http = httpx.AsyncClient(
            base_url=self.url,
            verify=_verify_for(self.url, verify),
            transport=transport,
            timeout=timeout,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, call: Call[T]) -> T:
        if call.content is not None:
            if not isinstance(call.content, bytes):
                raise TypeError("the async face sends raw bodies as bytes only")
            try:
                resp = await self._http.request(
                    call.method,
                    call.path,
                    content=call.content,
                    params=_query(call.params),
                    headers={**self._headers(), "content-type": call.content_type},
                    timeout=STREAM_TIMEOUT,
                )
            except httpx.HTTPError as exc:
                raise _unavailable(self.url, exc) from None
            _raise_for(resp)
            return _decode(resp, call.reply)
        resp = await self._request(call.method, call.path, call.body, call.params)
        return _decode(resp, call.reply)

    async def stream(self, call: Call[Any]) -> AsyncIterator[bytes]:
        """The answer's raw bytes, chunk by chunk, as they arrive; memory stays flat."""
        try:
            async with self._http.stream(
                call.method,
                call.path,
                params=_query(call.params),
                json=_json(call.body),
                headers=self._headers(),
                timeout=STREAM_TIMEOUT,
            ) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    _raise_for(resp)
                async for chunk in resp.aiter_bytes():
                    yield chunk
        except httpx.HTTPError as exc:
            raise await _unavailable_async(self.url, exc) from None

    async def _request(
        self, method: str, path: str, body: object, params: Params | None
    ) -> httpx.Response:
        try:
            resp = await self._http.request(
                method, path, json=_json(body), params=_query(params), headers=self._headers()
            )
        except httpx.HTTPError as exc:
            raise await _unavailable_async(self.url, exc) from None
        _raise_for(resp)
        return resp
