"""Typed HTTP client of the master's JSON API, used by the CLI (sync) and the dashboard (async).

Errors come back as the same :mod:`mlsm.errors` classes the master raised; a master that
cannot be reached raises :class:`~mlsm.errors.UnavailableError`. Both clients accept an httpx
``transport`` so unit tests can run the Litestar app in-process.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar, overload
from urllib.parse import urlsplit

import httpx
import msgspec

from mlsm import errors
from mlsm.termsafe import visible
from mlsm.wire import api

T = TypeVar("T")
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
DEFAULT_TIMEOUT = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
STREAM_TIMEOUT = httpx.Timeout(None, connect=CONNECT_TIMEOUT_S)


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


def ssl_context(ca_file: str = "") -> ssl.SSLContext | bool:
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    return True


def _verify_for(url: str, verify: ssl.SSLContext | bool) -> ssl.SSLContext | bool:
    """Plain-HTTP URLs use no TLS: skip loading the CA bundle (~50 ms per CLI call)."""
    return False if url.startswith("http://") and verify is True else verify


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
    except ValueError:
        body = None
    raise errors.from_response(resp.status_code, body, visible(resp.reason_phrase))


def _unavailable(base: str, exc: Exception) -> errors.UnavailableError:
    return errors.UnavailableError(
        f"cannot reach the master at {base}: {exc.__class__.__name__}: {exc}"
    )


class _Base:
    def __init__(self, url: str, token: str = "") -> None:
        self.url = url.rstrip("/")
        self.token = token

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


class Client(_Base):
    """Synchronous client (CLI)."""

    def __init__(
        self,
        url: str,
        token: str = "",
        *,
        verify: ssl.SSLContext | bool = True,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(url, token)
        self._http = httpx.Client(
            base_url=self.url,
            verify=_verify_for(self.url, verify),
            transport=transport,
            timeout=timeout,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @overload
    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = ...,
        params: dict[str, Any] | None = ...,
        type: type[T],
    ) -> T: ...
    @overload
    def call(
        self, method: str, path: str, *, json: Any = ..., params: dict[str, Any] | None = ...
    ) -> Any: ...
    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        type: type[T] | Any = Any,
    ) -> Any:
        try:
            resp = self._http.request(
                method,
                path,
                json=msgspec.to_builtins(json) if json is not None else None,
                params={k: v for k, v in (params or {}).items() if v is not None},
                headers=self._headers(),
            )
        except httpx.HTTPError as exc:
            raise _unavailable(self.url, exc) from None
        _raise_for(resp)
        data = resp.json()
        return data if type is Any else msgspec.convert(data, type)

    def stream_lines(self, path: str, params: dict[str, Any] | None = None) -> Iterator[bytes]:
        """Raw bytes of a streamed response (logs, SSE), chunk by chunk; memory stays flat."""
        try:
            with self._http.stream(
                "GET", path, params=params, headers=self._headers(), timeout=STREAM_TIMEOUT
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    _raise_for(resp)
                yield from resp.iter_bytes()
        except httpx.HTTPError as exc:
            raise _unavailable(self.url, exc) from None

    # ---------------------------------------------------------------- typed helpers
    def health(self) -> api.Health:
        return self.call("GET", "/healthz", type=api.Health)

    def login(self, username: str, password: str) -> api.LoginReply:
        return self.call(
            "POST",
            "/api/v1/auth/login",
            json=api.LoginRequest(username=username, password=password),
            type=api.LoginReply,
        )

    def me(self) -> api.Me:
        return self.call("GET", "/api/v1/auth/me", type=api.Me)


class AsyncClient(_Base):
    """Asynchronous client (dashboard)."""

    def __init__(
        self,
        url: str,
        token: str = "",
        *,
        verify: ssl.SSLContext | bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(url, token)
        self._http = httpx.AsyncClient(
            base_url=self.url,
            verify=_verify_for(self.url, verify),
            transport=transport,
            timeout=timeout,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    @overload
    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = ...,
        params: dict[str, Any] | None = ...,
        type: type[T],
    ) -> T: ...
    @overload
    async def call(
        self, method: str, path: str, *, json: Any = ..., params: dict[str, Any] | None = ...
    ) -> Any: ...
    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        type: type[T] | Any = Any,
    ) -> Any:
        try:
            resp = await self._http.request(
                method,
                path,
                json=msgspec.to_builtins(json) if json is not None else None,
                params={k: v for k, v in (params or {}).items() if v is not None},
                headers=self._headers(),
            )
        except httpx.HTTPError as exc:
            raise _unavailable(self.url, exc) from None
        _raise_for(resp)
        data = resp.json()
        return data if type is Any else msgspec.convert(data, type)

    async def stream(self, path: str, params: dict[str, Any] | None = None) -> AsyncIterator[bytes]:
        try:
            async with self._http.stream(
                "GET", path, params=params, headers=self._headers(), timeout=STREAM_TIMEOUT
            ) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    _raise_for(resp)
                async for chunk in resp.aiter_bytes():
                    yield chunk
        except httpx.HTTPError as exc:
            raise _unavailable(self.url, exc) from None
