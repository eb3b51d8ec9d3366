"""The audit log on a real master, on SQLite and PostgreSQL: every mutation leaves a row,
the chain verifies, and a row changed by hand breaks ``mlsm audit --verify`` at that row."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import _pg_execute, _run_async
from tests.integration.helpers import (
    ADMIN,
    ADMIN_PASSWORD,
    BOTH_DATABASES,
    CliResult,
    Master,
    assert_one_line_error,
)

Cli = Callable[..., CliResult]


@pytest.fixture(scope="module", params=BOTH_DATABASES)
def database_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _rows(master: Master) -> list[dict[str, Any]]:
    resp = master.request(
        "GET", "/api/v1/audit", token=master.admin_token, params={"limit": 100_000}
    )
    assert resp.status_code == 200, resp.text
    rows: list[dict[str, Any]] = resp.json()
    return rows


def _by_request_id(master: Master) -> dict[str, dict[str, Any]]:
    return {r["request_id"]: r for r in _rows(master)}


def test_every_mutation_appends_a_row(master: Master, make_user: Callable[..., str]) -> None:
    member = make_user("member", "auditee")
    root = master.admin_token
    before = len(_rows(master))
    calls: list[tuple[str, str, str | None, dict[str, Any] | None, dict[str, str]]] = [
        # (request id, method+path, token, json, expected fields)
        ("a-login-bad", "POST /api/v1/auth/login", None,
         {"username": ADMIN, "password": "wrong-pass"},
         {"actor": ADMIN, "role": "anonymous", "action": "auth.login", "outcome": "denied",
          "target": f"user:{ADMIN}"}),
        ("a-login-ok", "POST /api/v1/auth/login", None,
         {"username": ADMIN, "password": ADMIN_PASSWORD},
         {"actor": ADMIN, "action": "auth.login", "outcome": "ok"}),
        ("a-user-create", "POST /api/v1/users", root,
         {"username": "frank", "password": "frank-password"},
         {"actor": ADMIN, "role": "superadmin", "action": "user.create", "outcome": "ok",
          "target": "user:frank"}),
        ("a-user-invalid", "POST /api/v1/users", root, {"username": "x y"},
         {"actor": ADMIN, "action": "user.create", "outcome": "failed"}),
        ("a-user-denied", "POST /api/v1/users", member,
         {"username": "gina", "password": "gina-password"},
         {"actor": "auditee", "role": "member", "action": "user.create", "outcome": "denied"}),
        ("a-user-update", "PATCH /api/v1/users/frank", root, {"disabled": True},
         {"action": "user.update", "outcome": "ok", "target": "user:frank"}),
        ("a-token", "POST /api/v1/tokens", member, {"name": "t1"},
         {"actor": "auditee", "action": "token.create", "outcome": "ok", "target": "token:t1"}),
        ("a-join", "POST /api/v1/join-tokens", root, {"uses": 1},
         {"action": "join_token.create", "outcome": "ok"}),
        ("a-logout", "POST /api/v1/auth/logout", member, None,
         {"actor": "auditee", "action": "auth.logout", "outcome": "ok"}),
    ]  # fmt: skip
    for rid, route, token, body, _ in calls:
        method, path = route.split(" ", 1)
        master.request(method, path, token=token, json=body, headers={"X-Request-ID": rid})
    rows = _by_request_id(master)
    assert len(_rows(master)) == before + len(calls)
    for rid, route, _, _, want in calls:
        row = rows.get(rid)
        assert row is not None, f"no audit row for {route} ({rid})"
        got = {k: row[k] for k in want}
        assert got == want, (route, row)
        assert row["client"] == "127.0.0.1"
        assert row["ts"] > 0 and len(row["hash"]) == 64


def test_reads_leave_no_row(master: Master) -> None:
    before = len(_rows(master))
    master.request("GET", "/api/v1/users", token=master.admin_token)
    master.request("GET", "/healthz")
    assert len(_rows(master)) == before + 0


def test_members_may_not_read_the_audit_log(
    master: Master, make_user: Callable[..., str], mlsm_cli: Cli
) -> None:
    member = make_user("member")
    for path in ("/api/v1/audit", "/api/v1/audit/verify"):
        assert master.request("GET", path, token=member).status_code == 403
    assert_one_line_error(mlsm_cli(["audit"], token=member))
    assert_one_line_error(mlsm_cli(["audit", "--verify"], token=member))


def test_audit_cli_lists_json(master: Master, mlsm_cli: Cli) -> None:
    res = mlsm_cli(["audit", "--json", "--action", "user.*"], token=master.admin_token)
    assert res.rc == 0, res
    rows = json.loads(res.out)
    assert rows and all(r["action"].startswith("user.") for r in rows)
    table = mlsm_cli(["audit"], token=master.admin_token)
    assert table.rc == 0 and table.out.splitlines()[0].split()[:3] == ["ID", "TIME", "ACTOR"]


def _tamper(master: Master, row_id: int) -> None:
    sql = f"UPDATE audit SET target = 'user:someone-else' WHERE id = {row_id}"
    if master.database_url:
        _run_async(_pg_execute(master.database_url, sql))
        return
    conn = sqlite3.connect(master.data_dir / "mlsm.db")
    try:
        assert conn.execute(sql).rowcount == 1
        conn.commit()
    finally:
        conn.close()


def test_verify_finds_a_row_changed_by_hand(master: Master, mlsm_cli: Cli) -> None:
    """Last in this module: it breaks the module master's chain on purpose."""
    root = master.admin_token
    res = mlsm_cli(["audit", "--verify"], token=root)
    assert res.rc == 0, res
    assert res.out.startswith("OK"), res
    victim = _by_request_id(master)["a-user-create"]["id"]

    master.stop()
    _tamper(master, victim)
    master.start()

    res = mlsm_cli(["audit", "--verify"], token=root)
    assert res.rc == 1, res
    assert f"row {victim}" in res.out, res
    assert "Traceback" not in res.err
    res = mlsm_cli(["audit", "--verify", "--json"], token=root)
    assert res.rc == 1 and json.loads(res.out)["first_broken"] == victim
