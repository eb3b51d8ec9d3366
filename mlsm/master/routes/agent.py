"""The agent protocol (MessagePack) under ``/agent/v1``. Bodies are decoded with msgspec
against the shared structs; a malformed or oversized body is a 4xx, never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from litestar import Request, Response, asgi, post
from litestar.exceptions import MethodNotAllowedException
from litestar.response import Stream
from litestar.types import Receive, Scope, Send

from mlsm.errors import MlsmError, PayloadTooLarge
from mlsm.master.bodies import decode_agent_body
from mlsm.master.http import audit_target
from mlsm.master.routes.common import ServicesDep, principal
from mlsm.master.services.bulk import Pipe
from mlsm.master.services.container import services_of
from mlsm.wire import agent as w
from mlsm.wire import outputs as wo
from mlsm.wire.bulk import PipeKind, decode_pull, encode_error, pipe_header, pipe_record

T = TypeVar("T")
AGENT_BODY_LIMIT = 8 << 20  # hard cap; the configured limit is checked per request


async def _decode(
    request: Request[Any, Any, Any], services: ServicesDep, decode: Callable[[bytes], T]
) -> T:
    body = await request.body()
    limit = services.settings.agent_max_body_bytes
    if len(body) > limit:
        raise PayloadTooLarge(f"agent message of {len(body)} bytes exceeds the limit of {limit}")
    return decode_agent_body(body, decode)


def _reply(obj: Any) -> Response[bytes]:
    return Response(content=w.encoder.encode(obj), media_type=w.MSGPACK)


_MSGPACK = w.MSGPACK.encode()
_opts: dict[str, Any] = {"request_max_body_size": AGENT_BODY_LIMIT, "include_in_schema": False}


@post(
    "/agent/v1/register", opt={"role": "public", "audit": "node.register"}, status_code=200, **_opts
)
async def register(request: Request[Any, Any, Any], services: ServicesDep) -> Response[bytes]:
    req = await _decode(request, services, w.decode_register)
    request.scope["state"]["audit_actor"] = f"node:{req.name}"
    audit_target(request, f"node:{req.name}", labels=req.labels)
    return _reply(await services.nodes.register(req))


@asgi("/agent/v1/heartbeat", opt={"role": "node"}, copy_scope=False)
async def heartbeat(scope: Scope, receive: Receive, send: Send) -> None:
    """The hot path (every node, every interval): a raw ASGI handler, no response machinery."""
    if scope.get("method") != "POST":
        raise MethodNotAllowedException()
    st = services_of(scope["app"])
    limit = st.settings.agent_max_body_bytes
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        msg: Any = await receive()
        part: bytes = msg.get("body", b"")
        size += len(part)
        if size > limit:
            raise PayloadTooLarge(f"agent message exceeds the limit of {limit} bytes")
        chunks.append(part)
        more = bool(msg.get("more_body", False))
    hb = decode_agent_body(b"".join(chunks), w.decode_heartbeat)
    reg = st.nodes
    reply = await reg.heartbeat(reg.node_for(scope["user"]), hb)
    payload = w.encoder.encode(reply)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", _MSGPACK),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload, "more_body": False})


@post("/agent/v1/commands", opt={"role": "node"}, status_code=200, **_opts)
async def commands(request: Request[Any, Any, Any], services: ServicesDep) -> Response[bytes]:
    req = await _decode(request, services, w.decode_poll)
    reg = services.nodes
    reg.check_protocol(req.protocol)
    return _reply(await reg.poll(reg.node_for(principal(request)), req))


@post("/agent/v1/events", opt={"role": "node"}, status_code=200, **_opts)
async def events(request: Request[Any, Any, Any], services: ServicesDep) -> Response[bytes]:
    ev = await _decode(request, services, w.decode_events)
    reg = services.nodes
    reg.check_protocol(ev.protocol)
    await reg.events(reg.node_for(principal(request)), ev.jobs)
    return _reply(w.Ack())


@post("/agent/v1/logs", opt={"role": "node"}, status_code=200, **_opts)
async def logs(request: Request[Any, Any, Any], services: ServicesDep) -> Response[bytes]:
    chunk = await _decode(request, services, w.decode_log_chunk)
    node = services.nodes.node_for(principal(request))
    next_offset = await services.job_logs.append(node, chunk)
    return _reply(w.LogAck(job_id=chunk.job_id, next_offset=next_offset))


@post("/agent/v1/datasets", opt={"role": "node"}, status_code=200, **_opts)
async def datasets(request: Request[Any, Any, Any], services: ServicesDep) -> Response[bytes]:
    report = await _decode(request, services, w.decode_dataset_report)
    node = services.nodes.node_for(principal(request))
    await services.catalog.apply_report(node, report)
    return _reply(w.Ack())


ROUTES = [register, heartbeat, commands, events, logs, datasets]


# ---------------------------------------------------------------- relay pipes (mlsm.wire.bulk)
@post(
    "/agent/v1/bulk/push/{pipe_id:str}",
    opt={"role": "node"},
    status_code=200,
    request_max_body_size=None,  # a stream: the pipe bounds what it holds, not the body
    include_in_schema=False,
)
async def bulk_push(
    request: Request[Any, Any, Any], services: ServicesDep, pipe_id: str
) -> Response[bytes]:
    """A source node's answer into a relay pipe, streamed: the next part of the body is
    read only once the pipe took this one (see mlsm.master.services.bulk).

    A refusal (the pipe's puller went away, another node's pipe) closes the connection
    with the answer: the rest of the body is never read, so the agent's next write fails
    and it stops reading its source at once (an HTTP/1.1 client sends its whole body
    before it reads an answer)."""
    node = services.nodes.node_for(principal(request))
    try:
        pipe = services.pipes.for_push(node, pipe_id)
        await pipe.take_push(request.stream())
    except MlsmError as exc:
        return Response(
            content=w.encoder.encode(w.AgentError(code=exc.code, message=exc.message)),
            media_type=w.MSGPACK,
            status_code=exc.status,
            headers={"connection": "close"},
        )
    return _reply(w.Ack())


ROUTES += [bulk_push]


# ---------------------------------------------------------------- outputs and disk
@post("/agent/v1/outputs/removed", opt={"role": "node"}, status_code=200, **_opts)
async def outputs_removed(
    request: Request[Any, Any, Any], services: ServicesDep
) -> Response[bytes]:
    """What a sweep or purge removed on the node (the master audits each removal)."""
    report = await _decode(request, services, wo.decode_job_dirs_removed)
    node = services.nodes.node_for(principal(request))
    await services.disk.removed(node, report)
    return _reply(w.Ack())


ROUTES += [outputs_removed]


async def _records(pipe: Pipe) -> AsyncIterator[bytes]:
    """A pipe's answer as pipe records; the pipe is closed however this ends (a puller
    that goes away aborts the source's push)."""
    try:
        async for pieces in pipe.batches():  # one record, one write per batch
            size = sum(len(p) for p in pieces)
            yield b"".join([pipe_header(PipeKind.DATA, size), *pieces])
        yield pipe_record(PipeKind.END)
    except MlsmError as exc:
        yield encode_error(exc)
    finally:
        pipe.close()


@post("/agent/v1/bulk/pull", opt={"role": "node"}, status_code=200, **_opts)
async def bulk_pull(request: Request[Any, Any, Any], services: ServicesDep) -> Stream:
    """A target node pulls a transfer's manifest or frames, relayed from its source node
    (mlsm.master.services.datasets.relay); answered with pipe records as they come."""
    req = await _decode(request, services, decode_pull)
    node = services.nodes.node_for(principal(request))
    answer = await services.relay.pull(node, req)
    if isinstance(answer, bytes):  # a direct offer: small, answered whole
        return Stream(
            iter([pipe_record(PipeKind.DATA, answer), pipe_record(PipeKind.END)]),
            media_type="application/octet-stream",
        )
    return Stream(_records(answer), media_type="application/octet-stream")


ROUTES += [bulk_pull]
