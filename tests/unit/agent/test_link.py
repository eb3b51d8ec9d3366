"""The agent's link maps every failure into :mod:`mlsm.errors` at its boundary.

The link runs against an ``httpx.MockTransport`` that answers as the master's agent routes
do (MessagePack bodies, ``AgentError`` on refusals) or fails as a network does; callers
above the link must only ever see classes of the one error tree.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import httpx
import msgspec
import pytest

from agent.link import FINGERPRINT_FILE, MasterLink, is_auth_failure
from mlsm import errors
from mlsm.wire import agent as w

Handler = Callable[[httpx.Request], httpx.Response]


def link(tmp_path: Path, handler: Handler, url: str = "http://master.test") -> MasterLink:
    (tmp_path / "node-secret").write_text("s3cret")
    return MasterLink(url, tmp_path, transport=httpx.MockTransport(handler))


def refusal(status: int, code: str, message: str) -> Handler:
    body = msgspec.msgpack.encode(w.AgentError(code=code, message=message))
    return lambda request: httpx.Response(status, content=body)


def failing(exc: type[httpx.TransportError]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc("the network said no", request=request)

    return handler


CHUNK = w.LogChunk(job_id=7, attempt=1, offset=0, data=b"hello\n")


async def test_an_answer_is_decoded_into_its_wire_struct(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=w.encoder.encode(w.LogAck(job_id=7, next_offset=6)))

    ack = await link(tmp_path, handler).send_log(CHUNK)
    assert ack == w.LogAck(job_id=7, next_offset=6)
    assert seen[0].url.path == "/agent/v1/logs"
    assert seen[0].headers["authorization"] == "Node s3cret"
    assert w.decode_log_chunk(seen[0].content) == CHUNK


@pytest.mark.parametrize(
    "exc", [httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError]
)
async def test_no_answer_is_unreachable_never_an_httpx_error(
    tmp_path: Path, exc: type[httpx.TransportError]
) -> None:
    with pytest.raises(errors.Unreachable) as got:
        await link(tmp_path, failing(exc)).send_events([])
    assert isinstance(got.value, errors.UnavailableError)
    assert not isinstance(got.value, httpx.HTTPError)
    assert exc.__name__ in got.value.message and "the network said no" in got.value.message
    assert not is_auth_failure(got.value)


@pytest.mark.parametrize(
    ("status", "code", "cls", "auth"),
    [
        (401, "unauthenticated", errors.AuthenticationError, True),
        (403, "forbidden", errors.PermissionDenied, True),
        (426, "protocol_mismatch", errors.ProtocolMismatch, False),
        (429, "rate_limited", errors.RateLimited, False),
        (503, "unavailable", errors.UnavailableError, False),
        (400, "validation_error", errors.ValidationError, False),
        # A code this agent does not know (a newer master's) keeps its status's class.
        (403, "attempt_moved", errors.PermissionDenied, True),
        (401, "secret_rotated", errors.AuthenticationError, True),
    ],
)
async def test_a_refusal_is_rebuilt_as_its_class(
    tmp_path: Path, status: int, code: str, cls: type[errors.MlsmError], auth: bool
) -> None:
    with pytest.raises(errors.MlsmError) as got:
        await link(tmp_path, refusal(status, code, "no, because")).heartbeat(
            w.Heartbeat(protocol=1, seq=1, sent_at=0.0)
        )
    assert type(got.value) is cls
    assert got.value.message == "no, because"
    assert is_auth_failure(got.value) is auth
    assert not isinstance(got.value, errors.Unreachable)  # the master did answer


@pytest.mark.parametrize(("status", "cls"), [(502, errors.MlsmError), (418, errors.ClientError)])
async def test_an_answer_that_is_not_the_masters_is_named_by_its_status(
    tmp_path: Path, status: int, cls: type[errors.MlsmError]
) -> None:
    def proxy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text="<html>bad gateway</html>")

    with pytest.raises(errors.MlsmError) as got:
        await link(tmp_path, proxy).send_datasets(w.DatasetReport(full=True))
    assert type(got.value) is cls
    assert f"HTTP {status}" in got.value.message


async def test_an_unreadable_answer_is_an_mlsm_error(tmp_path: Path) -> None:
    def garbage(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"\xc1 not msgpack")

    with pytest.raises(errors.MlsmError) as got:
        await link(tmp_path, garbage).poll_commands(0.0, [])
    assert type(got.value) is errors.MlsmError
    assert "unreadable answer from the master to commands" in got.value.message


async def test_register_sends_no_node_secret(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        reply = w.RegisterReply(
            node_id=3, name="n1", node_secret="new", heartbeat_interval=1.0, lease=5.0
        )
        return httpx.Response(200, content=w.encoder.encode(reply))

    reply = await link(tmp_path, handler).register(
        w.RegisterRequest(protocol=1, join_token="jt", name="n1")
    )
    assert (reply.node_id, reply.node_secret) == (3, "new")
    assert "authorization" not in seen[0].headers


async def test_a_certificate_other_than_the_pinned_one_is_a_pin_mismatch(tmp_path: Path) -> None:
    """Unreachable for its callers (they keep retrying), naming the pinned fingerprint."""
    (tmp_path / FINGERPRINT_FILE).write_text("ab" * 32)
    with socket.socket() as sock:  # a port nothing listens on: the certificate is unreadable
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    def handshake_fails(request: httpx.Request) -> httpx.Response:
        try:
            raise ssl.SSLCertVerificationError("certificate verify failed")
        except ssl.SSLError as cause:
            raise httpx.ConnectError("handshake failed", request=request) from cause

    with pytest.raises(errors.PinMismatch) as got:
        await link(tmp_path, handshake_fails, f"https://127.0.0.1:{port}").send_events([])
    assert isinstance(got.value, errors.Unreachable)
    assert "certificate fingerprint mismatch" in got.value.message
    assert f"pinned to sha256:{'ab' * 32}" in got.value.message
