"""Shells and port forwards into running jobs (WebSockets; :mod:`mlsm.master.services.channels`).

People's routes (owner and admins of the job; the guard has checked the login):

- ``WS /api/v1/jobs/{id}/shell?rows=&cols=&term=``: a shell in the job;
- ``WS /api/v1/jobs/{id}/forwards/{port}?local=``: hold a forward open (it is listed on
  the job and told when the job ends);
- ``WS /api/v1/jobs/{id}/forwards/{port}/connect``: one forwarded TCP connection;
- ``GET /api/v1/jobs/{id}/forwards``: the forwards held open into the job.

The agent's route: ``WS /agent/v1/channels/{channel_id}`` (its node only).

Query values are read and checked here (:class:`ShellQuery`), not by Litestar: a WebSocket
that fails Litestar's validation would be closed as a server error. A refusal is an
``error`` control message and a close whose code carries the status
(:mod:`mlsm.wire.channels`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec
from litestar import Request, WebSocket, get, websocket
from litestar.params import Parameter
from msgspec import Meta

from mlsm import errors
from mlsm.master.http import client_addr
from mlsm.master.routes.common import DbId, ServicesDep, principal
from mlsm.master.security import WS_REFUSAL, Principal
from mlsm.master.services.channels import Channel, ForwardHold
from mlsm.wire import channels as wc
from mlsm.wire.ints import INT64_MAX

_opts: dict[str, Any] = {"include_in_schema": False}
#: Path values as the route matched them; their ranges are checked here (_job_id, _port),
#: since a WebSocket that fails Litestar's validation is closed as a server error.
PathInt = Annotated[int, Parameter(description="checked by the handler")]
PathStr = Annotated[str, Parameter(description="checked by the handler")]


class ShellQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    rows: wc.Dim = 24
    cols: wc.Dim = 80
    term: wc.TermName = "xterm-256color"


class ForwardQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    local: Annotated[str, Meta(max_length=128)] = ""


def _query(socket: WebSocket[Any, Any, Any], kind: type[Any]) -> Any:
    raw = {k: v for k, v in socket.query_params.items()}
    try:
        return msgspec.convert(raw, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise errors.ValidationError(f"bad query: {exc}") from exc


def _job_id(job_id: int) -> int:
    if not 1 <= job_id <= INT64_MAX:
        raise errors.ValidationError(f"no job id {job_id}", path="job_id")
    return job_id


def _port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise errors.ValidationError(f"port {port} is not a TCP port (1-65535)", path="port")
    return port


async def _refuse(socket: WebSocket[Any, Any, Any], exc: errors.MlsmError) -> None:
    """Tell the person why, in the master's words, then close with the status's code."""
    err = wc.Error(code=exc.code, message=exc.message, details=exc.details)
    with contextlib.suppress(Exception):
        await socket.accept()
        await socket.send_text(wc.encode_control(err))
        await socket.close(wc.close_code(exc.status), wc.close_reason(exc.code, exc.message))


async def admitted(socket: WebSocket[Any, Any, Any]) -> Principal | None:
    """Who is calling, or None once a refusal the guard left (no login, the wrong role)
    was said and the socket closed: every WebSocket handler starts here."""
    refusal = socket.scope.get("state", {}).get(WS_REFUSAL)
    if isinstance(refusal, errors.MlsmError):
        await _refuse(socket, refusal)
        return None
    return principal(socket)


async def _relay(
    socket: WebSocket[Any, Any, Any],
    services: ServicesDep,
    opener: Callable[[str], Awaitable[Channel]],
) -> None:
    client = client_addr(socket.scope)
    try:
        await socket.accept()
        ch = await opener(client)
    except errors.MlsmError as exc:
        await _refuse(socket, exc)
        return
    try:
        await ch.splice(socket)  # the node's side says "ready" (or why not) first
    finally:
        await services.channels.close(principal(socket), ch, client)


@websocket("/api/v1/jobs/{job_id:int}/shell", opt={"role": "member"}, **_opts)
async def job_shell(
    socket: WebSocket[Any, Any, Any], services: ServicesDep, job_id: PathInt
) -> None:
    """An interactive shell in a running job (its owner and admins)."""
    if (p := await admitted(socket)) is None:
        return
    try:
        jid = _job_id(job_id)
        q: ShellQuery = _query(socket, ShellQuery)
    except errors.MlsmError as exc:
        await _refuse(socket, exc)
        return
    await _relay(
        socket,
        services,
        lambda client: services.channels.open(
            p, jid, "shell", rows=q.rows, cols=q.cols, term=q.term, client=client
        ),
    )


@websocket("/api/v1/jobs/{job_id:int}/forwards/{port:int}/connect", opt={"role": "member"}, **_opts)
async def forward_connect(
    socket: WebSocket[Any, Any, Any], services: ServicesDep, job_id: PathInt, port: PathInt
) -> None:
    """One TCP connection to ``port`` inside a running job."""
    if (p := await admitted(socket)) is None:
        return
    try:
        jid, prt = _job_id(job_id), _port(port)
    except errors.MlsmError as exc:
        await _refuse(socket, exc)
        return
    await _relay(
        socket,
        services,
        lambda client: services.channels.open(p, jid, "forward", port=prt, client=client),
    )


@websocket("/api/v1/jobs/{job_id:int}/forwards/{port:int}", opt={"role": "member"}, **_opts)
async def forward_hold(
    socket: WebSocket[Any, Any, Any], services: ServicesDep, job_id: PathInt, port: PathInt
) -> None:
    """Hold a forward open: listed on the job while this socket lives; told (an ``error``
    message, then a 4409 close) when the job ends."""
    if (p := await admitted(socket)) is None:
        return
    client = client_addr(socket.scope)
    try:
        jid, prt = _job_id(job_id), _port(port)
        q: ForwardQuery = _query(socket, ForwardQuery)
        await socket.accept()
        hold = await services.channels.hold_forward(p, jid, prt, q.local, client)
    except errors.MlsmError as exc:
        await _refuse(socket, exc)
        return
    try:
        await socket.send_text(wc.encode_control(wc.Ready()))
        await _hold_until_end(socket, hold)
    finally:
        await services.channels.release_forward(p, hold, client)


async def _hold_until_end(socket: WebSocket[Any, Any, Any], hold: ForwardHold) -> None:
    async def person_gone() -> None:
        while (await socket.receive())["type"] == "websocket.receive":
            pass

    gone = asyncio.create_task(person_gone())
    ended = asyncio.create_task(hold.ended.wait())
    try:
        await asyncio.wait({gone, ended}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        ended.cancel()
        await asyncio.gather(gone, ended, return_exceptions=True)
    if hold.ended.is_set():
        await _refuse(socket, errors.Conflict(hold.why or "the job ended"))


@get("/api/v1/jobs/{job_id:int}/forwards", opt={"role": "member"}, tags=["jobs"])
async def list_forwards(
    request: Request[Any, Any, Any], services: ServicesDep, job_id: DbId
) -> list[wc.ForwardInfo]:
    """The forwards held open into a job (its owner and admins)."""
    return await services.channels.forwards(principal(request), job_id)


@websocket("/agent/v1/channels/{channel_id:str}", opt={"role": "node"}, **_opts)
async def agent_channel(
    socket: WebSocket[Any, Any, Any], services: ServicesDep, channel_id: PathStr
) -> None:
    """The agent's half of a channel it was told to open (its node only, once)."""
    if (p := await admitted(socket)) is None:
        return
    try:
        node = services.nodes.node_for(p)
        ch = services.channels.attach(node, channel_id)
    except errors.MlsmError as exc:
        await _refuse(socket, exc)
        return
    await socket.accept()
    try:
        await ch.agent_connected(socket)
    except errors.MlsmError as exc:
        await _refuse(socket, exc)


ROUTES = [job_shell, forward_connect, forward_hold, list_forwards, agent_channel]
