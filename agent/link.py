"""The agent's connection to the master: MessagePack over HTTP(S), node-secret auth, pinning.

The agent only dials out. The node secret lives in ``<data>/node-secret`` (0600). When the
join token carried the master certificate's fingerprint, it is kept in
``<data>/master-fingerprint`` and every connection is pinned to it: the TLS handshake itself
fails against any other certificate, so nothing (least of all the node secret) is sent to a
server that presents one. Such a failure is reported as :class:`~mlsm.errors.PinMismatch`,
which names both fingerprints, instead of the TLS library's generic "certificate verify
failed".

This is the boundary of the agent's error handling: every failure of a call leaves here as
a class of :mod:`mlsm.errors`. An error answer is rebuilt from the master's ``AgentError``
body (:func:`mlsm.errors.from_response`: 401 ``AuthenticationError``, 403
``PermissionDenied``, 426 ``ProtocolMismatch``, 503 ``UnavailableError`` ...); no answer at
all (refused, reset, timed out, failed TLS) is :class:`~mlsm.errors.Unreachable`; an answer
this agent cannot read is a plain :class:`~mlsm.errors.MlsmError`. Nothing above the link
sees an httpx error.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import msgspec

from mlsm import PROTOCOL_VERSION, errors
from mlsm.atomicfile import write_atomic
from mlsm.wire import agent as w
from mlsm.wire import code as wc

T = TypeVar("T")
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 15.0
STREAM_TIMEOUT_S = 60.0  # a frame stream may pause this long between chunks
POLL_SLACK_S = 10.0  # a long-poll's HTTP timeout is its wait plus this
PUSH_STALL_S = 300.0  # a relay push whose next write or answer waits this long fails
FINGERPRINT_FILE = "master-fingerprint"
CHANNEL_PING_S = 20.0  # a channel's socket pings this often, and gives up after as long


def _is_certificate_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ssl.SSLCertVerificationError):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, value, 0o600)


def _refusal(resp: httpx.Response) -> errors.MlsmError:
    """The error class for an answer with an error status, from its ``AgentError`` body."""
    body: dict[str, Any] | None = None
    try:
        err = w.decode_agent_error(resp.content)
        body = {"error": {"code": err.code, "message": err.message}}
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass  # not the master's answer (a proxy's): named by its status
    return errors.from_response(resp.status_code, body, resp.reason_phrase)


class MasterLink:
    """The agent's calls to the master, one typed method per agent route.

    ``transport`` replaces the network (tests hand in an ``httpx.MockTransport``).
    """

    def __init__(
        self,
        url: str,
        data_dir: Path,
        *,
        verify: ssl.SSLContext | bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.data_dir = data_dir
        self.secret_path = data_dir / "node-secret"
        self.secret = self.secret_path.read_text().strip() if self.secret_path.exists() else ""
        fp_path = data_dir / FINGERPRINT_FILE
        self.pinned = fp_path.read_text().strip() if fp_path.exists() else ""
        self._verify = verify
        #: Told the monotonic time each answered request was sent (the lease fence's contact).
        self.on_contact: Callable[[float], None] | None = None
        self._http = httpx.AsyncClient(
            base_url=self.url,
            verify=verify,
            timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            headers={"content-type": w.MSGPACK, "accept": w.MSGPACK},
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def store_secret(self, secret: str) -> None:
        write_secret(self.secret_path, secret)
        self.secret = secret

    # ---------------------------------------------------------------- the routes
    async def register(self, req: w.RegisterRequest) -> w.RegisterReply:
        return await self.call("register", req, w.decode_register_reply, auth=False)

    async def heartbeat(self, hb: w.Heartbeat) -> w.HeartbeatReply:
        return await self.call("heartbeat", hb, w.decode_heartbeat_reply)

    async def poll_commands(self, wait_s: float, ack: list[int]) -> w.CommandBatch:
        """Wait up to ``wait_s`` for commands, acknowledging the ``ack`` ids handled."""
        poll = w.CommandPoll(protocol=PROTOCOL_VERSION, wait_s=wait_s, ack=ack)
        return await self.call("commands", poll, w.decode_batch, timeout=wait_s + POLL_SLACK_S)

    async def send_events(self, reports: list[w.JobReport]) -> None:
        jobs = w.JobEvents(protocol=PROTOCOL_VERSION, jobs=reports)
        await self.call("events", jobs, w.decode_ack)

    async def send_log(self, chunk: w.LogChunk) -> w.LogAck:
        return await self.call("logs", chunk, w.decode_log_ack)

    async def send_datasets(self, report: w.DatasetReport) -> None:
        await self.call("datasets", report, w.decode_ack)

    async def push(self, pipe_id: str, body: AsyncIterable[bytes]) -> None:
        """Stream ``body`` (pipe records) into the master's relay pipe ``pipe_id``."""
        try:
            resp = await self._http.post(
                f"/agent/v1/bulk/push/{pipe_id}",
                content=body,
                headers={**self._auth(), "content-type": "application/octet-stream"},
                timeout=httpx.Timeout(PUSH_STALL_S, connect=CONNECT_TIMEOUT_S),
            )
        except httpx.HTTPError as exc:
            raise await self._unreachable(exc) from exc
        if resp.status_code >= 400:
            raise _refusal(resp)

    @asynccontextmanager
    async def stream(self, path: str, body: Any) -> AsyncIterator[AsyncIterator[bytes]]:
        """POST ``body`` to ``/agent/v1/<path>`` and yield the answer's bytes as they come
        (a relayed pull); a refusal raises its :mod:`mlsm.errors` class before any byte."""
        req = self._http.build_request(
            "POST",
            f"/agent/v1/{path}",
            content=w.encoder.encode(body),
            headers=self._auth(),
            timeout=httpx.Timeout(PUSH_STALL_S, connect=CONNECT_TIMEOUT_S),
        )
        try:
            resp = await self._http.send(req, stream=True)
        except httpx.HTTPError as exc:
            raise await self._unreachable(exc) from exc
        try:
            if resp.status_code >= 400:
                await resp.aread()
                raise _refusal(resp)
            yield self._chunks(resp)
        finally:
            await resp.aclose()

    async def _chunks(self, resp: httpx.Response) -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise errors.Unreachable(f"the answer broke off: {type(exc).__name__}: {exc}") from exc

    def _auth(self) -> dict[str, str]:
        return {"authorization": f"Node {self.secret}"} if self.secret else {}

    async def _unreachable(self, exc: httpx.HTTPError) -> errors.MlsmError:
        if self.pinned and _is_certificate_failure(exc):
            return errors.PinMismatch(await self._pin_mismatch_message())
        return errors.Unreachable(f"{type(exc).__name__}: {exc}")

    async def code_manifest(self, digest: str, job_id: int) -> bytes:
        """The bytes of code snapshot ``digest`` (``job_id`` 0: for a project push)."""
        req = wc.CodeManifestFetch(digest=digest, job_id=job_id)
        return await self.call("code/manifest", req, bytes)

    @contextlib.asynccontextmanager
    async def code_blobs(
        self, digest: str, job_id: int, want: bytes
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """The frame stream answering an encoded ``want`` of snapshot ``digest``'s files,
        as it arrives; errors as :meth:`call` raises them."""
        req = wc.CodeBlobsFetch(digest=digest, want=want, job_id=job_id)
        headers = {"authorization": f"Node {self.secret}"}
        try:
            async with self._http.stream(
                "POST",
                "/agent/v1/code/blobs",
                content=w.encoder.encode(req),
                headers=headers,
                timeout=httpx.Timeout(STREAM_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            ) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise _refusal(resp)
                yield _chunks(resp)
        except httpx.HTTPError as exc:
            raise errors.Unreachable(f"{type(exc).__name__}: {exc}") from exc

    def channel(self, channel_id: str) -> Any:
        """Dial ``/agent/v1/channels/{channel_id}`` (a shell or a forward the master asked
        for): an async context manager of a ``websockets`` connection, under the same
        TLS trust and pin as every other call (mlsm.wire.channels)."""
        from websockets.asyncio.client import connect

        from mlsm.wire.channels import MAX_MESSAGE

        parts = urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        url = f"{scheme}://{parts.netloc}{parts.path}/agent/v1/channels/{channel_id}"
        ssl_ctx: ssl.SSLContext | None = None
        if scheme == "wss":
            if isinstance(self._verify, ssl.SSLContext):
                ssl_ctx = self._verify
            else:
                ssl_ctx = ssl.create_default_context()
                if self._verify is False:
                    ssl_ctx.check_hostname = False
                    ssl_ctx.verify_mode = ssl.CERT_NONE
        return connect(
            url,
            additional_headers=self._auth(),
            ssl=ssl_ctx,
            max_size=MAX_MESSAGE,
            open_timeout=CONNECT_TIMEOUT_S,
            compression=None,
            ping_interval=CHANNEL_PING_S,
            ping_timeout=CHANNEL_PING_S,
        )

    async def report_project(self, rep: wc.ProjectReport) -> None:
        await self.call("projects", rep, w.decode_ack)

    async def call(
        self,
        path: str,
        body: Any,
        decode: Callable[[bytes], T],
        *,
        timeout: float | None = None,
        auth: bool = True,
    ) -> T:
        """POST ``body`` to ``/agent/v1/<path>`` and decode the answer; raises only
        :mod:`mlsm.errors` classes (see the module docstring)."""
        headers = {"authorization": f"Node {self.secret}"} if auth and self.secret else {}
        kw: dict[str, Any] = {"headers": headers}
        if timeout is not None:
            kw["timeout"] = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_S)
        sent = time.monotonic()
        try:
            resp = await self._http.post(f"/agent/v1/{path}", content=w.encoder.encode(body), **kw)
        except httpx.HTTPError as exc:
            if self.pinned and _is_certificate_failure(exc):
                raise errors.PinMismatch(await self._pin_mismatch_message()) from exc
            raise errors.Unreachable(f"{type(exc).__name__}: {exc}") from exc
        if resp.status_code >= 400:
            raise _refusal(resp)
        if self.on_contact is not None:
            self.on_contact(sent)
        try:
            return decode(resp.content)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise errors.MlsmError(f"unreadable answer from the master to {path}: {exc}") from exc

    async def _pin_mismatch_message(self) -> str:
        """Why the handshake failed, in words: the fingerprint presented vs the pinned one."""
        parts = urlsplit(self.url)
        host, port = parts.hostname or "", parts.port or 443
        try:
            from mlsm.tls import FETCH_TIMEOUT_S, fingerprint_of_pem

            pem = await asyncio.to_thread(
                ssl.get_server_certificate, (host, port), timeout=FETCH_TIMEOUT_S
            )
            presented = f"sha256:{fingerprint_of_pem(pem)}"
        except (OSError, ValueError) as exc:
            presented = f"an unreadable certificate ({exc})"
        return (
            f"certificate fingerprint mismatch: the master at {host}:{port} presents "
            f"{presented}, but this agent is pinned to sha256:{self.pinned} "
            f"({self.data_dir / FINGERPRINT_FILE}); refusing to talk to it, nothing was sent. "
            "If the master's certificate was replaced on purpose, restart the agent with a "
            "join token that carries the new fingerprint (or write it to that file)"
        )


async def _chunks(resp: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.aiter_bytes():
            yield chunk
    except httpx.HTTPError as exc:
        raise errors.Unreachable(f"{type(exc).__name__}: {exc}") from exc


def is_auth_failure(exc: BaseException) -> bool:
    """The master no longer accepts this node (a removed node, a revoked secret)."""
    return isinstance(exc, errors.AuthenticationError | errors.PermissionDenied)
