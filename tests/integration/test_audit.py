"""The audit log on a real master, on SQLite and PostgreSQL: every mutation leaves a row,
the chain verifies, and a row changed by hand breaks ``mlsm audit --verify`` at that row.
Someone with the database cannot hide a change by recomputing the chain (rows are sealed
with a key outside the database) or by deleting the newest rows (a tail anchor outside it),
and a submission is acknowledged only once its row is committed, even across a kill -9."""

from __future__ import annotations

import json
import re
import sqlite3
import stat
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, select, text

from mlsm.master.db import Database
from mlsm.master.db.models import AuditRow
from mlsm.master.services.audit import GENESIS, row_hash
from tests.integration.helpers import (
    ADMIN,
    ADMIN_PASSWORD,
    BOTH_DATABASES,
    CliResult,
    Master,
    assert_one_line_error,
    error_of,
    run_cli,
)
from tests.support.postgres import pg_execute, run_async
from tests.support.wait import wait_until

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
        run_async(pg_execute(master.database_url, sql))
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


# ------------------------------------------------------------------ sealed chain, tail anchor
BURST_WRITERS = 8
BURST_ACKS_BEFORE_KILL = 120


@pytest.fixture
def fresh_master(
    database_kind: str, request: pytest.FixtureRequest, master_factory: Callable[..., Master]
) -> Master:
    """A master of this test alone (these tests damage its audit log on purpose)."""
    url = None
    if database_kind == "postgresql":
        url = str(request.getfixturevalue("fresh_postgres_url"))
    return master_factory(database_url=url)


def _db_url(master: Master) -> str:
    return master.database_url or f"sqlite+aiosqlite:///{master.data_dir / 'mlsm.db'}"


async def _edit_rows(url: str, edit: Callable[[list[AuditRow]], None]) -> None:
    db = Database(url)
    try:
        async with db.transaction() as s:
            rows = list((await s.execute(select(AuditRow).order_by(AuditRow.id))).scalars())
            edit(rows)
    finally:
        await db.close()


async def _delete_rows_after(url: str, keep: int) -> None:
    db = Database(url)
    try:
        async with db.transaction() as s:
            await s.execute(delete(AuditRow).where(AuditRow.id > keep))
    finally:
        await db.close()


def _recompute_chain(rows: list[AuditRow], start: int) -> None:
    """What someone with the database can do: recompute the public hash chain."""
    prev = GENESIS
    for r in rows:
        if r.id >= start:
            r.prev_hash = prev
            r.hash = row_hash(prev, r)
        prev = r.hash


def _verify(master: Master) -> CliResult:
    home = master.workdir / "cli-home"
    home.mkdir(exist_ok=True)
    return run_cli(["audit", "--verify"], home=home, url=master.url, token=master.admin_token)


def _make_rows(master: Master, n: int, prefix: str = "row") -> None:
    for i in range(n):
        master.create_user("member", f"{prefix}{i}")


def test_the_audit_key_is_a_0600_file_of_the_data_dir_and_every_row_is_sealed(
    fresh_master: Master,
) -> None:
    m = fresh_master
    _make_rows(m, 3)
    key_file = m.data_dir / "audit.key"
    anchor_file = m.data_dir / "audit.anchor"
    for f in (key_file, anchor_file):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    key_hex = json.loads(key_file.read_text())["key"]
    rows: list[AuditRow] = []
    run_async(_edit_rows(_db_url(m), rows.extend))
    assert rows and all(r.mac and len(r.mac) == 64 for r in rows)
    if not m.database_url:  # the key is nowhere in the database's files
        blob = b"".join(p.read_bytes() for p in m.data_dir.glob("mlsm.db*"))
        assert key_hex.encode() not in blob and bytes.fromhex(key_hex) not in blob
    res = _verify(m)
    assert res.rc == 0 and res.out.startswith("OK: ") and len(res.out.splitlines()) == 1, res


def test_deleting_the_newest_rows_is_found_after_a_restart(fresh_master: Master) -> None:
    m = fresh_master
    _make_rows(m, 4)
    total = len(_rows(m))
    keep = total - 3
    m.stop()
    run_async(_delete_rows_after(_db_url(m), keep))
    m.start()
    res = _verify(m)
    assert res.rc == 1, res
    assert len(res.out.splitlines()) == 1 and "Traceback" not in res.err
    assert res.out.startswith(f"BROKEN at row {keep + 1}: the newest rows were deleted: "), res
    assert f"rows {keep + 1}-{total} gone, found at " in res.out, res
    # The master recorded what it found in the log itself, and it stays found.
    found = [r for r in _rows(m) if r["action"] == "audit.tail_missing"]
    assert [(r["actor"], r["outcome"]) for r in found] == [("mlsm", "error")]
    _make_rows(m, 1, "later")
    m.restart()
    assert _verify(m).rc == 1


def test_deleting_the_newest_rows_of_a_running_master_is_found(fresh_master: Master) -> None:
    m = fresh_master
    _make_rows(m, 3)
    total = len(_rows(m))
    run_async(_delete_rows_after(_db_url(m), total - 2))
    res = _verify(m)
    assert res.rc == 1, res
    assert f"BROKEN at row {total - 1}: the newest rows were deleted" in res.out, res


def test_a_row_edited_with_the_public_chain_recomputed_is_found(fresh_master: Master) -> None:
    m = fresh_master
    _make_rows(m, 3)
    victim = next(r["id"] for r in _rows(m) if r["target"] == "user:row1")
    m.stop()

    def edit(rows: list[AuditRow]) -> None:
        next(r for r in rows if r.id == victim).target = "user:someone-else"
        _recompute_chain(rows, victim)

    run_async(_edit_rows(_db_url(m), edit))
    m.start()
    res = _verify(m)
    assert res.rc == 1, res
    assert res.out.startswith(f"BROKEN at row {victim}: row {victim} does not match its MAC"), res


def test_rows_stripped_of_their_macs_are_found(fresh_master: Master) -> None:
    m = fresh_master
    _make_rows(m, 2)
    m.stop()

    def strip(rows: list[AuditRow]) -> None:
        for r in rows:
            r.mac = None
        rows[-1].target = "user:someone-else"
        _recompute_chain(rows, rows[-1].id)

    run_async(_edit_rows(_db_url(m), strip))
    m.start()
    res = _verify(m)
    assert res.rc == 1 and "BROKEN at row 1: row 1 carries no MAC" in res.out, res


def test_an_anchor_changed_by_hand_is_reported(fresh_master: Master) -> None:
    m = fresh_master
    _make_rows(m, 2)
    m.stop()
    anchor = m.data_dir / "audit.anchor"
    raw = anchor.read_bytes()
    # point every copy of the anchor at another newest row (same length: the slots stay put)
    forged = re.sub(
        rb'"last_hash": "(.)', lambda g: b'"last_hash": "' + (b"0" if g[1] != b"0" else b"1"), raw
    )
    assert forged != raw and len(forged) == len(raw)
    anchor.write_bytes(forged)
    m.start()
    res = _verify(m)
    assert res.rc == 1, res
    assert "the tail anchor was damaged (its seal does not match" in res.out, res


def test_every_acknowledged_submission_has_its_audit_row_after_a_kill_9(
    fresh_master: Master,
) -> None:
    m = fresh_master
    token = m.make_user("member", "burst")
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int) -> None:
        with httpx.Client(base_url=m.url, headers={"Authorization": f"Bearer {token}"}) as c:
            for i in range(100_000):
                if stop.is_set():
                    return
                rid = f"burst-{n}-{i}"
                try:
                    r = c.post(
                        "/api/v1/jobs",
                        json={"argv": ["true"], "labels": {"x": "nowhere"}},
                        headers={"X-Request-ID": rid},
                        timeout=30.0,
                    )
                except httpx.HTTPError:
                    return  # the master is gone
                if r.status_code == 201:
                    with lock:
                        acked.append(rid)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(BURST_WRITERS)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(acked) >= BURST_ACKS_BEFORE_KILL, what="a burst of submissions")
        m.kill()
    finally:
        stop.set()
        for t in threads:
            t.join()
    m.start()
    rows = {r["request_id"]: r for r in _rows(m)}
    missing = [rid for rid in acked if rid not in rows]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged submissions have no row"
    assert all(rows[rid]["action"] == "job.submit" for rid in acked)
    res = _verify(m)
    assert res.rc == 0, res


def test_a_change_whose_audit_row_cannot_be_written_is_not_acknowledged(
    fresh_master: Master,
) -> None:
    m = fresh_master
    token = m.make_user("member", "unaudited")
    run_async(_rename_audit_table(m, "audit", "audit_away"))
    try:
        resp = m.request("POST", "/api/v1/jobs", token=token, json={"argv": ["true"]})
        assert resp.status_code == 503, resp.text
        err = error_of(resp)
        assert err["code"] == "audit_unavailable"
        assert "may have been applied" in err["message"]
        res = m.cli(["submit", "--", "true"], token=token)
        assert_one_line_error(res)
        assert "audit row could not be written" in res.err
    finally:
        run_async(_rename_audit_table(m, "audit_away", "audit"))
    resp = m.request("POST", "/api/v1/jobs", token=token, json={"argv": ["true"]})
    assert resp.status_code == 201, resp.text
    assert _verify(m).rc == 0


async def _rename_audit_table(master: Master, old: str, new: str) -> None:
    db = Database(_db_url(master))
    try:
        async with db.transaction() as s:
            await s.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))
    finally:
        await db.close()
