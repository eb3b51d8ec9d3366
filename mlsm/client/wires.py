"""The sync session's two wires (see :mod:`mlsm.client.http`): how its requests travel.

:class:`StdlibWire` is the standard library's ``http.client`` on one keep-alive connection:
what every CLI call uses, because a command is one short process and importing httpx
would cost it more than its requests do. :class:`HttpxWire` is httpx, for sessions given
an httpx transport (tests run the master app in-process through it) or when the
environment names a proxy. They answer alike: the same timeouts (connect in
``CONNECT_TIMEOUT_S``, an answer in ``READ_TIMEOUT_S``, no read limit for uploads and
streams), the same certificate rules (a pinned or CA-bundle context as given; for
``verify=True`` the trust store httpx uses: ``SSL_CERT_FILE``, ``SSL_CERT_DIR``, else
certifi's bundle), and a master that does not answer becomes
:class:`~mlsm.errors.Unreachable` through the one :func:`~mlsm.client.http.unavailable`.
Neither follows redirects.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from mlsm import __version__
from mlsm.client.http import (
    CONNECT_TIMEOUT_S,
    READ_TIMEOUT_S,
    Answer,
    TimeoutSpec,
    Verify,
    unavailable,
)

if TYPE_CHECKING:
    import http.client
    import socket
    import ssl

    import httpx

#: Bytes read at once from a streamed answer (a chunk is handed on as soon as it arrives).
STREAM_CHUNK = 64 * 1024
#: What the standard wire says it is (httpx says ``python-httpx/...``).
USER_AGENT = f"mlsm/{__version__}"


def httpx_timeout(spec: TimeoutSpec, *, stream: bool = False) -> httpx.Timeout:
    """httpx's ``Timeout`` for ``spec`` (None: the defaults); ``stream``: no read limit."""
    import httpx

    if stream:
        return httpx.Timeout(None, connect=CONNECT_TIMEOUT_S)
    if spec is None:
        return httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    return spec if isinstance(spec, httpx.Timeout) else httpx.Timeout(spec)


def httpx_dropped(exc: Exception) -> bool:
    """Whether httpx saw the server close the connection without an answer."""
    import httpx

    return isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError)


def seconds(spec: TimeoutSpec) -> tuple[float | None, float | None]:
    """(connect, read) seconds for ``spec``, as :func:`httpx_timeout` reads it."""
    if spec is None:
        return CONNECT_TIMEOUT_S, READ_TIMEOUT_S
    if isinstance(spec, int | float):
        return float(spec), float(spec)
    return spec.connect, spec.read


def tls_context(verify: Verify) -> ssl.SSLContext:
    """The context a wire checks the master's certificate with (httpx's rule for True)."""
    import ssl

    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify is False:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def _query_string(params: dict[str, Any]) -> str:
    """The query as httpx writes it: booleans as true/false, a list as repeated keys."""

    def text(v: Any) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else str(v)

    pairs = [
        (k, text(item))
        for k, v in params.items()
        for item in (v if isinstance(v, list | tuple) else [v])
    ]
    return urlencode(pairs)


def _stale(sock: socket.socket) -> bool:
    """Whether an idle kept-alive connection was closed by the server (it reads as ready)."""
    import select

    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class StdlibWire:
    """``http.client`` on one keep-alive connection to the master."""

    def __init__(self, url: str, verify: Verify, timeout: TimeoutSpec) -> None:
        parts = urlsplit(url)
        self._url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._verify = verify
        self.timeouts = seconds(timeout)
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connect(self, *, long: bool) -> http.client.HTTPConnection:
        import http.client

        conn = self._conn
        if conn is not None and conn.sock is not None and _stale(conn.sock):
            conn.close()
        if conn is None:
            connect_s = self.timeouts[0]
            if self._https:
                conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=connect_s, context=tls_context(self._verify)
                )
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=connect_s)
            self._conn = conn
        if conn.sock is None:
            conn.connect()  # under the connect timeout, the TLS handshake included
        assert conn.sock is not None
        conn.sock.settimeout(None if long else self.timeouts[1])
        return conn

    def _send(
        self,
        method: str,
        target: str,
        params: dict[str, Any],
        headers: dict[str, str],
        content: bytes | Iterable[bytes] | None,
        *,
        long: bool,
    ) -> http.client.HTTPResponse:
        path = self._prefix + target
        if params:
            path += "?" + _query_string(params)
        conn = self._connect(long=long)
        # An iterable body goes chunked (http.client's rule when no length is given).
        conn.request(
            method,
            path,
            body=content,
            headers={"User-Agent": USER_AGENT, "Accept": "*/*", **headers},
        )
        return conn.getresponse()

    def _failed(self, exc: Exception) -> Exception:
        import http.client

        self.close()
        dropped = isinstance(exc, http.client.BadStatusLine | ConnectionResetError)
        return unavailable(self._url, exc, dropped=dropped)

    def request(
        self,
        method: str,
        target: str,
        params: dict[str, Any],
        headers: dict[str, str],
        content: bytes | Iterable[bytes] | None,
        *,
        long: bool = False,
    ) -> Answer:
        import http.client

        try:
            resp = self._send(method, target, params, headers, content, long=long)
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self._failed(exc) from None
        return Answer(resp.status, resp.reason, data)

    @contextmanager
    def stream(
        self,
        method: str,
        target: str,
        params: dict[str, Any],
        headers: dict[str, str],
        content: bytes | None,
    ) -> Iterator[tuple[int, str, Iterator[bytes]]]:
        import http.client

        try:
            resp = self._send(method, target, params, headers, content, long=True)
        except (OSError, http.client.HTTPException) as exc:
            raise self._failed(exc) from None
        try:
            yield resp.status, resp.reason, self._chunks(resp)
        finally:
            if not resp.isclosed():  # left half read: the connection cannot be reused
                self.close()

    def _chunks(self, resp: http.client.HTTPResponse) -> Iterator[bytes]:
        import http.client

        while True:
            try:
                chunk = resp.read1(STREAM_CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise self._failed(exc) from None
            if not chunk:
                return
            yield chunk


class HttpxWire:
    """httpx: a given transport (tests), or a proxy from the environment."""

    def __init__(
        self,
        url: str,
        verify: Verify,
        transport: httpx.BaseTransport | None,
        timeout: TimeoutSpec,
    ) -> None:
        import httpx

        self._url = url
        self._http = httpx.Client(
            base_url=url, verify=verify, transport=transport, timeout=httpx_timeout(timeout)
        )

    @property
    def timeouts(self) -> tuple[float | None, float | None]:
        return self._http.timeout.connect, self._http.timeout.read

    def close(self) -> None:
        self._http.close()

    def _failed(self, exc: Exception) -> Exception:
        return unavailable(self._url, exc, dropped=httpx_dropped(exc))

    def request(
        self,
        method: str,
        target: str,
        params: dict[str, Any],
        headers: dict[str, str],
        content: bytes | Iterable[bytes] | None,
        *,
        long: bool = False,
    ) -> Answer:
        import httpx

        try:
            resp = self._http.request(
                method,
                target,
                content=content,
                params=params,
                headers=headers,
                timeout=httpx_timeout(None, stream=True) if long else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as exc:
            raise self._failed(exc) from None
        return Answer(resp.status_code, resp.reason_phrase, resp.content)

    @contextmanager
    def stream(
        self,
        method: str,
        target: str,
        params: dict[str, Any],
        headers: dict[str, str],
        content: bytes | None,
    ) -> Iterator[tuple[int, str, Iterator[bytes]]]:
        import httpx

        try:
            with self._http.stream(
                method,
                target,
                content=content,
                params=params,
                headers=headers,
                timeout=httpx_timeout(None, stream=True),
            ) as resp:
                yield resp.status_code, resp.reason_phrase, self._chunks(resp)
        except httpx.HTTPError as exc:
            raise self._failed(exc) from None

    def _chunks(self, resp: httpx.Response) -> Iterator[bytes]:
        import httpx

        try:
            yield from resp.iter_bytes()
        except httpx.HTTPError as exc:
            raise self._failed(exc) from None
