from __future__ import annotations

from typing import Any

from litestar import Request, delete, get, patch, post
from litestar.params import Parameter

from mlsm.errors import ValidationError
from mlsm.master.http import audit_target
from mlsm.master.routes.common import DbId, principal, services
from mlsm.wire import api


@get("/api/v1/join-tokens", opt={"role": "admin"}, tags=["nodes"])
async def list_join_tokens(request: Request[Any, Any, Any]) -> list[api.JoinToken]:
    return await services(request).nodes.list_join_tokens()


@post("/api/v1/join-tokens", opt={"role": "admin", "audit": "join_token.create"}, tags=["nodes"])
async def create_join_token(
    request: Request[Any, Any, Any], data: api.JoinTokenCreate
) -> api.JoinTokenCreated:
    st = services(request)
    created = await st.nodes.create_join_token(principal(request), data, st.tls_fingerprint)
    audit_target(request, f"join_token:{created.info.id}", uses=data.uses, ttl_s=data.ttl_s)
    return created


@delete(
    "/api/v1/join-tokens/{token_id:int}",
    opt={"role": "admin", "audit": "join_token.revoke"},
    status_code=200,
    tags=["nodes"],
)
async def revoke_join_token(request: Request[Any, Any, Any], token_id: DbId) -> dict[str, bool]:
    audit_target(request, f"join_token:{token_id}")
    await services(request).nodes.revoke_join_token(token_id)
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
    request: Request[Any, Any, Any], label: list[str] | None = Parameter(default=None)
) -> list[api.Node]:
    st = services(request)
    want = _label_filter(label)
    gpu_map = st.jobs.gpu_holders()
    out = [
        st.nodes.view(n, gpu_map.get(n.id))
        for n in sorted(st.nodes.nodes.values(), key=lambda n: n.name)
        if all(n.labels.get(k) == v for k, v in want.items())
    ]
    return out


@get("/api/v1/nodes/{name:str}", opt={"role": "member"}, tags=["nodes"])
async def show_node(request: Request[Any, Any, Any], name: str) -> api.Node:
    st = services(request)
    n = st.nodes.get(name)
    return st.nodes.view(n, st.jobs.gpu_holders().get(n.id))


@get("/api/v1/nodes/{name:str}/history", opt={"role": "member"}, tags=["nodes"])
async def node_history(
    request: Request[Any, Any, Any],
    name: str,
    window: float = Parameter(default=3600.0, gt=0, le=90 * 86400),
) -> api.NodeHistory:
    st = services(request)
    n = st.nodes.get(name)
    resolution, series = await st.nodes.history.window(n.id, window)
    return api.NodeHistory(
        node=n.name, resolution_s=resolution or st.settings.heartbeat_interval, series=series
    )


@post(
    "/api/v1/nodes/{name:str}/drain",
    opt={"role": "admin", "audit": "node.drain"},
    status_code=200,
    tags=["nodes"],
)
async def drain_node(request: Request[Any, Any, Any], name: str) -> api.Node:
    audit_target(request, f"node:{name}")
    st = services(request)
    return st.nodes.view(await st.nodes.set_draining(name, True))


@post(
    "/api/v1/nodes/{name:str}/resume",
    opt={"role": "admin", "audit": "node.resume"},
    status_code=200,
    tags=["nodes"],
)
async def resume_node(request: Request[Any, Any, Any], name: str) -> api.Node:
    audit_target(request, f"node:{name}")
    st = services(request)
    return st.nodes.view(await st.nodes.set_draining(name, False))


@post(
    "/api/v1/nodes/{name:str}/labels",
    opt={"role": "admin", "audit": "node.labels"},
    status_code=200,
    tags=["nodes"],
)
async def set_node_labels(
    request: Request[Any, Any, Any], name: str, data: api.NodeUpdate
) -> api.Node:
    audit_target(request, f"node:{name}", labels=data.labels)
    st = services(request)
    n = st.nodes.get(name)
    if data.labels is not None:
        n = await st.nodes.set_labels(name, data.labels)
    return st.nodes.view(n)


@patch(
    "/api/v1/nodes/{name:str}",
    opt={"role": "admin", "audit": "node.update"},
    tags=["nodes"],
)
async def update_node(request: Request[Any, Any, Any], name: str, data: api.NodeUpdate) -> api.Node:
    """Change a node's labels and/or the network mode of its container jobs."""
    audit_target(request, f"node:{name}", labels=data.labels, docker_network=data.docker_network)
    st = services(request)
    n = st.nodes.get(name)
    if data.docker_network is not None:
        n = await st.nodes.set_docker_network(name, data.docker_network)
    if data.labels is not None:
        n = await st.nodes.set_labels(name, data.labels)
    return st.nodes.view(n, st.jobs.gpu_holders().get(n.id))


@delete(
    "/api/v1/nodes/{name:str}",
    opt={"role": "admin", "audit": "node.remove"},
    status_code=200,
    tags=["nodes"],
)
async def remove_node(
    request: Request[Any, Any, Any], name: str, force: bool = False
) -> dict[str, Any]:
    audit_target(request, f"node:{name}", force=force)
    st = services(request)
    interrupted = await st.jobs.remove_node(name, force=force)
    return {"ok": True, "interrupted": interrupted}


@get("/api/v1/summary", opt={"role": "member"}, tags=["nodes"])
async def summary(request: Request[Any, Any, Any]) -> api.LabSummary:
    return await services(request).jobs.summary()


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
]
