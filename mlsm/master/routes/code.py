"""Code in: snapshots (``/api/v1/code``), projects (``/api/v1/projects``), and the agents'
side of both (``/agent/v1/code/...``, ``/agent/v1/projects``). See :mod:`mlsm.wire.code`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Request, Response, delete, get, post
from litestar.params import Parameter
from litestar.response import Stream

from mlsm.bulk import decode_want
from mlsm.errors import PayloadTooLarge
from mlsm.master.bodies import decode_agent_body
from mlsm.master.http import audit_target
from mlsm.master.routes.common import ServicesDep, principal
from mlsm.master.routeshape import standing_in_for
from mlsm.wire import agent as w
from mlsm.wire import code as wc

Digest = Annotated[str, Parameter(pattern=r"^[0-9a-f]{64}$")]
_agent_opts: dict[str, Any] = {"include_in_schema": False}


@post(
    "/api/v1/code",
    opt={"role": "member", "audit": "code.offer"},
    status_code=200,
    tags=["code"],
    request_max_body_size=wc.MAX_MANIFEST_BYTES,
)
async def offer_code(request: Request[Any, Any, Any], services: ServicesDep) -> wc.CodeOffer:
    """A code snapshot's manifest (MessagePack, see mlsm.bulk.manifest): answers which of
    its files the master wants sent."""
    offer = await services.code.offer(principal(request), await request.body())
    audit_target(request, f"code:{offer.digest[:16]}", files=offer.files, bytes=offer.bytes)
    return offer


@post(
    "/api/v1/code/{digest:str}/blobs",
    opt={"role": "member", "audit": "code.upload"},
    status_code=200,
    tags=["code"],
    request_max_body_size=None,  # bounded by the snapshot's own size (services/code)
)
async def upload_code(
    request: Request[Any, Any, Any], services: ServicesDep, digest: Digest
) -> wc.CodeOffer:
    """The wanted files of an offered snapshot, as one frame stream (mlsm.bulk.frames)."""
    offer, received = await services.code.receive(principal(request), digest, request.stream())
    audit_target(request, f"code:{digest[:16]}", received_bytes=received)
    return offer


@get("/api/v1/projects", opt={"role": "member"}, tags=["code"])
async def list_projects(
    request: Request[Any, Any, Any], services: ServicesDep, all: bool = False
) -> list[wc.Project]:
    """A member's projects; everyone's for an admin with ``all``."""
    return await services.projects.list(principal(request), everyone=all)


@post("/api/v1/projects", opt={"role": "member", "audit": "project.push"}, tags=["code"])
async def push_project(
    request: Request[Any, Any, Any], services: ServicesDep, data: wc.ProjectPush
) -> wc.Project:
    """Bring project NAME on a node up to an uploaded snapshot (created when new)."""
    audit_target(request, f"project:{data.name}", node=data.node, digest=data.digest[:16])
    return await services.projects.push(principal(request), data)


@post(
    "/api/v1/projects/copy",
    opt={"role": "admin", "audit": "project.copy"},
    status_code=202,
    tags=["code"],
)
async def copy_project(
    request: Request[Any, Any, Any], services: ServicesDep, data: wc.ProjectCopy
) -> wc.Project:
    """Copy a user's project from one node to another (admins); the target's row says
    ``syncing`` until the target has it."""
    audit_target(request, f"project:{data.user}/{data.name}", source=data.source, to=data.target)
    return await services.projects.copy(principal(request), data)


@delete(
    "/api/v1/projects/{name:str}",
    opt={"role": "member", "audit": "project.remove"},
    status_code=200,
    tags=["code"],
)
async def remove_project(
    request: Request[Any, Any, Any],
    services: ServicesDep,
    name: Annotated[str, Parameter(max_length=64)],
    node: Annotated[str, Parameter(min_length=1, max_length=63)],
    user: Annotated[str, Parameter(max_length=64)] = "",
) -> wc.Project:
    """Remove a project's tree from a node (the owner's, or any for an admin)."""
    audit_target(request, f"project:{user or principal(request).name}/{name}", node=node)
    return await services.projects.remove(principal(request), name, node, user)


@delete("/api/v1/projects/copy", **standing_in_for(remove_project))
async def remove_project_named_copy(
    request: Request[Any, Any, Any],
    services: ServicesDep,
    node: Annotated[str, Parameter(min_length=1, max_length=63)],
    user: Annotated[str, Parameter(max_length=64)] = "",
) -> wc.Project:
    """``DELETE /api/v1/projects/{name}`` for a project named ``copy``, which the static
    ``POST /api/v1/projects/copy`` would otherwise answer with 405."""
    removed: wc.Project = await remove_project.fn(
        request=request, services=services, name="copy", node=node, user=user
    )
    return removed


# ---------------------------------------------------------------- agents
async def _agent_body(request: Request[Any, Any, Any], services: ServicesDep) -> bytes:
    body = await request.body()
    limit = services.settings.agent_max_body_bytes
    if len(body) > limit:
        raise PayloadTooLarge(f"agent message of {len(body)} bytes exceeds the limit of {limit}")
    return body


@post("/agent/v1/code/manifest", opt={"role": "node"}, status_code=200, **_agent_opts)
async def agent_manifest(request: Request[Any, Any, Any], services: ServicesDep) -> Response[bytes]:
    """A snapshot's manifest, for a node that has a job (or project push) needing it."""
    req = decode_agent_body(await _agent_body(request, services), wc.decode_manifest_fetch)
    node = services.nodes.node_for(principal(request))
    services.code.check_fetch(node.id, req.digest, req.job_id)
    raw = await services.code.manifest_bytes(req.digest)
    return Response(content=raw, media_type=wc.OCTETS)


@post("/agent/v1/code/blobs", opt={"role": "node"}, status_code=200, **_agent_opts)
async def agent_blobs(request: Request[Any, Any, Any], services: ServicesDep) -> Stream:
    """Files of a snapshot as a frame stream answering the node's want."""
    req = decode_agent_body(await _agent_body(request, services), wc.decode_blobs_fetch)
    node = services.nodes.node_for(principal(request))
    services.code.check_fetch(node.id, req.digest, req.job_id)
    want = decode_want(req.want)
    m = await services.code.manifest(req.digest)
    frames: AsyncIterator[bytes] = services.code.frames(m, want)
    return Stream(frames, media_type=wc.OCTETS)


@post("/agent/v1/projects/pull", opt={"role": "node"}, status_code=200, **_agent_opts)
async def agent_project_pull(
    request: Request[Any, Any, Any], services: ServicesDep
) -> Response[bytes] | Stream:
    """A project copy's target pulls the source's manifest or frames (relayed)."""
    req = decode_agent_body(await _agent_body(request, services), wc.decode_project_pull)
    node = services.nodes.node_for(principal(request))
    answer = await services.projects.pull(node.id, req)
    if isinstance(answer, bytes):
        return Response(content=answer, media_type=wc.OCTETS)
    return Stream(answer, media_type=wc.OCTETS)


@post("/agent/v1/projects", opt={"role": "node"}, status_code=200, **_agent_opts)
async def agent_project_report(
    request: Request[Any, Any, Any], services: ServicesDep
) -> Response[bytes]:
    """What became of a SyncProject or RemoveProject."""
    rep = decode_agent_body(await _agent_body(request, services), wc.decode_project_report)
    node = services.nodes.node_for(principal(request))
    await services.projects.report(node.id, rep)
    return Response(content=w.encoder.encode(w.Ack()), media_type=w.MSGPACK)


ROUTES = [
    offer_code,
    upload_code,
    list_projects,
    push_project,
    copy_project,
    remove_project,
    remove_project_named_copy,
    agent_manifest,
    agent_blobs,
    agent_project_pull,
    agent_project_report,
]
