"""Nodes (GPU servers): list, show, history, drain, resume, labels and settings, remove;
the lab's summary; the join tokens new agents register with (admins)."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from mlsm.client.call import Ack, Call, segment
from mlsm.client.resource import AsyncResource, SyncResource, async_method, sync_method
from mlsm.wire import api

NODES = "/api/v1/nodes"
JOIN_TOKENS = "/api/v1/join-tokens"


class Removed(msgspec.Struct):
    """What removing a node did: the jobs it interrupted (``--force``)."""

    ok: bool = True
    interrupted: list[int] = []


def _node(name: str, tail: str = "") -> str:
    return f"{NODES}/{segment(name, 'node')}{tail}"


def _list(*, labels: Sequence[str] = ()) -> Call[list[api.Node]]:
    """Every node, or those with each ``k=v`` of ``labels``."""
    return Call("GET", NODES, list[api.Node], params={"label": [*labels] or None})


def _get(name: str) -> Call[api.Node]:
    return Call("GET", _node(name), api.Node)


def _history(name: str, *, window_s: int) -> Call[api.NodeHistory]:
    """The node's telemetry over the last ``window_s`` seconds."""
    return Call("GET", _node(name, "/history"), api.NodeHistory, params={"window": window_s})


def _drain(name: str) -> Call[api.Node]:
    """Place no new jobs there; running ones go on."""
    return Call("POST", _node(name, "/drain"), api.Node)


def _resume(name: str) -> Call[api.Node]:
    return Call("POST", _node(name, "/resume"), api.Node)


def _set_labels(name: str, labels: dict[str, str]) -> Call[api.Node]:
    """Replace the node's labels."""
    return Call("POST", _node(name, "/labels"), api.Node, body=api.NodeUpdate(labels=labels))


def _update(name: str, req: api.NodeUpdate) -> Call[api.Node]:
    """Change the node's labels and/or its container jobs' network (audited)."""
    return Call("PATCH", _node(name), api.Node, body=req)


def _remove(name: str, *, force: bool = False) -> Call[Removed]:
    """Forget the node (its agent must join again); ``force`` interrupts its jobs."""
    return Call("DELETE", _node(name), Removed, params={"force": force or None})


def _summary() -> Call[api.LabSummary]:
    """Nodes, GPUs and jobs of the whole lab, counted."""
    return Call("GET", "/api/v1/summary", api.LabSummary)


def _overview(*, since: str | None = None) -> Call[api.LabOverview]:
    """The summary and one compact row per node (what the dashboard's overview shows);
    ``since``: an earlier answer's cursor, to get only the rows changed after it."""
    return Call("GET", "/api/v1/overview", api.LabOverview, params={"since": since or None})


def _list_join_tokens() -> Call[list[api.JoinToken]]:
    return Call("GET", JOIN_TOKENS, list[api.JoinToken])


def _create_join_token(req: api.JoinTokenCreate) -> Call[api.JoinTokenCreated]:
    """A token an agent joins with; its secret is in the answer, once."""
    return Call("POST", JOIN_TOKENS, api.JoinTokenCreated, body=req)


def _revoke_join_token(token_id: int) -> Call[Ack]:
    return Call("DELETE", f"{JOIN_TOKENS}/{int(token_id)}", Ack)


class Nodes(SyncResource):
    list = sync_method(_list)
    get = sync_method(_get)
    history = sync_method(_history)
    drain = sync_method(_drain)
    resume = sync_method(_resume)
    set_labels = sync_method(_set_labels)
    update = sync_method(_update)
    remove = sync_method(_remove)
    summary = sync_method(_summary)
    overview = sync_method(_overview)


class AsyncNodes(AsyncResource):
    list = async_method(_list)
    get = async_method(_get)
    history = async_method(_history)
    drain = async_method(_drain)
    resume = async_method(_resume)
    set_labels = async_method(_set_labels)
    update = async_method(_update)
    remove = async_method(_remove)
    summary = async_method(_summary)
    overview = async_method(_overview)


class JoinTokens(SyncResource):
    list = sync_method(_list_join_tokens)
    create = sync_method(_create_join_token)
    revoke = sync_method(_revoke_join_token)


class AsyncJoinTokens(AsyncResource):
    list = async_method(_list_join_tokens)
    create = async_method(_create_join_token)
    revoke = async_method(_revoke_join_token)
