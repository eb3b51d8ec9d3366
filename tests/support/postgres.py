"""A fresh PostgreSQL database for a test, a test module or a lab: the one way to make one.

The server is ``MLSM_TEST_POSTGRES_URL`` (``.ci/run`` sets it; :data:`DEFAULT_POSTGRES_URL`
otherwise). :func:`fresh_database` creates ``<prefix><random>``, hands out its SQLAlchemy
URL and drops it afterwards with ``FORCE`` (PostgreSQL >= 13 ends the connections a test
left open). The ``fresh_postgres_url`` and ``module_postgres_url`` fixtures
(:mod:`tests.support.fixtures`) and :class:`tests.integration.lab.Lab` all use it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from tests.support.wait import wait_until

T = TypeVar("T")

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://mlsm:mlsm@127.0.0.1:5432/mlsm_test"
CONNECT_TIMEOUT_S = 3.0
DROP_DEADLINE_S = 30.0


def server_url() -> str:
    """SQLAlchemy URL of the test server's maintenance database."""
    return os.environ.get("MLSM_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a private loop in another thread.

    Sync fixtures and helpers may run while an event loop runs in this thread
    (pytest-asyncio), where ``asyncio.run`` would refuse.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """``postgresql+asyncpg://...`` (SQLAlchemy) -> ``postgresql://...`` (asyncpg)."""
    from sqlalchemy.engine import make_url

    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def hide_password(sqlalchemy_url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(sqlalchemy_url).render_as_string(hide_password=True)


def with_database(sqlalchemy_url: str, database: str) -> str:
    """The same server and credentials, another database."""
    from sqlalchemy.engine import make_url

    return make_url(sqlalchemy_url).set(database=database).render_as_string(hide_password=False)


async def pg_execute(sqlalchemy_url: str, *statements: str) -> None:
    """Run ``statements`` in order on one connection (no transaction around them)."""
    import asyncpg

    conn = await asyncpg.connect(asyncpg_dsn(sqlalchemy_url), timeout=CONNECT_TIMEOUT_S)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@contextmanager
def fresh_database(base_url: str | None = None, prefix: str = "mlsm_t_") -> Iterator[str]:
    """URL of a new, empty database ``<prefix><random>`` on ``base_url``'s server (the test
    server by default), dropped when the block ends."""
    base = base_url or server_url()
    name = f"{prefix}{secrets.token_hex(6)}"
    run_async(pg_execute(base, f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(base, name)
    finally:
        drop_database(base, name)


def drop_database(base_url: str, name: str) -> None:
    """``DROP DATABASE ... WITH (FORCE)``, retried while PostgreSQL refuses it.

    FORCE ends the connections a test left open, but PostgreSQL (15) also lists an
    autovacuum worker of that database among them and refuses to signal it unless the
    role holds ``pg_signal_backend`` (``.ci/run`` grants it); the worker ends by itself
    within moments, so without the grant the drop is retried until it goes through."""
    import asyncpg

    def dropped() -> bool:
        run_async(pg_execute(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        return True

    wait_until(
        dropped,
        DROP_DEADLINE_S,
        f"PostgreSQL to drop the test database {name}",
        retry_on=(asyncpg.exceptions.InsufficientPrivilegeError, asyncpg.exceptions.ObjectInUseError),
    )


__all__ = [
    "CONNECT_TIMEOUT_S",
    "DEFAULT_POSTGRES_URL",
    "asyncpg_dsn",
    "drop_database",
    "fresh_database",
    "hide_password",
    "pg_execute",
    "run_async",
    "server_url",
    "with_database",
]
