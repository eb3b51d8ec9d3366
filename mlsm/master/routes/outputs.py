"""A job's outputs under ``/api/v1/jobs/{id}/outputs``: listed, and fetched as a manifest
then frames (relayed from the job's node; see :mod:`mlsm.master.services.outputs`)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.params import Parameter
from litestar.response import Stream

from mlsm.master.http import audit_target
from mlsm.master.routes.common import DbId, ServicesDep, principal
from mlsm.wire import outputs as wo

MSGPACK = "application/msgpack"
FRAMES = "application/octet-stream"


@get("/api/v1/jobs/{job_id:int}/outputs", opt={"role": "member"}, tags=["outputs"])
async def list_outputs(
    request: Request[Any, Any, Any],
    services: ServicesDep,
    job_id: DbId,
    path: str = Parameter(default="", max_length=4096),
) -> wo.OutputListing:
    """The files under ``path`` of the job's directory (its owner and admins)."""
    return await services.outputs.listing(principal(request), job_id, path)


@post(
    "/api/v1/jobs/{job_id:int}/outputs/manifest",
    opt={"role": "member", "audit": "job.outputs.get"},
    status_code=200,
    tags=["outputs"],
    media_type=MSGPACK,
    response_description="The MessagePack manifest (mlsm.bulk.Manifest) of the paths asked for",
)
async def outputs_manifest(
    request: Request[Any, Any, Any], services: ServicesDep, job_id: DbId, data: wo.OutputsFetch
) -> Response[bytes]:
    """The first step of a fetch: what the paths hold (audited: who fetched what)."""
    audit_target(request, f"job:{job_id}", paths=data.paths[:20])
    body = await services.outputs.manifest(
        principal(request), job_id, data.paths, include_code=data.include_code
    )
    return Response(content=body, media_type=MSGPACK)


@post(
    "/api/v1/jobs/{job_id:int}/outputs/frames",
    opt={"role": "member"},
    status_code=200,
    tags=["outputs"],
    media_type=FRAMES,
    response_description="The frame stream (mlsm.bulk.frames) answering the want",
)
async def outputs_frames(
    request: Request[Any, Any, Any], services: ServicesDep, job_id: DbId, data: wo.OutputsFetch
) -> Stream:
    """The bytes a fetch lacks, as frames against the manifest it got."""
    chunks = await services.outputs.frames(principal(request), job_id, data)
    return Stream(chunks, media_type=FRAMES)


ROUTES = [list_outputs, outputs_manifest, outputs_frames]
