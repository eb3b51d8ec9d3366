"""The master's database: engine, sessions, and migrations applied at start.

SQLite runs in WAL mode with a busy timeout and foreign keys on; PostgreSQL goes through
asyncpg. The schema is Alembic's business only: :meth:`Database.migrate` applies pending
migrations (copying a SQLite file aside first) and refuses a database newer than this mlsm.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from mlsm.errors import ConfigError, DatabaseTooNew

log = logging.getLogger("mlsm.master.db")

SQLITE_BUSY_TIMEOUT_MS = 10_000
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: The database holds token hashes, node secrets' hashes and every job's env: it and its
#: companions are the owner's alone, whatever the umask of whoever created them.
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def make_private(path: Path, mode: int = PRIVATE_FILE_MODE) -> None:
    """Create ``path`` (empty) with ``mode`` if missing, else take away any wider bits."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        restrict_mode(path, mode)
        return
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits the owner needs
    finally:
        os.close(fd)


def restrict_mode(path: Path, mode: int) -> None:
    """Narrow an existing file or directory to ``mode`` (no-op when already within it)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or stat.S_IMODE(st.st_mode) & ~mode == 0:
        return
    try:
        os.chmod(path, mode)
    except PermissionError:
        log.warning("%s is readable by others and not ours to change (mode %o)", path, st.st_mode)
    else:
        log.info("%s was mode %o; now %o", path, stat.S_IMODE(st.st_mode), mode)


def _private_sqlite(path: Path) -> None:
    """Before each new connection: the SQLite file created 0600 before SQLite opens it (its
    -wal and -shm take the database file's mode), and existing ones narrowed to 0600."""
    make_private(path)
    for suffix in SQLITE_COMPANIONS:
        restrict_mode(path.with_name(path.name + suffix), PRIVATE_FILE_MODE)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class Database:
    """One engine + session factory for the master's lifetime."""

    def __init__(self, url: str) -> None:
        try:
            parsed = make_url(url)
        except Exception as exc:
            raise ConfigError(f"setting 'database_url': cannot parse {url!r}: {exc}") from None
        self.url = url
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if parsed.get_backend_name() not in ("sqlite", "postgresql"):
            raise ConfigError("setting 'database_url': only sqlite and postgresql are supported")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            self.sqlite_path = Path(parsed.database or "")
            if parsed.database:
                self.sqlite_path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        else:
            kwargs.update(pool_size=10, max_overflow=10, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                path = self.sqlite_path
                event.listen(
                    self.engine.sync_engine, "do_connect", lambda *_: _private_sqlite(path)
                )
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = asyncio.Lock()
        self._write_owner: asyncio.Task[Any] | None = None

    @property
    def backend(self) -> str:
        return "sqlite" if self.is_sqlite else "postgresql"

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessionmaker() as s:
            yield s

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A read-write transaction, committed on exit. The master's writers take turns.

        Its transactions read rows, check their state against the in-memory tables and
        write them; two of them interleaved could each act on a state the other had just
        changed (on PostgreSQL, at READ COMMITTED, a cancel and a placement of one job
        both committed: the job started though its owner was told it was cancelled). So
        every writer waits for the one before it to commit, on both databases. SQLite has
        one writer at a time anyway, and colliding connections would wait in its busy
        handler, which sleeps in growing steps (up to 100 ms); here they queue on an
        asyncio lock instead: no sleeping, first come first served. The lock is
        re-entrant per task, so a nested transaction does not deadlock on it.
        """
        task = asyncio.current_task()
        if self._write_owner is task:
            async with self.sessionmaker() as s, s.begin():
                yield s
            return
        async with self._write_lock:
            self._write_owner = task
            try:
                async with self.sessionmaker() as s, s.begin():
                    yield s
            finally:
                self._write_owner = None

    async def current_revision(self) -> str | None:
        async with self.engine.connect() as conn:
            return await conn.run_sync(
                lambda c: MigrationContext.configure(c).get_current_revision()
            )

    def head_revision(self) -> str:
        head = ScriptDirectory.from_config(alembic_config(self.url)).get_current_head()
        assert head is not None
        return head

    async def migrate(self, *, backup: bool = True) -> tuple[str | None, str]:
        """Apply pending migrations; returns (revision before, revision after)."""
        cfg = alembic_config(self.url)
        script = ScriptDirectory.from_config(cfg)
        head = script.get_current_head()
        current = await self.current_revision()
        known = {rev.revision for rev in script.walk_revisions()}
        if current is not None and current not in known:
            raise DatabaseTooNew(
                f"the database is at schema revision {current}, newer than this mlsm knows "
                f"(head {head}); upgrade mlsm before starting the master"
            )
        if current == head:
            return current, head or ""
        if backup and current is not None and self.is_sqlite and self.sqlite_path.exists():
            dest = self.sqlite_path.with_name(
                f"{self.sqlite_path.name}.pre-{current}-{int(time.time())}.bak"
            )
            self.backup_sqlite(dest)
            log.info("copied the database aside to %s before migrating", dest)

        def _upgrade(sync_conn: Any) -> None:
            cfg.attributes["connection"] = sync_conn
            command.upgrade(cfg, "head")

        async with self.engine.begin() as conn:
            await conn.run_sync(_upgrade)
        log.info("database migrated from %s to %s", current, head)
        return current, head or ""

    def backup_sqlite(self, dest: Path) -> None:
        """A consistent online copy through SQLite's backup API (safe under WAL writers)."""
        if not self.is_sqlite:
            raise ConfigError(
                "online backup through mlsm is for SQLite; use pg_dump for PostgreSQL"
            )
        dest.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
        make_private(dest)  # a copy of the database is as private as the database
        src = sqlite3.connect(str(self.sqlite_path), timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
        try:
            dst = sqlite3.connect(str(dest))
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()

    async def close(self) -> None:
        await self.engine.dispose()
