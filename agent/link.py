"""The agent's connection to the master: MessagePack over HTTP(S), node-secret auth, pinning.

The agent only dials out. The node secret lives in ``<data>/node-secret`` (0600). When the
join token carried the master certificate's fingerprint, it is kept in
``<data>/master-fingerprint`` and every connection is pinned to it: the TLS handshake itself
fails against any other certificate, so nothing (least of all the node secret) is sent to a
server that presents one. Such a failure is reported as :class:`PinMismatch`, which names
both fingerprints, instead of the TLS library's generic "certificate verify failed".
"""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import msgspec

from mlsm import errors
from mlsm.wire import agent as w

T = TypeVar("T")
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 15.0
POLL_SLACK_S = 10.0  # a long-poll's HTTP timeout is its wait plus this
FINGERPRINT_FILE = "master-fingerprint"


class MasterError(Exception):
    """The master refused a call; ``code`` is the stable error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class PinMismatch(httpx.ConnectError):
    """The master presented a certificate other than the pinned one; nothing was sent.

    A :class:`httpx.ConnectError`, so callers keep retrying as for an unreachable master
    (the right certificate may come back), while the message says exactly what is wrong.
    """


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
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class MasterLink:
    def __init__(self, url: str, data_dir: Path, *, verify: ssl.SSLContext | bool = True) -> None:
        self.url = url.rstrip("/")
        self.data_dir = data_dir
        self.secret_path = data_dir / "node-secret"
        self.secret = self.secret_path.read_text().strip() if self.secret_path.exists() else ""
        fp_path = data_dir / FINGERPRINT_FILE
        self.pinned = fp_path.read_text().strip() if fp_path.exists() else ""
        self._verify = verify
        self._http = httpx.AsyncClient(
            base_url=self.url,
            verify=verify,
            timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            headers={"content-type": w.MSGPACK, "accept": w.MSGPACK},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def store_secret(self, secret: str) -> None:
        write_secret(self.secret_path, secret)
        self.secret = secret

    async def call(
        self, path: str, body: Any, decode: Any, *, timeout: float | None = None, auth: bool = True
    ) -> Any:
        headers = {"authorization": f"Node {self.secret}"} if auth and self.secret else {}
        kw: dict[str, Any] = {"headers": headers}
        if timeout is not None:
            kw["timeout"] = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_S)
        try:
            resp = await self._http.post(f"/agent/v1/{path}", content=w.encoder.encode(body), **kw)
        except httpx.ConnectError as exc:
            if self.pinned and _is_certificate_failure(exc):
                raise PinMismatch(await self._pin_mismatch_message(), request=exc.request) from exc
            raise
        if resp.status_code >= 400:
            code, message = "error", f"HTTP {resp.status_code}"
            try:
                err = w.decode_agent_error(resp.content)
                code, message = err.code, err.message
            except (msgspec.DecodeError, msgspec.ValidationError):
                pass
            raise MasterError(resp.status_code, code, message)
        return decode(resp.content)

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

    async def register(self, req: w.RegisterRequest) -> w.RegisterReply:
        return await self.call("register", req, w.decode_register_reply, auth=False)  # type: ignore[no-any-return]


def is_auth_failure(exc: BaseException) -> bool:
    return isinstance(exc, MasterError) and exc.status in (401, 403)


def as_error(exc: MasterError) -> errors.MlsmError:
    return errors.from_response(exc.status, {"error": {"code": exc.code, "message": exc.message}})
