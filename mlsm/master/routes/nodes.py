"""Nodes, join tokens and the lab summary under ``/api/v1`` (agents use :mod:`.agent`)."""

from __future__ import annotations

from typing import Any

from litestar import Request, delete, get, patch, post
from litestar.params import Parameter

from mlsm.errors import ValidationError
from mlsm.master.http import audit_target
from mlsm.master.routes.common import DbId, ServicesDep, principal
from mlsm.wire import api

#: Longest overview cursor taken (one is ``<8 hex>.<number>``).
OVERVIEW_CURSOR_MAX = 64


@get("/api/v1/join-tokens", opt={"role": "admin"}, tags=["nodes"])
async def list_join_tokens(services: ServicesDep) -> list[api.JoinToken]:
    return await services.join_tokens.query()


@post("/api/v1/join-tokens", opt={"role": "admin", "audit": "join_token.create"}, tags=["nodes"])
async def create_join_token(
    request: Request[Any, Any, Any], services: ServicesDep, data: api.JoinTokenCreate
) -> api.JoinTokenCreated:
    created = await services.join_tokens.create(principal(request), data)
    audit_target(request, f"join_token:{created.info.id}", uses=data.uses, ttl_s=data.ttl_s)
    return created


@delete(
    "/api/v1/join-tokens/{token_id:int}",
    opt={"role": "admin", "audit": "join_token.revoke"},
    status_code=200,
    tags=["nodes"],
)
async def revoke_join_token(
    request: Request[Any, Any, Any], services: ServicesDep, token_id: DbId
) -> dict[str, bool]:
    audit_target(request, f"join_token:{token_id}")
    await services.join_tokens.revoke(token_id)
    return {"ok": True}


def _label_filter(label: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in label or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ValidationError(f"label filter {item!r} is not key=value", path="label")
        out[k] = v
    return out


@get("/api/v1/nodes", opt={"role": "member"}, tags=["nodes"])
async def list_nodes(
    services: ServicesDep, label: list[str] | None = Parameter(default=None)
) -> list[api.Node]:
    return services.node_views.query(_label_filter(label))


@get("/api/v1/nodes/{name:str}", opt={"role": "member"}, tags=["nodes"])
async def show_node(services: ServicesDep, name: str) -> api.Node:
    return services.node_views.show(name)


@get("/api/v1/nodes/{name:str}/history", opt={"role": "member"}, tags=["nodes"])
async def node_history(
    services: ServicesDep,
    name: str,
    window: float = Parameter(default=3600.0, gt=0, le=90 * 86400),
) -> api.NodeHistory:
    return await services.node_views.history(name, window)


@post(
    "/api/v1/nodes/{name:str}/drain",
    opt={"role": "admin", "audit": "node.drain"},
    status_code=200,
    tags=["nodes"],
)
async def drain_node(request: Request[Any, Any, Any], services: ServicesDep, name: str) -> api.Node:
    audit_target(request, f"node:{name}")
    return await services.node_views.set_draining(name, True)


@post(
    "/api/v1/nodes/{name:str}/resume",
    opt={"role": "admin", "audit": "node.resume"},
    status_code=200,
    tags=["nodes"],
)
async def resume_node(
    request: Request[Any, Any, Any], services: ServicesDep, name: str
) -> api.Node:
    audit_target(request, f"node:{name}")
    return await services.node_views.set_draining(name, False)


@post(
    "/api/v1/nodes/{name:str}/labels",
    opt={"role": "admin", "audit": "node.labels"},
    status_code=200,
    tags=["nodes"],
)
async def set_node_labels(
    request: Request[Any, Any, Any], services: ServicesDep, name: str, data: api.NodeUpdate
) -> api.Node:
    audit_target(request, f"node:{name}", labels=data.labels)
    return await services.node_views.set_labels(name, data.labels)


@patch(
    "/api/v1/nodes/{name:str}",
    opt={"role": "admin", "audit": "node.update"},
    tags=["nodes"],
)
async def update_node(
    request: Request[Any, Any, Any], services: ServicesDep, name: str, data: api.NodeUpdate
) -> api.Node:
    """Change a node's labels and/or the network mode of its container jobs."""
    audit_target(request, f"node:{name}", labels=data.labels, docker_network=data.docker_network)
    return await services.node_views.update(name, data)


@delete(
    "/api/v1/nodes/{name:str}",
    opt={"role": "admin", "audit": "node.remove"},
    status_code=200,
    tags=["nodes"],
)
async def remove_node(
    request: Request[Any, Any, Any], services: ServicesDep, name: str, force: bool = False
) -> dict[str, Any]:
    audit_target(request, f"node:{name}", force=force)
    interrupted = await services.jobs.remove_node(name, force=force)
    return {"ok": True, "interrupted": interrupted}


@get("/api/v1/summary", opt={"role": "member"}, tags=["nodes"])
async def summary(services: ServicesDep) -> api.LabSummary:
    return services.node_views.summary()


@get("/api/v1/overview", opt={"role": "member"}, tags=["nodes"])
async def overview(
    services: ServicesDep,
    since: str | None = Parameter(
        default=None,
        max_length=OVERVIEW_CURSOR_MAX,
        description="the cursor of an earlier answer: answer only the rows changed since",
    ),
) -> api.LabOverview:
    """What the dashboard's overview polls: the summary and one compact row per node
    (with ``since``, only the rows changed after that cursor, and the nodes removed)."""
    return services.node_views.overview(since)


ROUTES = [
    list_join_tokens,
    create_join_token,
    revoke_join_token,
    list_nodes,
    show_node,
    node_history,
    drain_node,
    resume_node,
    set_node_labels,
    update_node,
    remove_node,
    summary,
    overview,
]
