"""Upgrades from the oldest released schema, and online backups restored into a new master.

**Upgrade.** :data:`ROWS_0001` is a database of the oldest released schema (revision
``0001``), frozen as it was: it was filled through a real master's API when ``0001`` was
the newest schema (users with their argon2 password hashes, an API token, join tokens, a
node registered through the agent route, jobs and their StartJob commands, a lab setting,
an intact audit chain), plus one row for each table the API had left empty. The rows match
that revision's columns and never change; only the migrations after ``0001`` do. So the test
stays valid as migrations are added: it makes an empty database at ``0001`` with Alembic,
inserts these rows with plain SQL, runs ``mlsm db upgrade`` (to whatever head is then) and
starts a real master on the result, which must find every row, accept the old password,
API token and node secret, verify the audit chain, and take new writes. On SQLite and
PostgreSQL.

Secrets of the frozen rows (test values, valid only for these rows): ``root`` has
``helpers.ADMIN_PASSWORD``, ``alice`` (member) and ``bob`` (admin) ``helpers.USER_PASSWORD``.

**Backup.** ``mlsm db backup`` copies a running master's SQLite database while jobs are
being submitted; a new master started on a copy of the backup finds the users, the jobs
acknowledged before the backup began, and an intact audit chain.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from mlsm.master.db import Database
from mlsm.master.db.engine import alembic_config
from tests.integration.helpers import (
    ADMIN,
    BOTH_DATABASES,
    USER_PASSWORD,
    Master,
    run_cli,
)
from tests.support.postgres import run_async

OLDEST = "0001"
API_TOKEN = "mlsm_a_HC-iqHG9RzP0BGkYI_M4jJZDjp1uEhPDOw4AQMEdeRc"  # alice's, in ROWS_0001
NODE_SECRET = "mlsm_n_SahPdsjvnPs72vtKvaibLcLak_svCYka7MHldq2pbtg"  # gpu-01's, in ROWS_0001
BACKUP_WRITERS = 2
JOBS_BEFORE_BACKUP = 5

# fmt: off
ROWS_0001: dict[str, list[dict[str, Any]]] = {
    'audit': [
        {'id': 1, 'ts': 1795836456.4984412, 'actor': 'root', 'role': 'anonymous', 'action': 'auth.login', 'target': 'user:root', 'outcome': 'ok', 'client': '127.0.0.1', 'request_id': '9e97876d6fcb4900', 'details': {}, 'prev_hash': '0000000000000000000000000000000000000000000000000000000000000000', 'hash': 'c1984183ee0c218aab3ed7f6a00cfda282fe734471bcdf5ee3d028dd701b9e47'},
        {'id': 2, 'ts': 1795836456.6892173, 'actor': 'root', 'role': 'superadmin', 'action': 'user.create', 'target': 'user:alice', 'outcome': 'ok', 'client': '127.0.0.1', 'request_id': '11f187af94c8b17a', 'details': {'role': 'member'}, 'prev_hash': 'c1984183ee0c218aab3ed7f6a00cfda282fe734471bcdf5ee3d028dd701b9e47', 'hash': '0684c4b26d5a67ba9d872f13224d6a086a9e3661137e806095c2ff1ae8d97a01'},
        {'id': 3, 'ts': 1795836456.8640928, 'actor': 'root', 'role': 'superadmin', 'action': 'user.create', 'target': 'user:bob', 'outcome': 'ok', 'client': '127.0.0.1', 'request_id': '266c4cf587be9829', 'details': {'role': 'admin'}, 'prev_hash': '0684c4b26d5a67ba9d872f13224d6a086a9e3661137e806095c2ff1ae8d97a01', 'hash': 'd55b12006d41ac772fa879bee2d94c0e8a36859e6ee2eb0fb5f87bc3dfedd228'},
        {'id': 4, 'ts': 1795836457.0570176, 'actor': 'alice', 'role': 'anonymous', 'action': 'auth.login', 'target': 'user:alice', 'outcome': 'ok', 'client': '127.0.0.1', 'request_id': '051afd22233d94ab', 'details': {}, 'prev_hash': 'd55b12006d41ac772fa879bee2d94c0e8a36859e6ee2eb0fb5f87bc3dfedd228', 'hash': '2bbe3f36239ffccd253b01e5cca658ddbafd590bc132eb852021411c7b5b9f35'},
        {'id': 5, 'ts': 1795836457.0918128, 'actor': 'alice', 'role': 'member', 'action': 'token.create', 'target': 'token:ci', 'outcome': 'ok', 'client': '127.0.0.1', 'request_id': '9388daf70c21fe6f', 'details': {}, 'prev_hash': '2bbe3f36239ffccd253b01e5cca658ddbafd590bc132eb852021411c7b5b9f35', 'hash': '8216fe3f8f07f99354c4bfe45c6d6608bf43b70ede2f1dcf5bcbda660bf3757c'},
        {'id': 6, 'ts': 1795836457.130724, 'actor': 'root', 'role': 'superadmin', 'action': 'join_token.create', 'target': 'join_token:1', 'outcome': 'ok', 'client': '127.0.0.1', 'request_id': '6681a64aef8445f6', 'details': {'uses': 1, 'ttl_s': 86400.0}, 'prev_hash': '8216fe3f8f07f99354c4bfe45c6d6608bf43b70ede2f1dcf5bcbda660bf3757c', 'hash': '80be81d9fbacc1587f5ce45758b514de354db37dddcf25202e7e971f44eb181d'},
        {'id': 7, 'ts': 1795836457.167399, 'actor': 'node:gpu-01', 'role': 'anonymous', 'action': 'node.register', 'target': 'node:gpu-01', 'outcome': 'ok', 'client': '127.0.0.1', 'request_id': '013c3d8b56cf888c', 'details': {'labels': {}}, 'prev_hash': '80be81d9fbacc1587f5ce45758b514de354db37dddcf25202e7e971f44eb181d', 'hash': 'ef7700ead07321586a00b8e0409125aeeff7f9f5d6980924ba6e5e2ded34d847'},
        {'id': 8, 'ts': 1795836457.2261, 'actor': 'alice', 'role': 'member', 'action': 'job.submit', 'target': 'job:1', 'outcome': 'ok', 'client': '127.0.0.1', 'request_id': 'be77048582e217f5', 'details': {'argv': ['python', 'train.py'], 'gpus': 0, 'tasks': 1}, 'prev_hash': 'ef7700ead07321586a00b8e0409125aeeff7f9f5d6980924ba6e5e2ded34d847', 'hash': '09111fc31a2198aa6a2af6a6e872af278b71a096701405b38af6d0781b309a56'},
        {'id': 9, 'ts': 1795836457.2601998, 'actor': 'alice', 'role': 'member', 'action': 'job.submit', 'target': 'job:2', 'outcome': 'ok', 'client': '127.0.0.1', 'request_id': 'ad36c5095e058cf5', 'details': {'argv': ['echo', 'hi'], 'gpus': 0, 'tasks': 1}, 'prev_hash': '09111fc31a2198aa6a2af6a6e872af278b71a096701405b38af6d0781b309a56', 'hash': '2b9af3e5512cf9f10e3c9a6045bd3f095f961bf6dc9ff125112c60c903b902f2'},
        {'id': 10, 'ts': 1795836457.2885468, 'actor': 'alice', 'role': 'member', 'action': 'job.submit', 'target': 'job:3', 'outcome': 'ok', 'client': '127.0.0.1', 'request_id': '12bc4c562d06fdae', 'details': {'argv': ['sleep', '1'], 'gpus': 1, 'tasks': 1}, 'prev_hash': '2b9af3e5512cf9f10e3c9a6045bd3f095f961bf6dc9ff125112c60c903b902f2', 'hash': 'b8240fb9a9922b1c5c5d6b28d4662d8886eeddad1c7e3ee7147a9e06815bcd37'},
        {'id': 11, 'ts': 1795836457.315809, 'actor': 'root', 'role': 'superadmin', 'action': 'join_token.create', 'target': 'join_token:2', 'outcome': 'ok', 'client': '127.0.0.1', 'request_id': 'c7e083f7314e4ab8', 'details': {'uses': 3, 'ttl_s': 86400.0}, 'prev_hash': 'b8240fb9a9922b1c5c5d6b28d4662d8886eeddad1c7e3ee7147a9e06815bcd37', 'hash': '358b46bcf85fe2270a81a40f4d2ea2db61dfee39aff2437062d259ce8ac7bd08'},
        {'id': 12, 'ts': 1795836457.3449695, 'actor': 'root', 'role': 'superadmin', 'action': 'settings.update', 'target': 'settings:lab', 'outcome': 'ok', 'client': '127.0.0.1', 'request_id': '97a51de3557155e7', 'details': {'image_patterns': ['pytorch/*']}, 'prev_hash': '358b46bcf85fe2270a81a40f4d2ea2db61dfee39aff2437062d259ce8ac7bd08', 'hash': 'a9e49defa75bb37bfea20f76a7e8db4ff64dc69d75229063a2dfcbc6d02ad758'},
    ],
    'commands': [
        {'id': 1, 'node_id': 1, 'kind': 'StartJob', 'body': b'\x83\xa4type\xa9start_job\xa2id\x01\xa3job\xde\x00\t\xa6job_id\x01\xa4name\xa4job0\xa4user\xa5alice\xa4argv\x92\xa6python\xa8train.py\xa8env_kind\xa7process\xa7network\xa4none\xa4cpus\xcb\x00\x00\x00\x00\x00\x00\x00\x00\xa9timeout_s\xcb\x00\x00\x00\x00\x00\x00\x00\x00\xackill_grace_s\xcb@$\x00\x00\x00\x00\x00\x00', 'created_at': 1795836457.230797, 'acked': False},
        {'id': 2, 'node_id': 1, 'kind': 'StartJob', 'body': b'\x83\xa4type\xa9start_job\xa2id\x02\xa3job\xde\x00\t\xa6job_id\x02\xa4name\xa4job1\xa4user\xa5alice\xa4argv\x92\xa4echo\xa2hi\xa8env_kind\xa7process\xa7network\xa4none\xa4cpus\xcb\x00\x00\x00\x00\x00\x00\x00\x00\xa9timeout_s\xcb\x00\x00\x00\x00\x00\x00\x00\x00\xackill_grace_s\xcb@$\x00\x00\x00\x00\x00\x00', 'created_at': 1795836457.2628093, 'acked': False},
        {'id': 3, 'node_id': 1, 'kind': 'StartJob', 'body': b'\x83\xa4type\xa9start_job\xa2id\x03\xa3job\xde\x00\n\xa6job_id\x03\xa4name\xa4job2\xa4user\xa5alice\xa4argv\x92\xa5sleep\xa11\xa8env_kind\xa7process\xa7network\xa4none\xa4gpus\x91\x00\xa4cpus\xcb\x00\x00\x00\x00\x00\x00\x00\x00\xa9timeout_s\xcb\x00\x00\x00\x00\x00\x00\x00\x00\xackill_grace_s\xcb@$\x00\x00\x00\x00\x00\x00', 'created_at': 1795836457.2921214, 'acked': False},
    ],
    'dataset_copies': [
        {'id': 1, 'name': 'imagenet', 'node_id': 1, 'root': '/data', 'path': '/data/imagenet', 'size': 161061273600, 'files': 1281167, 'modified': 1795836000.0, 'digest': None, 'top': ['train', 'val']},
    ],
    'datasets': [
        {'id': 1, 'name': 'imagenet', 'description': 'ILSVRC 2012', 'tags': ['vision'], 'owner': 'bob', 'created_at': 1795836460.0},
    ],
    'jobs': [
        {'id': 1, 'name': 'job0', 'user': 'alice', 'state': 'assigned', 'spec': {'argv': ['python', 'train.py'], 'name': 'job0', 'gpus': 0, 'gpu_mem_gib': 0.0, 'cpus': 0.0, 'mem_gib': 0.0, 'node': None, 'labels': {}, 'datasets': [], 'env_kind': 'process', 'venv': '', 'conda': '', 'image': '', 'mounts': [], 'keep_container': False, 'workdir': '', 'env': {}, 'priority': 0, 'after': [], 'retries': 0, 'timeout_s': 0.0, 'array': '', 'hold': False}, 'priority': 0, 'gpus': 0, 'created_at': 1795836457.2198546, 'started_at': None, 'ended_at': None, 'attempt': 0, 'retries': 0, 'array_parent': None, 'array_index': None, 'node': 'gpu-01', 'gpu_indices': [], 'reason': '', 'exit_code': None, 'log_size': 0, 'history': [[1795836457.2198591, 'queued', 'submitted'], [1795836457.2295496, 'assigned', 'on gpu-01']]},
        {'id': 2, 'name': 'job1', 'user': 'alice', 'state': 'assigned', 'spec': {'argv': ['echo', 'hi'], 'name': 'job1', 'gpus': 0, 'gpu_mem_gib': 0.0, 'cpus': 0.0, 'mem_gib': 0.0, 'node': None, 'labels': {}, 'datasets': [], 'env_kind': 'process', 'venv': '', 'conda': '', 'image': '', 'mounts': [], 'keep_container': False, 'workdir': '', 'env': {}, 'priority': 0, 'after': [], 'retries': 0, 'timeout_s': 0.0, 'array': '', 'hold': False}, 'priority': 0, 'gpus': 0, 'created_at': 1795836457.2582428, 'started_at': None, 'ended_at': None, 'attempt': 0, 'retries': 0, 'array_parent': None, 'array_index': None, 'node': 'gpu-01', 'gpu_indices': [], 'reason': '', 'exit_code': None, 'log_size': 0, 'history': [[1795836457.2582476, 'queued', 'submitted'], [1795836457.2621408, 'assigned', 'on gpu-01']]},
        {'id': 3, 'name': 'job2', 'user': 'alice', 'state': 'assigned', 'spec': {'argv': ['sleep', '1'], 'name': 'job2', 'gpus': 1, 'gpu_mem_gib': 0.0, 'cpus': 0.0, 'mem_gib': 0.0, 'node': 'gpu-01', 'labels': {}, 'datasets': [], 'env_kind': 'process', 'venv': '', 'conda': '', 'image': '', 'mounts': [], 'keep_container': False, 'workdir': '', 'env': {}, 'priority': 0, 'after': [], 'retries': 0, 'timeout_s': 0.0, 'array': '', 'hold': False}, 'priority': 0, 'gpus': 1, 'created_at': 1795836457.2830648, 'started_at': None, 'ended_at': None, 'attempt': 0, 'retries': 0, 'array_parent': None, 'array_index': None, 'node': 'gpu-01', 'gpu_indices': [0], 'reason': '', 'exit_code': None, 'log_size': 0, 'history': [[1795836457.2830698, 'queued', 'submitted'], [1795836457.290966, 'assigned', 'on gpu-01 GPUs [0]']]},
    ],
    'join_tokens': [
        {'id': 1, 'token_hash': '9f6eea5da68bdc2730659848fbad6ca8385351256929c80c7634f99a874f8283', 'created_by': 'root', 'created_at': 1795836457.1278532, 'expires_at': 1795922857.1278532, 'uses': 1, 'used': 1, 'revoked': False, 'note': ''},
        {'id': 2, 'token_hash': 'df000f73ef0d4d7d777da389b19c5040ef7050dcfc11813271fd3d9e683afefe', 'created_by': 'root', 'created_at': 1795836457.309486, 'expires_at': 1795922857.309486, 'uses': 3, 'used': 0, 'revoked': False, 'note': ''},
    ],
    'metric_points': [
        {'id': 1, 'node_id': 1, 'series': 'cpu', 'ts': 1795836400.0, 'mean': 5.0, 'max': 9.0},
        {'id': 2, 'node_id': 1, 'series': 'gpu0.util', 'ts': 1795836400.0, 'mean': 50.0, 'max': 99.0},
    ],
    'nodes': [
        {'id': 1, 'name': 'gpu-01', 'secret_hash': 'b0771a0e0fd6f0d373e4648bcd69d49d44c82da00ab60bba8f8ea88415363515', 'labels': {}, 'info': {'runtimes': ['process']}, 'draining': False, 'removed': False, 'docker_network': 'none', 'registered_at': 1795836457.156183, 'last_seen': 1795836457.1911736, 'join_token_id': 1},
    ],
    'settings': [
        {'key': 'lab', 'value': {'image_patterns': ['pytorch/*'], 'mount_allow': [], 'import_allow_cidrs': [], 'import_max_bytes': 1099511627776}},
    ],
    'transfers': [
        {'id': 1, 'kind': 'import', 'dataset': 'imagenet', 'node': 'gpu-01', 'src_node': None, 'state': 'succeeded', 'done_bytes': 161061273600, 'total_bytes': 161061273600, 'rate_bps': 1000000000.0, 'message': '', 'created_by': 'bob', 'created_at': 1795836461.0, 'command_id': None},
    ],
    'usage': [
        {'user': 'alice', 'gpu_hours': 1.5, 'updated_at': 1795836462.0},
    ],
    'users': [
        {'id': 1, 'username': 'root', 'password_hash': '$argon2id$v=19$m=65536,t=3,p=4$XZpPYXpDvhHItG2PZDRlpA$/HBuM5+niPyMzIAbCwvKsO+XUEB0UwFGHVpf+HTOQWU', 'role': 'superadmin', 'disabled': False, 'unix_user': '', 'gpu_cap': None, 'created_at': 1795836456.125956, 'last_login': 1795836456.365042},
        {'id': 2, 'username': 'alice', 'password_hash': '$argon2id$v=19$m=65536,t=3,p=4$T7GvWoGVuy6MOU1n4N85aA$NroSzvbQWglGj9u8zUr3D4lM11yW+btvbe4kOHa1Hq8', 'role': 'member', 'disabled': False, 'unix_user': '', 'gpu_cap': None, 'created_at': 1795836456.6821358, 'last_login': 1795836456.8914373},
        {'id': 3, 'username': 'bob', 'password_hash': '$argon2id$v=19$m=65536,t=3,p=4$5Rf0WY+fGV7wJGao2D2Kww$jDmEVb8mF99lR0TWEAjdX5RfH2kJHvIKnIvNm7dRG7I', 'role': 'admin', 'disabled': False, 'unix_user': '', 'gpu_cap': None, 'created_at': 1795836456.8620203, 'last_login': None},
    ],
    'tokens': [
        {'id': 1, 'user_id': 1, 'kind': 'session', 'name': 'login from 127.0.0.1', 'token_hash': '3cb579740146265f8237dfc59087daa7a40bff4fe35acad8d5a194127058c79a', 'created_at': 1795836456.365042, 'expires_at': 1796441256.365042, 'last_used': 1795836456.5305498, 'revoked': False},
        {'id': 2, 'user_id': 2, 'kind': 'session', 'name': 'login from 127.0.0.1', 'token_hash': 'a1f3a31e5bd2754b5555db678e0e4871ee49a779af81d470d6ff5c20804f4337', 'created_at': 1795836456.8914373, 'expires_at': 1796441256.8914373, 'last_used': 1795836457.085741, 'revoked': False},
        {'id': 3, 'user_id': 2, 'kind': 'api', 'name': 'ci', 'token_hash': 'ceedce1f44a76b13abb1ba45521cc7afef0c6319c0043e888b60d934235a594d', 'created_at': 1795836457.0885196, 'expires_at': None, 'last_used': None, 'revoked': False},
    ],
}
# fmt: on


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def _primary_key(table: sa.Table, row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[c.name] for c in table.primary_key.columns)


async def _create_oldest_and_fill(url: str) -> None:
    """An empty database migrated to :data:`OLDEST`, then :data:`ROWS_0001` inserted."""
    database = Database(url)
    try:

        def fill(conn: sa.Connection) -> None:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, OLDEST)
            meta = sa.MetaData()
            meta.reflect(conn)
            tables = {t.name for t in meta.sorted_tables} - {"alembic_version"}
            assert tables == set(ROWS_0001), "ROWS_0001 must hold every table of revision 0001"
            for table in meta.sorted_tables:
                rows = ROWS_0001.get(table.name)
                if not rows:
                    continue
                conn.execute(table.insert(), rows)
                pk = list(table.primary_key.columns)
                if conn.dialect.name == "postgresql" and len(pk) == 1 and pk[0].autoincrement:
                    # Explicit ids do not move a serial's sequence (pg_restore would).
                    conn.execute(
                        sa.text(
                            f"SELECT setval(pg_get_serial_sequence('{table.name}', "
                            f"'{pk[0].name}'), (SELECT max({pk[0].name}) FROM {table.name}))"
                        )
                    )

        async with database.engine.begin() as conn:
            await conn.run_sync(fill)
    finally:
        await database.close()


async def _missing_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Primary keys of :data:`ROWS_0001` no longer in the database, by table."""
    database = Database(url)
    try:

        def check(conn: sa.Connection) -> dict[str, list[tuple[Any, ...]]]:
            meta = sa.MetaData()
            meta.reflect(conn, only=list(ROWS_0001))
            missing: dict[str, list[tuple[Any, ...]]] = {}
            for name, rows in ROWS_0001.items():
                table = meta.tables[name]
                have = {tuple(r) for r in conn.execute(sa.select(*table.primary_key.columns))}
                gone = [k for k in (_primary_key(table, r) for r in rows) if k not in have]
                if gone:
                    missing[name] = gone
            return missing

        async with database.engine.connect() as conn:
            return await conn.run_sync(check)  # type: ignore[no-any-return]
    finally:
        await database.close()


@pytest.fixture(params=BOTH_DATABASES)
def old_database(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str | None]:
    """(master workdir, database URL or None for SQLite) of a database at revision 0001."""
    workdir = tmp_path / "master"
    if request.param == "sqlite":
        data = workdir / "data"
        data.mkdir(parents=True)
        url, master_url = f"sqlite+aiosqlite:///{data / 'mlsm.db'}", None
    else:
        url = master_url = str(request.getfixturevalue("fresh_postgres_url"))
    run_async(_create_oldest_and_fill(url))
    return workdir, master_url


def _db_args(master: Master) -> list[str]:
    if master.database_url:
        return ["--database-url", master.database_url]
    return ["--data-dir", str(master.data_dir)]


@pytest.fixture
def upgraded_master(old_database: tuple[Path, str | None]) -> Iterator[Master]:
    workdir, url = old_database
    m = Master(workdir, database_url=url)
    cur = m.cli(["db", "current", *_db_args(m)])
    assert cur.rc == 0 and f"database: {OLDEST};" in cur.out, cur
    up = m.cli(["db", "upgrade", *_db_args(m)])
    assert up.rc == 0, up.err
    assert f"database schema at {head_revision()}" in up.out, up.out
    if head_revision() != OLDEST and url is None:
        assert list(m.data_dir.glob(f"mlsm.db.pre-{OLDEST}-*.bak")), "a copy made aside"
    m.start()
    try:
        yield m
    finally:
        m.stop()


def test_an_upgrade_from_the_oldest_schema_keeps_every_row(upgraded_master: Master) -> None:
    m = upgraded_master
    url = m.database_url or f"sqlite+aiosqlite:///{m.data_dir / 'mlsm.db'}"
    assert run_async(_missing_rows(url)) == {}


def test_an_upgraded_master_serves_the_old_users_tokens_node_jobs_and_audit(
    upgraded_master: Master,
) -> None:
    m = upgraded_master
    admin = m.admin_token  # root's password from the old database
    users = {
        u["username"]: u["role"] for u in m.request("GET", "/api/v1/users", token=admin).json()
    }
    assert users == {ADMIN: "superadmin", "alice": "member", "bob": "admin"}
    assert m.login("alice", USER_PASSWORD)
    me = m.request("GET", "/api/v1/auth/me", token=API_TOKEN)
    assert me.status_code == 200 and me.json()["username"] == "alice", me.text

    for row in ROWS_0001["jobs"]:
        job = m.request("GET", f"/api/v1/jobs/{row['id']}", token=admin)
        assert job.status_code == 200, job.text
        assert job.json()["name"] == row["name"] and job.json()["argv"] == row["spec"]["argv"]
    node = m.request("GET", "/api/v1/nodes/gpu-01", token=admin)
    assert node.status_code == 200, node.text
    joins = m.request("GET", "/api/v1/join-tokens", token=admin).json()
    assert len(joins) >= len(ROWS_0001["join_tokens"])
    settings = m.request("GET", "/api/v1/settings", token=admin).json()
    assert settings["image_patterns"] == ["pytorch/*"]
    from mlsm.wire import agent as w

    hb = m.request(
        "POST",
        "/agent/v1/heartbeat",
        content=w.encoder.encode(w.Heartbeat(protocol=1)),
        headers={"Content-Type": w.MSGPACK, "Authorization": f"Node {NODE_SECRET}"},
    )
    assert hb.status_code == 200, hb.content

    # New writes land after the old rows and extend the same audit chain.
    m.create_user("member", "carol")
    sub = m.request("POST", "/api/v1/jobs", token=API_TOKEN, json={"argv": ["true"]})
    assert sub.status_code == 201, sub.text
    assert min(sub.json()["ids"]) > max(r["id"] for r in ROWS_0001["jobs"])
    verify = m.request("GET", "/api/v1/audit/verify", token=admin).json()
    assert verify["ok"] is True, verify
    assert verify["rows"] > len(ROWS_0001["audit"])
    # Rows from before the upgrade have no MAC: they are checked by the chain alone.
    assert verify["chain_only"] == len(ROWS_0001["audit"]), verify
    assert f"rows 1-{len(ROWS_0001['audit'])} from before audit MACs" in verify["message"]


# ---------------------------------------------------------------- job specs of 0.1
#: A job that mlsm 0.1 stored for ``alice`` (a member) from :data:`RICH_SUBMIT_0001`: its
#: spec is ``msgspec.to_builtins(JobSubmit)`` plus the array throttle and the flag that has
#: the agent re-check a member's mounts, ``--after`` and ``--mount`` as typed.
RICH_SUBMIT_0001: dict[str, Any] = {
    "argv": ["python", "train.py"],
    "name": "sweep",
    "gpus": 1,
    "gpu_mem_gib": 40.0,
    "cpus": 4.0,
    "mem_gib": 32.0,
    "node": "gpu-01",
    "labels": {"rack": "a"},
    "datasets": ["imagenet"],
    "env_kind": "docker",
    "image": "pytorch/pytorch:2.3",
    "mounts": ["/data:/data", "/scratch:/scratch:rw"],
    "keep_container": True,
    "workdir": "/work",
    "env": {"SEED": "1"},
    "priority": 3,
    "after": ["1", "2:any", "3:ok"],
    "retries": 1,
    "timeout_s": 600.0,
    "array": "0-3%2",
}
# fmt: off
RICH_JOB_0001: dict[str, Any] = {
    'id': 4, 'name': 'sweep', 'user': 'alice', 'state': 'queued', 'spec': {'argv': ['python', 'train.py'], 'name': 'sweep', 'gpus': 1, 'gpu_mem_gib': 40.0, 'cpus': 4.0, 'mem_gib': 32.0, 'node': 'gpu-01', 'labels': {'rack': 'a'}, 'datasets': ['imagenet'], 'env_kind': 'docker', 'venv': '', 'conda': '', 'image': 'pytorch/pytorch:2.3', 'mounts': ['/data:/data', '/scratch:/scratch:rw'], 'keep_container': True, 'workdir': '/work', 'env': {'SEED': '1'}, 'priority': 3, 'after': ['1', '2:any', '3:ok'], 'retries': 1, 'timeout_s': 600.0, 'array': '0-3%2', 'hold': False, 'member_mounts': True, 'array_throttle': 2}, 'priority': 3, 'gpus': 1, 'created_at': 1795836458.0, 'started_at': None, 'ended_at': None, 'attempt': 0, 'retries': 1, 'array_parent': 4, 'array_index': 0, 'node': None, 'gpu_indices': [], 'reason': 'waiting for job 1', 'exit_code': None, 'log_size': 0, 'history': [[1795836458.0, 'queued', 'submitted']],
}
# fmt: on


async def _insert_job(url: str, row: dict[str, Any]) -> None:
    database = Database(url)
    try:

        def insert(conn: sa.Connection) -> None:
            meta = sa.MetaData()
            meta.reflect(conn, only=["jobs"])
            conn.execute(meta.tables["jobs"].insert(), [row])

        async with database.engine.begin() as conn:
            await conn.run_sync(insert)
    finally:
        await database.close()


async def _stored_specs(url: str) -> dict[int, Any]:
    from mlsm.master.db.models import Job as JobRow

    database = Database(url)
    try:
        async with database.session() as s:
            return {r.id: r.spec for r in (await s.execute(sa.select(JobRow))).scalars()}
    finally:
        await database.close()


def test_job_specs_stored_by_01_decode_to_what_a_submission_builds_now(
    old_database: tuple[Path, str | None],
) -> None:
    """The stored spec is a typed struct now; a row 0.1 wrote (an untagged dict, --after and
    --mount as typed) reads back as the struct the same submission gives today."""
    import msgspec

    from mlsm.master.jobspec import build_submission
    from mlsm.master.security import Principal
    from mlsm.wire import api

    class Allowed:  # the rows were accepted by the lab's policy when they were submitted
        def check_image(self, principal: Principal, image: str) -> None: ...

        def check_mount(self, principal: Principal, source: str) -> None: ...

    workdir, master_url = old_database
    m = Master(workdir, database_url=master_url)
    url = master_url or f"sqlite+aiosqlite:///{m.data_dir / 'mlsm.db'}"
    run_async(_insert_job(url, RICH_JOB_0001))
    up = m.cli(["db", "upgrade", *_db_args(m)])
    assert up.rc == 0, up.err
    specs = run_async(_stored_specs(url))

    alice = Principal(kind="user", name="alice", role="member")
    bodies = {r["id"]: r["spec"] for r in ROWS_0001["jobs"]}  # to_builtins(JobSubmit) as it was
    bodies[RICH_JOB_0001["id"]] = RICH_SUBMIT_0001
    assert set(specs) == set(bodies)
    for job_id, body in bodies.items():
        sub = msgspec.convert(body, api.JobSubmit)
        # 0.1 let a member raise priority, which members may no longer do; priority is a
        # column of the row, not part of the stored spec compared here.
        sub = msgspec.structs.replace(sub, priority=min(sub.priority, 0))
        now = build_submission(sub, alice, nodes={"gpu-01"}, policy=Allowed()).spec
        assert specs[job_id] == now, job_id
    rich = specs[RICH_JOB_0001["id"]]
    assert [d.text() for d in rich.after] == ["1", "2:any", "3:ok"]
    assert rich.array_throttle == 2 and rich.member_mounts is True
    assert [(m.source, m.read_only) for m in rich.mounts] == [("/data", True), ("/scratch", False)]


# ---------------------------------------------------------------- backup and restore
def test_a_backup_taken_while_jobs_are_submitted_restores_into_a_new_master(
    master_factory: Any, tmp_path: Path
) -> None:
    m = master_factory()
    token = m.make_user("member", "dana")
    before = []
    for i in range(JOBS_BEFORE_BACKUP):
        r = m.request("POST", "/api/v1/jobs", token=token, json={"argv": ["echo", str(i)]})
        assert r.status_code == 201, r.text
        before += r.json()["ids"]

    stop = threading.Event()
    errors: list[str] = []

    def submit() -> None:
        with httpx.Client(base_url=m.url, headers={"Authorization": f"Bearer {token}"}) as c:
            while not stop.is_set():
                r = c.post("/api/v1/jobs", json={"argv": ["true"]}, timeout=30.0)
                if r.status_code != 201:
                    errors.append(r.text)

    writers = [threading.Thread(target=submit) for _ in range(BACKUP_WRITERS)]
    for t in writers:
        t.start()
    backup = tmp_path / "backups" / "mlsm-backup.db"
    try:
        res = run_cli(["db", "backup", str(backup), "--data-dir", str(m.data_dir)], home=m.home)
    finally:
        stop.set()
        for t in writers:
            t.join()
    assert res.rc == 0, res.err
    assert backup.exists() and str(backup) in res.out
    assert not errors, errors[:3]
    again = run_cli(["db", "backup", str(backup), "--data-dir", str(m.data_dir)], home=m.home)
    assert again.rc != 0 and "refusing to overwrite" in again.err

    # The restore procedure (docs/operations.md): the database and the audit key, which is
    # backed up apart from it; the tail anchor stays behind (the backup ends before it).
    restored = master_factory(start=False)
    restored.data_dir.mkdir(parents=True)
    shutil.copy2(backup, restored.data_dir / "mlsm.db")
    shutil.copy2(m.data_dir / "audit.key", restored.data_dir / "audit.key")
    restored.start()
    admin = restored.admin_token  # root's password, from the backup
    users = {u["username"] for u in restored.request("GET", "/api/v1/users", token=admin).json()}
    assert {ADMIN, "dana"} <= users
    for job_id in before:
        r = restored.request("GET", f"/api/v1/jobs/{job_id}", token=admin)
        assert r.status_code == 200, r.text
    verify = restored.request("GET", "/api/v1/audit/verify", token=admin).json()
    assert verify["ok"] is True, verify
    assert verify["rows"] >= 1 + 1 + JOBS_BEFORE_BACKUP  # logins, user.create, submits
    anchored = restored.request(
        "GET", "/api/v1/audit", token=admin, params={"action": "audit.anchor_created"}
    ).json()
    assert [r["actor"] for r in anchored] == ["mlsm"], anchored
    assert restored.login("dana", USER_PASSWORD)

    # Without the key, the sealed rows cannot be verified, and verify says which key.
    keyless = master_factory(start=False)
    keyless.data_dir.mkdir(parents=True)
    shutil.copy2(backup, keyless.data_dir / "mlsm.db")
    keyless.start()
    verify = keyless.request("GET", "/api/v1/audit/verify", token=keyless.admin_token).json()
    assert verify["ok"] is False and verify["first_broken"] == 1, verify
    assert str(keyless.data_dir / "audit.key") in verify["message"]


def test_db_backup_of_a_postgresql_master_points_at_pg_dump(tmp_path: Path) -> None:
    res = run_cli(
        [
            "db",
            "backup",
            str(tmp_path / "x.db"),
            "--database-url",
            "postgresql+asyncpg://mlsm:secret@127.0.0.1:1/none",
        ],
        home=tmp_path,
    )
    assert res.rc != 0 and "pg_dump" in res.err, res
