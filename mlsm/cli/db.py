"""``mlsm db``: back up, upgrade or inspect the master's database on the master's server."""

from __future__ import annotations

import click

from mlsm.cli.common import settings_from
from mlsm.cli.output import echo


@click.group()
def db() -> None:
    """Back up or upgrade the master's database (run on the master's server)."""


@db.command("backup")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--data-dir", help="The master's data dir (default: the configured one).")
@click.option("--database-url", help="The master's database (default: the configured one).")
@click.pass_context
def db_backup(ctx: click.Context, /, path: str, **flags: object) -> None:
    """A consistent online copy of a SQLite database (safe while the master runs).

    For PostgreSQL use pg_dump (docs/operations.md).
    """
    from pathlib import Path

    from mlsm.errors import ConfigError
    from mlsm.master.db import Database

    s = settings_from(ctx, **flags)
    database = Database(s.db_url)
    if not database.is_sqlite:
        raise ConfigError(
            "this master uses PostgreSQL: back it up with pg_dump (see docs/operations.md)"
        )
    if not database.sqlite_path.exists():
        raise ConfigError(f"no database at {database.sqlite_path}")
    dest = Path(path)
    if dest.exists():
        raise ConfigError(f"{dest} exists; refusing to overwrite it")
    database.backup_sqlite(dest)
    echo(f"backed up {database.sqlite_path} to {dest} ({dest.stat().st_size} bytes)")


@db.command("upgrade")
@click.option("--data-dir", help="The master's data dir (default: the configured one).")
@click.option("--database-url", help="The master's database (default: the configured one).")
@click.pass_context
def db_upgrade(ctx: click.Context, /, **flags: object) -> None:
    """Apply pending schema migrations now (the master also does this at start)."""
    import asyncio

    from mlsm.master.db import Database

    s = settings_from(ctx, **flags)

    async def run() -> tuple[str | None, str]:
        database = Database(s.db_url)
        try:
            return await database.migrate()
        finally:
            await database.close()

    before, after = asyncio.run(run())
    echo(f"database schema at {after}" + ("" if before == after else f" (was {before or 'empty'})"))


@db.command("current")
@click.option("--data-dir", help="The master's data dir (default: the configured one).")
@click.option("--database-url", help="The master's database (default: the configured one).")
@click.pass_context
def db_current(ctx: click.Context, /, **flags: object) -> None:
    """Print the database's schema revision and the newest this mlsm knows."""
    import asyncio

    from mlsm.master.db import Database

    s = settings_from(ctx, **flags)

    async def run() -> tuple[str | None, str]:
        database = Database(s.db_url)
        try:
            return await database.current_revision(), database.head_revision()
        finally:
            await database.close()

    cur, head = asyncio.run(run())
    echo(f"database: {cur or 'empty'}; this mlsm: {head}")
