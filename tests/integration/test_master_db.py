"""The master's database and HTTP basics on a real process, on SQLite and PostgreSQL:
migrations at start, refusing a schema newer than this mlsm, SQLite in WAL mode with a busy
timeout, /healthz and the OpenAPI document, and one JSON log line per request."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mlsm.master.db import Database
from mlsm.master.db.engine import SQLITE_BUSY_TIMEOUT_MS
from tests.integration.helpers import (
    BOTH_DATABASES,
    START_TIMEOUT_S,
    Master,
)
from tests.support.postgres import asyncpg_dsn, run_async
from tests.support.wait import wait_until

FAKE_REVISION = "ffffdeadbeef"


@pytest.fixture(scope="module", params=BOTH_DATABASES)
def database_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _sql(master: Master, statement: str) -> list[tuple[Any, ...]]:
    """Run one statement on the master's database from outside the master."""
    if master.database_url:

        async def run() -> list[tuple[Any, ...]]:
            import asyncpg

            conn = await asyncpg.connect(asyncpg_dsn(master.database_url or ""))
            try:
                return [tuple(r) for r in await conn.fetch(statement)]
            finally:
                await conn.close()

        return list(run_async(run()))
    conn = sqlite3.connect(master.data_dir / "mlsm.db")
    try:
        rows = conn.execute(statement).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


def _head() -> str:
    return Database("sqlite+aiosqlite:///:memory:").head_revision()


def test_migrations_are_applied_at_start(master: Master) -> None:
    assert _sql(master, "SELECT version_num FROM alembic_version") == [(_head(),)]
    tables = (
        "SELECT name FROM sqlite_master WHERE type = 'table'"
        if not master.database_url
        else "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    )
    names = {r[0] for r in _sql(master, tables)}
    assert {"users", "audit", "alembic_version"} <= names, names


def test_healthz_names_the_backend(master: Master, database_kind: str) -> None:
    resp = master.request("GET", "/healthz")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ok" and body["database"] == database_kind


def test_openapi_document(master: Master) -> None:
    resp = master.request("GET", "/schema/openapi.json")
    assert resp.status_code == 200
    paths = resp.json()["paths"]
    assert "/api/v1/users" in paths and "/api/v1/auth/login" in paths
    assert not [p for p in paths if p.startswith("/agent/")]  # the agent API is MessagePack


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(
    master_factory: Callable[..., Master],
) -> None:
    master = master_factory()  # SQLite whatever this module's engine
    assert _sql(master, "PRAGMA journal_mode") == [("wal",)]

    async def busy_timeout() -> int:
        db = Database(f"sqlite+aiosqlite:///{master.data_dir / 'mlsm.db'}")
        try:
            async with db.engine.connect() as conn:
                return int((await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar_one())
        finally:
            await db.close()

    assert asyncio.run(busy_timeout()) == SQLITE_BUSY_TIMEOUT_MS


def test_one_json_log_line_per_request_and_request_id_echoed(master: Master) -> None:
    ids = [f"req-{n}-logcheck" for n in range(5)]
    for rid in ids:
        resp = master.request("GET", "/healthz", headers={"X-Request-ID": rid})
        assert resp.headers["x-request-id"] == rid
    resp = master.request(
        "POST", "/api/v1/auth/login", json={}, headers={"X-Request-ID": "bad id!"}
    )
    generated = resp.headers["x-request-id"]
    assert generated and generated != "bad id!"
    anonymous = master.request("GET", "/api/v1/auth/me").headers["x-request-id"]
    assert anonymous and anonymous not in (generated, *ids)

    want = {*ids, generated, anonymous}

    def logged() -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        for rec in master.log_records():
            if rec.get("request_id") in want:
                found.setdefault(rec["request_id"], []).append(rec)
        return found if set(found) == want else {}

    found = wait_until(logged, START_TIMEOUT_S, "request log lines")
    for rid, recs in found.items():
        assert len(recs) == 1, recs
    rec = found[generated][0]
    assert rec["method"] == "POST" and rec["path"] == "/api/v1/auth/login"
    assert rec["status"] == 400 and rec["client"] == "127.0.0.1" and rec["ms"] >= 0
    assert found[anonymous][0]["status"] == 401


def test_unrouted_requests_get_a_request_id_and_a_log_line(master: Master) -> None:
    for method, path in (("GET", "/api/v1/no-such-route"), ("DELETE", "/healthz")):
        resp = master.request(method, path, headers={"X-Request-ID": f"unrouted-{method}"})
        assert resp.status_code in (404, 405)
        assert resp.headers.get("x-request-id") == f"unrouted-{method}"
    wait_until(
        lambda: (
            {"unrouted-GET", "unrouted-DELETE"}
            <= {r.get("request_id") for r in master.log_records()}
        ),
        START_TIMEOUT_S,
        "log lines of unrouted requests",
    )


def test_refuses_a_database_newer_than_this_mlsm(master: Master) -> None:
    """Last in this module: stops the module master, then brings it back."""
    master.stop()
    _sql(master, f"UPDATE alembic_version SET version_num = '{FAKE_REVISION}'")
    try:
        log_before = master.log_path.read_text()
        proc = master.spawn()
        rc = proc.wait(timeout=START_TIMEOUT_S)
        master.proc = None
        assert rc != 0
        new = master.log_path.read_text()[len(log_before) :]
        lines = [ln for ln in new.splitlines() if ln.strip()]
        assert "Traceback" not in new, new
        hits = [ln for ln in lines if "newer than this mlsm" in ln]
        assert len(hits) == 1, new
        assert FAKE_REVISION in hits[0]
    finally:
        _sql(master, f"UPDATE alembic_version SET version_num = '{_head()}'")
    master.start()
    assert master.request("GET", "/healthz").status_code == 200


EXTRA_MIGRATION = '''"""a probe table (test only)

Revision ID: 9999probe
Revises: {head}
"""

import sqlalchemy as sa
from alembic import op

revision = "9999probe"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("mlsm_probe", sa.Column("id", sa.Integer(), primary_key=True))


def downgrade() -> None:
    op.drop_table("mlsm_probe")
'''


def test_sqlite_is_copied_aside_before_a_pending_migration(
    master_factory: Callable[..., Master], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A master made the database at head; a newer mlsm (here: one extra migration) copies
    the file aside as ``mlsm.db.pre-<rev>-<time>.bak`` before migrating."""
    from mlsm.master.db import engine

    master = master_factory()
    master.stop()
    head = _head()
    migrations = tmp_path / "migrations"
    shutil.copytree(engine.MIGRATIONS_DIR, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    (migrations / "versions" / "9999_probe.py").write_text(EXTRA_MIGRATION.format(head=head))
    monkeypatch.setattr(engine, "MIGRATIONS_DIR", migrations)

    db_file = master.data_dir / "mlsm.db"
    db = Database(f"sqlite+aiosqlite:///{db_file}")

    async def migrate() -> tuple[str | None, str]:
        try:
            return await db.migrate()
        finally:
            await db.close()

    assert asyncio.run(migrate()) == (head, "9999probe")
    backups = sorted(master.data_dir.glob(f"mlsm.db.pre-{head}-*.bak"))
    assert len(backups) == 1, list(master.data_dir.iterdir())
    copy = sqlite3.connect(backups[0])
    try:
        assert copy.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]
        assert copy.execute("SELECT username FROM users").fetchall() == [("root",)]
    finally:
        copy.close()
