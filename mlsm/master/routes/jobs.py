"""Jobs under ``/api/v1/jobs``: submit, list, show, cancel, release, and their logs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from litestar import MediaType, Request, get, post
from litestar.params import Parameter
from litestar.response import ServerSentEvent, Stream

from mlsm.master.http import audit_each, audit_target
from mlsm.master.routes.common import DbId, QueryCount, ServicesDep, principal
from mlsm.wire import api
from mlsm.wire.follow import LogEvent, to_sse
from mlsm.wire.ints import INT64_MAX

MAX_LIST = 10_000


@post("/api/v1/jobs", opt={"role": "member", "audit": "job.submit"}, tags=["jobs"])
async def submit_job(
    request: Request[Any, Any, Any], services: ServicesDep, data: api.JobSubmit
) -> api.SubmitReply:
    reply = await services.jobs.submit(principal(request), data)
    audit_target(
        request, f"job:{reply.job.id}", argv=data.argv[:8], gpus=data.gpus, tasks=len(reply.ids)
    )
    return reply


@get("/api/v1/jobs", opt={"role": "member"}, tags=["jobs"])
async def list_jobs(
    request: Request[Any, Any, Any],
    services: ServicesDep,
    state_filter: str | None = Parameter(query="state", default=None, max_length=128),
    user: str | None = Parameter(default=None, max_length=64),
    node: str | None = Parameter(default=None, max_length=63),
    all: bool = False,
    limit: int = Parameter(default=1000, ge=1, le=MAX_LIST),
    array: int | None = Parameter(default=None, ge=1, le=INT64_MAX),
) -> api.JobList:
    """Jobs, newest ``limit``; ``array`` lists that array's tasks (any state)."""
    return await services.jobs.query(
        principal(request),
        state=state_filter,
        user=user,
        node=node,
        all=all,
        limit=limit,
        array=array,
    )


@get("/api/v1/jobs/{job_id:int}", opt={"role": "member"}, tags=["jobs"])
async def show_job(request: Request[Any, Any, Any], services: ServicesDep, job_id: DbId) -> api.Job:
    return await services.jobs.get(principal(request), job_id)


@post(
    "/api/v1/jobs/cancel",
    opt={"role": "member", "audit": "job.cancel"},
    status_code=200,
    tags=["jobs"],
)
async def cancel_jobs(
    request: Request[Any, Any, Any], services: ServicesDep, data: api.CancelRequest
) -> api.CancelResult:
    """Cancel a selection (ids, array tasks, filters); each job cancelled has its own row."""
    named = [str(i) for i in data.ids[:20]] + [f"{t.array}_[...]" for t in data.tasks[:5]]
    audit_target(
        request,
        "job:" + ",".join(named) if named else "jobs:filter",
        user=data.user,
        name=data.name,
        states=list(data.states),
        preview=data.preview,
    )
    res = await services.job_commands.cancel(principal(request), data)
    if not res.preview:
        targets = [f"job:{i}" for i in res.cancelled]
        await audit_each(request, services.audit, "job.cancelled", targets)
    request.scope["state"].setdefault("audit_details", {})["cancelled"] = len(res.cancelled)
    return res


@post(
    "/api/v1/jobs/{job_id:int}/release",
    opt={"role": "member", "audit": "job.release"},
    status_code=200,
    tags=["jobs"],
)
async def release_job(
    request: Request[Any, Any, Any], services: ServicesDep, job_id: DbId
) -> api.Job:
    audit_target(request, f"job:{job_id}")
    return await services.jobs.release(principal(request), job_id)


@get(
    "/api/v1/jobs/{job_id:int}/log",
    opt={"role": "member"},
    tags=["jobs"],
    media_type=MediaType.TEXT,
    response_description="The log's bytes (UTF-8 text as the job wrote it); X-Log-Size: its size",
)
async def job_log(
    request: Request[Any, Any, Any],
    services: ServicesDep,
    job_id: DbId,
    offset: QueryCount = 0,
    limit: int | None = Parameter(default=None, ge=1, le=INT64_MAX),
) -> Stream:
    size, chunks = await services.job_logs.stream(principal(request), job_id, offset, limit)
    # Litestar adds "; charset=utf-8" to text/plain itself (naming it here doubled it).
    return Stream(chunks, media_type=MediaType.TEXT, headers={"X-Log-Size": str(size)})


@get(
    "/api/v1/jobs/{job_id:int}/log/follow",
    opt={"role": "member"},
    tags=["jobs"],
    media_type="text/event-stream",
    response_description='Server-sent events: "log" (data: text), "attempt", then "end" (data: the final state)',
)
async def follow_log(
    request: Request[Any, Any, Any], services: ServicesDep, job_id: DbId, offset: QueryCount = 0
) -> ServerSentEvent:
    events = services.job_logs.follow(principal(request), job_id, offset)
    first = await anext(
        aiter(_prime(events))
    )  # permission errors surface as JSON, not a broken stream

    async def gen() -> AsyncIterator[dict[str, str]]:
        if first is not None:
            yield first
        async for ev in events:
            yield to_sse(ev)

    return ServerSentEvent(gen())


async def _prime(events: AsyncIterator[LogEvent]) -> AsyncIterator[dict[str, str] | None]:
    try:
        ev = await anext(events)
    except StopAsyncIteration:
        yield None
        return
    yield to_sse(ev)


@post(
    "/api/v1/jobs/{job_id:int}/purge",
    opt={"role": "member", "audit": "job.purge"},
    status_code=200,
    tags=["jobs"],
)
async def purge_job(
    request: Request[Any, Any, Any], services: ServicesDep, job_id: DbId
) -> api.PurgeResult:
    """Free a finished job's directory on its node (its owner or an admin)."""
    audit_target(request, f"job:{job_id}")
    return await services.disk.purge(principal(request), job_id)


ROUTES = [purge_job, submit_job, list_jobs, show_job, cancel_jobs, release_job, job_log, follow_log]
