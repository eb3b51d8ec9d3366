"""The two sessions with the master: :class:`SyncHttp` (the CLI's) and :class:`AsyncHttp`
(the dashboard's) send a :class:`~mlsm.client.call.Call` and decode its answer.

What a request is and what its answer means is written once, here: the JSON body, the
query (unset parameters left out), the token, the error answer mapped to the
:mod:`mlsm.errors` class the master raised (:func:`~mlsm.errors.from_response`), a master
that did not answer mapped to :class:`~mlsm.errors.Unreachable` (an
:class:`~mlsm.errors.UnavailableError`). A client refuses, when it is made, a URL that
would carry credentials in the clear to another machine.

How the bytes travel is the *wire* (:mod:`mlsm.client.wires`), chosen when a session is
made. The async face always uses httpx. The sync face uses the standard library's
``http.client`` (a CLI call is one process and a few requests: importing httpx alone would
cost more than the whole call), and httpx when it is given an httpx ``transport`` (tests
run the real Litestar app in-process through it) or when a proxy is configured in the
environment (httpx honours ``HTTP(S)_PROXY``/``NO_PROXY``; the standard wire does not).
Both wires check certificates the same way (:func:`verify_from`) and keep the same timeouts.

Over 400 lines, as one piece: the request, the answer's meaning and the error mapping are
written once here for both faces and both wires; split, the faces would drift apart.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar, cast, overload
from urllib.parse import urlsplit

import msgspec

from mlsm import errors
from mlsm.client.call import Call, Params
from mlsm.termsafe import visible

if TYPE_CHECKING:
    import ssl
    from contextlib import AbstractContextManager

    import httpx

    from mlsm.config import Settings

T = TypeVar("T")
#: Seconds to open a connection to the master.
CONNECT_TIMEOUT_S = 5.0
#: Seconds a master may take to answer one request.
READ_TIMEOUT_S = 30.0
#: Seconds to check whether a server that dropped a plain-HTTP request speaks TLS.
TLS_PROBE_TIMEOUT_S = 2.0

#: How the master's certificate is checked: a context (pinned, or a CA bundle), or True
#: for the default trust store.
Verify: TypeAlias = "ssl.SSLContext | bool"
#: A session's timeouts: seconds for everything, or httpx's per-phase ``Timeout``.
TimeoutSpec: TypeAlias = "float | httpx.Timeout | None"
#: Environment variables that send httpx through a proxy (either case).
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy")


def __getattr__(name: str) -> Any:
    """``DEFAULT_TIMEOUT`` and ``STREAM_TIMEOUT`` as httpx ``Timeout`` objects, made on first
    use so that importing the client does not import httpx."""
    if name in ("DEFAULT_TIMEOUT", "STREAM_TIMEOUT"):
        from mlsm.client.wires import httpx_timeout

        value = httpx_timeout(None, stream=name == "STREAM_TIMEOUT")
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    #: A request's timeouts: connect in CONNECT_TIMEOUT_S, answer in READ_TIMEOUT_S.
    DEFAULT_TIMEOUT: httpx.Timeout
    #: Streams (a log read or followed, an upload) wait for the next byte as long as needed.
    STREAM_TIMEOUT: httpx.Timeout


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
        import ssl

        return ssl.create_default_context(cafile=ca_file)
    return True


def verify_from(s: Settings) -> Verify:
    """How to check the master's certificate: the pinned fingerprint of ``mlsm login
    --fingerprint``, else the stored CA bundle, else the system's."""
    if s.fingerprint:
        from mlsm.tls import pinned_context

        return pinned_context(s.fingerprint, s.url)
    return ssl_context(s.ca_file)


def verify_for(url: str, verify: Verify) -> Verify:
    """Plain-HTTP URLs use no TLS: skip loading the CA bundle (~50 ms per CLI call)."""
    return False if url.startswith("http://") and verify is True else verify


def proxied() -> bool:
    """Whether the environment names a proxy (which only the httpx wire honours)."""
    return any(os.environ.get(v) or os.environ.get(v.upper()) for v in PROXY_VARS)


# ---------------------------------------------------------------- answers and errors
@dataclass(frozen=True, slots=True)
class Answer:
    """A whole answer, whichever wire carried it."""

    status: int
    reason: str
    content: bytes

    def json(self) -> Any:
        return msgspec.json.decode(self.content)


class Wire(Protocol):
    """How a sync session's requests travel (:mod:`mlsm.client.wires`). ``target`` is the
    path below the session's URL; ``long`` lifts the read timeout (uploads, streams).
    Failing to reach the master raises :class:`~mlsm.errors.Unreachable` (through
    :func:`unavailable`); an error answer is returned like any other."""

    def request(
        self,
        method: str,
        target: str,
        params: dict[str, Any],
        headers: dict[str, str],
        content: bytes | Iterable[bytes] | None,
        *,
        long: bool = False,
    ) -> Answer: ...

    def stream(
        self,
        method: str,
        target: str,
        params: dict[str, Any],
        headers: dict[str, str],
        content: bytes | None,
    ) -> AbstractContextManager[tuple[int, str, Iterator[bytes]]]: ...

    def close(self) -> None: ...


def raise_for(answer: Answer) -> None:
    if answer.status < 400:
        return
    try:
        body = answer.json()
    except (ValueError, msgspec.DecodeError):
        body = None
    raise errors.from_response(answer.status, body, visible(answer.reason))


def _speaks_tls(url: str) -> bool:
    """Whether the server at a plain-HTTP ``url`` completes a TLS handshake (nothing is sent
    but the handshake): a master serving HTTPS drops a plain request without a word."""
    import socket
    import ssl

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


def unavailable(base: str, exc: Exception, *, dropped: bool) -> errors.Unreachable:
    """The line a person reads when the master did not answer, with what to do where mlsm
    can tell: an untrusted (self-signed) certificate, or HTTPS asked for in plain HTTP.
    ``dropped``: the server closed the connection without an answer (what a TLS port does
    with a plain request)."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return errors.Unreachable(
            f"the master at {base} presents a certificate this machine does not trust "
            f"(self-signed, or from an unknown CA): pin it with `mlsm login {base} "
            "--fingerprint sha256:...` (on the master, `mlsm master --print-fingerprint` "
            "prints it, and its log says it at start), or trust its CA with --ca-file"
        )
    if base.startswith("http://") and dropped and _speaks_tls(base):
        https = "https://" + base.removeprefix("http://")
        return errors.Unreachable(f"the master at {base} speaks HTTPS: use {https}")
    return errors.Unreachable(
        f"cannot reach the master at {base}: {exc.__class__.__name__}: {text}"
    )


async def _unavailable_async(base: str, exc: Exception) -> errors.Unreachable:
    """:func:`unavailable` of an httpx error, off the event loop (its TLS probe blocks for
    a moment)."""
    import asyncio

    from mlsm.client.wires import httpx_dropped

    return await asyncio.to_thread(unavailable, base, exc, dropped=httpx_dropped(exc))


def encode_json(body: object) -> bytes | None:
    return msgspec.json.encode(body) if body is not None else None


def query(params: Params | None) -> dict[str, Any]:
    """Query parameters without the unset (``None``) ones."""
    return {k: v for k, v in (params or {}).items() if v is not None}


def _decode(answer: Answer, reply: type[T]) -> T:
    """The answer as ``reply``, in one typed pass: decoding to dicts first and converting
    them after took 2.6 times as long (150 ms for a 1,000-node list, every dashboard poll)."""
    if reply is bytes:  # a binary answer (a MessagePack manifest)
        return cast(T, answer.content)
    return msgspec.json.decode(answer.content, type=reply)


# ---------------------------------------------------------------- the two faces' cores
class _Core:
    def __init__(self, url: str, token: str, allow_plain_http: bool) -> None:
        self.url = check_url(url, allow_plain_http=allow_plain_http)
        self.token = token
        self.verify: Verify = True  # how the master's certificate is checked (WebSockets too)

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        out = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        out.update(extra or {})
        return out

    def _body_of(self, call: Call[Any]) -> tuple[Any, dict[str, str]]:
        """A call's body and the headers that say what it is."""
        if call.content is not None:
            return call.content, self._headers({"content-type": call.content_type})
        if call.body is not None:
            return encode_json(call.body), self._headers({"content-type": "application/json"})
        return None, self._headers()


class SyncHttp(_Core):
    """Blocking requests (the CLI)."""

    def __init__(
        self,
        url: str,
        token: str = "",
        *,
        verify: Verify = True,
        transport: httpx.BaseTransport | None = None,
        timeout: TimeoutSpec = None,
        allow_plain_http: bool = False,
    ) -> None:
        super().__init__(url, token, allow_plain_http)
        self.verify = verify
        from mlsm.client import wires

        verify = verify_for(self.url, verify)
        self._wire: Wire
        if transport is not None or proxied():
            self._wire = wires.HttpxWire(self.url, verify, transport, timeout)
        else:
            self._wire = wires.StdlibWire(self.url, verify, timeout)

    def close(self) -> None:
        self._wire.close()

    def send(self, call: Call[T]) -> T:
        content, headers = self._body_of(call)
        answer = self._wire.request(
            call.method,
            call.path,
            query(call.params),
            headers,
            content,
            long=call.content is not None,  # an upload may take as long as its bytes do
        )
        raise_for(answer)
        return _decode(answer, call.reply)

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
        answer = self._wire.request(*self._plain(method, path, json, params))
        raise_for(answer)
        return answer.json() if type is Any else _decode(answer, type)

    def _plain(
        self, method: str, path: str, json: object, params: Params | None
    ) -> tuple[str, str, dict[str, Any], dict[str, str], bytes | None]:
        content, headers = self._body_of(Call(method, path, object, params, json))
        return method, path, query(params), headers, content

    def stream_lines(self, path: str, params: Params | None = None) -> Iterator[bytes]:
        """The raw bytes of any GET by hand, chunk by chunk (scripts, tests)."""
        return self.stream(Call("GET", path, bytes, params))

    def stream(self, call: Call[Any]) -> Iterator[bytes]:
        """The answer's raw bytes, chunk by chunk, as they arrive; memory stays flat."""
        content, headers = self._body_of(call)
        if content is not None and not isinstance(content, bytes):
            raise TypeError("a streamed answer's request sends its body as bytes")
        with self._wire.stream(call.method, call.path, query(call.params), headers, content) as (
            status,
            reason,
            chunks,
        ):
            if status >= 400:
                raise_for(Answer(status, reason, b"".join(chunks)))
            yield from chunks


class AsyncHttp(_Core):
    """Non-blocking requests (the dashboard), over httpx."""

    def __init__(
        self,
        url: str,
        token: str = "",
        *,
        verify: Verify = True,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: TimeoutSpec = None,
        allow_plain_http: bool = False,
    ) -> None:
        import httpx

        from mlsm.client.wires import httpx_timeout

        super().__init__(url, token, allow_plain_http)
        self.verify = verify
        self._http = httpx.AsyncClient(
            base_url=self.url,
            verify=verify_for(self.url, verify),
            transport=transport,
            timeout=httpx_timeout(timeout),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, call: Call[T]) -> T:
        import httpx

        from mlsm.client.wires import httpx_timeout

        content, headers = self._body_of(call)
        if content is not None and not isinstance(content, bytes):
            raise TypeError("the async face sends raw bodies as bytes only")
        try:
            resp = await self._http.request(
                call.method,
                call.path,
                content=content,
                params=query(call.params),
                headers=headers,
                timeout=(
                    httpx_timeout(None, stream=True)
                    if call.content is not None
                    else httpx.USE_CLIENT_DEFAULT
                ),
            )
        except httpx.HTTPError as exc:
            raise await _unavailable_async(self.url, exc) from None
        answer = Answer(resp.status_code, resp.reason_phrase, resp.content)
        raise_for(answer)
        return _decode(answer, call.reply)

    async def stream(self, call: Call[Any]) -> AsyncIterator[bytes]:
        """The answer's raw bytes, chunk by chunk, as they arrive; memory stays flat."""
        import httpx

        from mlsm.client.wires import httpx_timeout

        content, headers = self._body_of(call)
        try:
            async with self._http.stream(
                call.method,
                call.path,
                params=query(call.params),
                content=content,
                headers=headers,
                timeout=httpx_timeout(None, stream=True),
            ) as resp:
                if resp.status_code >= 400:
                    raise_for(Answer(resp.status_code, resp.reason_phrase, await resp.aread()))
                async for chunk in resp.aiter_bytes():
                    yield chunk
        except httpx.HTTPError as exc:
            raise await _unavailable_async(self.url, exc) from None
