"""The permission matrix: every route of the real app x {anonymous, member, admin,
superadmin, node}, against a real master process.

``EXPECTED`` names the minimum role of every (method, path template). A route without an
entry, or an entry without a route, fails :func:`test_every_route_has_an_expected_role`, so
a new route cannot ship untested.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import Master, route_table

EXPECTED: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "public",
    ("GET", "/metrics"): "public",
    ("GET", "/schema"): "public",
    ("GET", "/schema/swagger"): "public",
    ("GET", "/schema/openapi.json"): "public",
    ("GET", "/schema/oauth2-redirect.html"): "public",
    ("GET", "/schema/{path:str}"): "public",
    # auth
    ("POST", "/api/v1/auth/login"): "public",
    ("POST", "/api/v1/auth/logout"): "member",
    ("POST", "/api/v1/auth/password"): "member",
    ("GET", "/api/v1/auth/me"): "member",
    # users
    ("GET", "/api/v1/users"): "admin",
    ("POST", "/api/v1/users"): "admin",
    ("GET", "/api/v1/users/{username:str}"): "admin",
    ("PATCH", "/api/v1/users/{username:str}"): "admin",
    # API tokens
    ("GET", "/api/v1/tokens"): "member",
    ("POST", "/api/v1/tokens"): "member",
    ("DELETE", "/api/v1/tokens/{token_id:int}"): "member",
    # audit
    ("GET", "/api/v1/audit"): "admin",
    ("GET", "/api/v1/audit/verify"): "admin",
    # agent protocol
    ("POST", "/agent/v1/register"): "public",
    ("POST", "/agent/v1/heartbeat"): "node",
    ("POST", "/agent/v1/commands"): "node",
    ("POST", "/agent/v1/events"): "node",
    ("POST", "/agent/v1/logs"): "node",
    ("POST", "/agent/v1/datasets"): "node",
    ("POST", "/agent/v1/outputs/removed"): "node",
    ("POST", "/agent/v1/bulk/pull"): "node",
    ("POST", "/agent/v1/bulk/push/{pipe_id:str}"): "node",
    ("POST", "/agent/v1/code/manifest"): "node",
    ("POST", "/agent/v1/code/blobs"): "node",
    ("POST", "/agent/v1/projects"): "node",
    ("POST", "/agent/v1/projects/pull"): "node",
    ("WS", "/agent/v1/channels/{channel_id:str}"): "node",
    # nodes and join tokens
    ("GET", "/api/v1/join-tokens"): "admin",
    ("POST", "/api/v1/join-tokens"): "admin",
    ("DELETE", "/api/v1/join-tokens/{token_id:int}"): "admin",
    ("GET", "/api/v1/nodes"): "member",
    ("GET", "/api/v1/nodes/{name:str}"): "member",
    ("DELETE", "/api/v1/nodes/{name:str}"): "admin",
    ("PATCH", "/api/v1/nodes/{name:str}"): "admin",
    ("GET", "/api/v1/nodes/{name:str}/history"): "member",
    ("POST", "/api/v1/nodes/{name:str}/drain"): "admin",
    ("POST", "/api/v1/nodes/{name:str}/resume"): "admin",
    ("POST", "/api/v1/nodes/{name:str}/labels"): "admin",
    ("GET", "/api/v1/summary"): "member",
    ("GET", "/api/v1/overview"): "member",
    # lab settings
    ("GET", "/api/v1/settings"): "member",
    ("PATCH", "/api/v1/settings"): "admin",
    # jobs
    ("GET", "/api/v1/jobs"): "member",
    ("POST", "/api/v1/jobs"): "member",
    ("GET", "/api/v1/jobs/{job_id:int}"): "member",
    ("POST", "/api/v1/jobs/cancel"): "member",
    ("POST", "/api/v1/jobs/bulk"): "member",
    ("POST", "/api/v1/jobs/plan"): "member",
    ("PATCH", "/api/v1/jobs/{job_id:int}"): "member",
    ("POST", "/api/v1/jobs/{job_id:int}/restart"): "member",
    ("POST", "/api/v1/jobs/{job_id:int}/release"): "member",
    ("POST", "/api/v1/jobs/{job_id:int}/purge"): "member",
    ("GET", "/api/v1/jobs/{job_id:int}/outputs"): "member",
    ("POST", "/api/v1/jobs/{job_id:int}/outputs/manifest"): "member",
    ("POST", "/api/v1/jobs/{job_id:int}/outputs/frames"): "member",
    ("GET", "/api/v1/jobs/{job_id:int}/log"): "member",
    ("GET", "/api/v1/jobs/{job_id:int}/log/follow"): "member",
    # shells and forwards (WebSockets, mlsm.wire.channels): a refusal is a close whose
    # code carries the status, read back as one by Master.request("WS", ...)
    ("WS", "/api/v1/jobs/{job_id:int}/shell"): "member",
    ("WS", "/api/v1/jobs/{job_id:int}/forwards/{port:int}"): "member",
    ("WS", "/api/v1/jobs/{job_id:int}/forwards/{port:int}/connect"): "member",
    ("GET", "/api/v1/jobs/{job_id:int}/forwards"): "member",
    # datasets
    ("GET", "/api/v1/datasets"): "member",
    ("GET", "/api/v1/datasets/{name:str}"): "member",
    ("PATCH", "/api/v1/datasets/{name:str}"): "member",
    ("POST", "/api/v1/datasets/import"): "admin",
    ("POST", "/api/v1/datasets/transfer"): "admin",
    ("DELETE", "/api/v1/datasets/{name:str}"): "admin",
    ("POST", "/api/v1/datasets/{name:str}/digest"): "admin",
    # ... for datasets named like the static action routes (mlsm.master.routeshape)
    ("GET", "/api/v1/datasets/import"): "member",
    ("PATCH", "/api/v1/datasets/import"): "member",
    ("DELETE", "/api/v1/datasets/import"): "admin",
    ("GET", "/api/v1/datasets/transfer"): "member",
    ("PATCH", "/api/v1/datasets/transfer"): "member",
    ("DELETE", "/api/v1/datasets/transfer"): "admin",
    ("GET", "/api/v1/transfers"): "member",
    ("GET", "/api/v1/transfers/{transfer_id:int}"): "member",
    ("POST", "/api/v1/transfers/{transfer_id:int}/cancel"): "admin",
    # code in: snapshots and projects
    ("POST", "/api/v1/code"): "member",
    ("POST", "/api/v1/code/{digest:str}/blobs"): "member",
    ("GET", "/api/v1/projects"): "member",
    ("POST", "/api/v1/projects"): "member",
    ("POST", "/api/v1/projects/copy"): "admin",
    ("DELETE", "/api/v1/projects/{name:str}"): "member",
    ("DELETE", "/api/v1/projects/copy"): "member",
    # events and notifications
    ("GET", "/api/v1/events"): "member",
    ("GET", "/api/v1/events/follow"): "member",
    ("GET", "/api/v1/notify"): "member",
    ("POST", "/api/v1/notify"): "member",
    ("DELETE", "/api/v1/notify/{sub_id:int}"): "member",
    ("GET", "/api/v1/notify/log"): "member",
    ("POST", "/api/v1/jobs/{job_id:int}/idle-exempt"): "admin",
    # usage reports and reservations
    ("GET", "/api/v1/usage"): "member",
    ("GET", "/api/v1/usage/timeline"): "member",
    ("GET", "/api/v1/reservations"): "member",
    ("POST", "/api/v1/reservations"): "member",
    ("DELETE", "/api/v1/reservations/{reservation_id:int}"): "member",
}

USER_ROLES = ("member", "admin", "superadmin")
RANK = {"public": 0, "member": 1, "admin": 2, "superadmin": 3}
_PARAM = re.compile(r"\{(\w+):(\w+)\}")
DUMMY_BY_TYPE = {"int": "999999", "str": "no-such-thing"}
#: A route may answer anything but these when the caller is allowed.
REFUSED = (401, 403)


def app_routes(data_dir: Path) -> set[tuple[str, str]]:
    return {(method, path) for method, path, _ in route_table(str(data_dir))}


#: Streams that stay open while there is nothing to send: asked to end once idle.
ENDLESS = {"/api/v1/events/follow": "?wait=0"}


def concrete(template: str) -> str:
    return _PARAM.sub(lambda m: DUMMY_BY_TYPE[m.group(2)], template) + ENDLESS.get(template, "")


def test_every_route_has_an_expected_role(tmp_path: Path) -> None:
    routes = app_routes(tmp_path)
    missing = sorted(routes - set(EXPECTED))
    stale = sorted(set(EXPECTED) - routes)
    assert not missing, f"routes without an entry in EXPECTED: {missing}"
    assert not stale, f"entries in EXPECTED without a route: {stale}"


def test_expected_matches_declared_roles(tmp_path: Path) -> None:
    """The table is the spec; each handler's ``opt['role']`` must agree with it."""
    wrong = [
        ((method, path), handler.opt.get("role"), EXPECTED[(method, path)])
        for method, path, handler in route_table(str(tmp_path))
        if (method, path) in EXPECTED and not path.startswith("/schema")
        if handler.opt.get("role") != EXPECTED[(method, path)]
    ]
    assert not wrong


# ------------------------------------------------------------------ against a real master
@pytest.fixture(scope="module")
def identities(master: Master) -> dict[str, str]:
    tokens = {role: master.make_user(role) for role in ("member", "admin")}
    tokens["superadmin"] = master.admin_token
    tokens["node"] = master.join_node("perm-node")
    return tokens


def _call(master: Master, method: str, template: str, identity: str | None, token: str | None):
    path = concrete(template)
    kwargs: dict[str, Any] = {}
    if method in ("POST", "PUT", "PATCH"):
        if template.startswith("/agent/"):
            kwargs["content"] = b"\x80"  # an empty MessagePack map
            kwargs["headers"] = {"Content-Type": "application/msgpack"}
        else:
            kwargs["json"] = {}
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        # node secrets go as "Node <secret>", the way agents send them; user tokens as Bearer
        headers["Authorization"] = f"{'Node' if identity == 'node' else 'Bearer'} {token}"
    return master.request(method, path, headers=headers, **kwargs)


def _fresh_token(master: Master, identities: dict[str, str], identity: str, template: str) -> str:
    """Logging out revokes the token used; give that route a token of its own."""
    if template != "/api/v1/auth/logout" or identity == "node":
        return identities[identity]
    if identity == "superadmin":
        return master.login("root", "root-password-1")
    return master.make_user(identity)


def _expectations(need: str) -> Iterator[tuple[str | None, Any]]:
    """(identity, expected) pairs; expected is a status or "allowed"."""
    yield None, ("allowed" if need == "public" else 401)
    for role in USER_ROLES:
        if need == "public":
            yield role, "allowed"
        elif need == "node":
            yield role, 401
        else:
            yield role, ("allowed" if RANK[role] >= RANK[need] else 403)
    if need in ("public", "node"):
        yield "node", "allowed"
    else:
        yield "node", 401


@pytest.mark.parametrize(("method", "template"), sorted(EXPECTED), ids=lambda v: str(v))
def test_route_permissions(
    master: Master, identities: dict[str, str], method: str, template: str
) -> None:
    need = EXPECTED[(method, template)]
    problems = []
    for identity, expected in _expectations(need):
        token = None if identity is None else _fresh_token(master, identities, identity, template)
        resp = _call(master, method, template, identity, token)
        who = identity or "anonymous"
        if expected == "allowed":
            if resp.status_code in REFUSED or resp.status_code >= 500:
                problems.append(f"{who}: got {resp.status_code}, expected allowed: {resp.text}")
        elif resp.status_code != expected:
            problems.append(f"{who}: got {resp.status_code}, expected {expected}: {resp.text}")
    assert not problems, f"{method} {template} (needs {need}):\n" + "\n".join(problems)
