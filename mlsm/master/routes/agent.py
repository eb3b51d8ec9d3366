"""The agent protocol (MessagePack) under ``/agent/v1``. Bodies are decoded with msgspec
against the shared structs; a malformed or oversized body is a 4xx, never a 500."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response, post

from mlsm.errors import ValidationError
from mlsm.master.http import audit_target
from mlsm.master.routes.common import principal, services
from mlsm.wire import agent as w

T = TypeVar("T")
AGENT_BODY_LIMIT = 8 << 20  # hard cap; the configured limit is checked per request


async def _decode(request: Request[Any, Any, Any], decode: Callable[[bytes], T]) -> T:
    body = await request.body()
    limit = services(request).settings.agent_max_body_bytes
    if len(body) > limit:
        from mlsm.errors import PayloadTooLarge

        raise PayloadTooLarge(f"agent message of {len(body)} bytes exceeds the limit of {limit}")
    try:
        return decode(body)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"invalid agent message: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ValidationError(f"malformed MessagePack: {exc}") from None


def _reply(obj: Any) -> Response[bytes]:
    return Response(content=w.encoder.encode(obj), media_type=w.MSGPACK)


_opts: dict[str, Any] = {"request_max_body_size": AGENT_BODY_LIMIT, "include_in_schema": False}


@post(
    "/agent/v1/register", opt={"role": "public", "audit": "node.register"}, status_code=200, **_opts
)
async def register(request: Request[Any, Any, Any]) -> Response[bytes]:
    req = await _decode(request, w.decode_register)
    request.scope["state"]["audit_actor"] = f"node:{req.name}"
    audit_target(request, f"node:{req.name}", labels=req.labels)
    return _reply(await services(request).nodes.register(req))


@post("/agent/v1/heartbeat", opt={"role": "node"}, status_code=200, **_opts)
async def heartbeat(request: Request[Any, Any, Any]) -> Response[bytes]:
    hb = await _decode(request, w.decode_heartbeat)
    reg = services(request).nodes
    return _reply(await reg.heartbeat(reg.node_for(principal(request)), hb))


@post("/agent/v1/commands", opt={"role": "node"}, status_code=200, **_opts)
async def commands(request: Request[Any, Any, Any]) -> Response[bytes]:
    req = await _decode(request, w.decode_poll)
    reg = services(request).nodes
    reg.check_protocol(req.protocol)
    return _reply(await reg.poll(reg.node_for(principal(request)), req))


@post("/agent/v1/events", opt={"role": "node"}, status_code=200, **_opts)
async def events(request: Request[Any, Any, Any]) -> Response[bytes]:
    ev = await _decode(request, w.decode_events)
    reg = services(request).nodes
    reg.check_protocol(ev.protocol)
    await reg.events(reg.node_for(principal(request)), ev.jobs)
    return _reply(w.Ack())


@post("/agent/v1/logs", opt={"role": "node"}, status_code=200, **_opts)
async def logs(request: Request[Any, Any, Any]) -> Response[bytes]:
    chunk = await _decode(request, w.decode_log_chunk)
    st = services(request)
    node = st.nodes.node_for(principal(request))
    next_offset = await st.jobs.append_log(node, chunk)
    return _reply(w.LogAck(job_id=chunk.job_id, next_offset=next_offset))


@post("/agent/v1/datasets", opt={"role": "node"}, status_code=200, **_opts)
async def datasets(request: Request[Any, Any, Any]) -> Response[bytes]:
    report = await _decode(request, w.decode_dataset_report)
    st = services(request)
    node = st.nodes.node_for(principal(request))
    await st.datasets.apply_report(node, report)
    return _reply(w.Ack())


ROUTES = [register, heartbeat, commands, events, logs, datasets]
