"""Commands on jobs beyond submit and cancel, under ``/api/v1/jobs``: many submissions in
one call, a dry run, editing a queued job, restarting a job."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, patch, post

from mlsm.master.http import audit_target
from mlsm.master.routes.common import DbId, ServicesDep, principal
from mlsm.wire import api


@post("/api/v1/jobs/bulk", opt={"role": "member", "audit": "job.submit"}, tags=["jobs"])
async def submit_bulk(
    request: Request[Any, Any, Any], services: ServicesDep, data: api.BulkSubmit
) -> api.BulkSubmitReply:
    """Submit many jobs: all are checked first, then all are stored, or none."""
    reply = await services.job_commands.submit_many(principal(request), data.jobs)
    audit_target(
        request,
        f"jobs:{reply.ids[0]}-{reply.ids[-1]}",
        submissions=len(reply.ids),
        tasks=reply.tasks,
    )
    return reply


@post("/api/v1/jobs/plan", opt={"role": "member"}, status_code=200, tags=["jobs"])
async def plan_job(
    request: Request[Any, Any, Any], services: ServicesDep, data: api.JobSubmit
) -> api.SubmitPlan:
    """Where and why a job would run now, or why it would wait; stores nothing."""
    return await services.job_commands.plan(principal(request), data)


@patch("/api/v1/jobs/{job_id:int}", opt={"role": "member", "audit": "job.edit"}, tags=["jobs"])
async def edit_job(
    request: Request[Any, Any, Any], services: ServicesDep, job_id: DbId, data: api.JobEdit
) -> api.Job:
    """Change a queued or held job (priority, GPUs, time limit, name; hold or release)."""
    audit_target(request, f"job:{job_id}", **msgspec.to_builtins(data))
    return await services.job_commands.edit(principal(request), job_id, data)


@post(
    "/api/v1/jobs/{job_id:int}/restart",
    opt={"role": "member", "audit": "job.restart"},
    tags=["jobs"],
)
async def restart_job(
    request: Request[Any, Any, Any], services: ServicesDep, job_id: DbId
) -> api.SubmitReply:
    """Submit a job's request again as a new job (its owner or an admin)."""
    audit_target(request, f"job:{job_id}")
    reply = await services.job_commands.restart(principal(request), job_id)
    audit_target(request, f"job:{job_id}", new_job=reply.job.id)
    return reply


ROUTES = [submit_bulk, plan_job, edit_job, restart_job]
