"""Run the master under uvicorn: migrate, bootstrap the first superadmin, serve.

Before anything is written the process takes umask 077 and narrows its data directory to
0700, so the database, its -wal/-shm, logs and spool files are the owner's alone whatever
umask the caller had. The descriptor limit is raised and the connection limits of
:mod:`mlsm.master.connections` put in place before the socket opens.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from mlsm.config import Settings
from mlsm.errors import ConfigError
from mlsm.master.app import create_app
from mlsm.master.connections import (
    CONNECTIONS_PER_NODE,
    LARGE_LAB_NODES,
    ConnectionGuard,
    connection_cap,
    listen_backlog,
    protocol_class,
    raise_nofile_limit,
)
from mlsm.master.db import Database
from mlsm.master.http import setup_logging
from mlsm.master.services.container import services_of
from mlsm.master.services.users import UserService
from mlsm.wire.channels import MAX_MESSAGE

log = logging.getLogger("mlsm.master")

#: Files the master creates are private: no bits for group or others.
PRIVATE_UMASK = 0o077
DATA_DIR_MODE = 0o700
#: Seconds in-flight requests get to finish on SIGTERM.
GRACEFUL_SHUTDOWN_S = 5
#: WebSocket keep-alive: a ping this often, and a peer that does not answer in time is gone.
WS_PING_INTERVAL_S = 20.0
WS_PING_TIMEOUT_S = 20.0


def make_private(settings: Settings) -> None:
    """umask 077 for this process, and the data directory 0700 (narrowed if it was wider)."""
    from mlsm.master.db.engine import restrict_mode

    os.umask(PRIVATE_UMASK)
    settings.data_path.mkdir(parents=True, exist_ok=True, mode=DATA_DIR_MODE)
    restrict_mode(settings.data_path, DATA_DIR_MODE)


def connection_guard(settings: Settings) -> tuple[ConnectionGuard, int]:
    """Raise the descriptor limit, derive the connection cap (and the listen backlog) from
    it, and say so."""
    soft, hard = raise_nofile_limit()
    cap = connection_cap(soft, settings.max_connections)
    log.info(
        "descriptor limit %d (hard %d): up to %d connections, about %d nodes",
        soft,
        hard,
        cap,
        cap // CONNECTIONS_PER_NODE,
    )
    if cap < LARGE_LAB_NODES * CONNECTIONS_PER_NODE and settings.max_connections == 0:
        log.warning(
            "the descriptor limit %d leaves room for only %d connections; a lab of %d nodes "
            "needs %d: raise LimitNOFILE (systemd) or ulimit -n",
            soft,
            cap,
            LARGE_LAB_NODES,
            LARGE_LAB_NODES * CONNECTIONS_PER_NODE,
        )
    guard = ConnectionGuard(
        max_connections=cap,
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
    )
    return guard, listen_backlog(soft, cap)


async def prepare(settings: Settings, init_admin: str | None, password: str | None) -> bool:
    """Migrate and (optionally) create the first superadmin before the server starts."""
    db = Database(settings.db_url)
    try:
        await db.migrate()
        created = False
        if init_admin:
            assert password is not None
            created = await UserService(db).bootstrap_superadmin(init_admin, password)
        return created
    finally:
        await db.close()


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, releasing agents' long-polls as soon as a stop signal arrives
        (uvicorn would otherwise wait out its grace period on them, then cancel them)."""

        on_exit: Any = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.on_exit is not None:
                try:
                    asyncio.get_running_loop().call_soon_threadsafe(self.on_exit)
                except RuntimeError:
                    pass
            super().handle_exit(sig, frame)

    return Server


async def has_users(settings: Settings) -> bool:
    """Whether the database already has users (so --init-admin needs no password)."""
    from sqlalchemy import func, select
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from mlsm.master.db.models import User

    db = Database(settings.db_url)
    try:
        async with db.session() as s:
            return int((await s.execute(select(func.count()).select_from(User))).scalar_one()) > 0
    except (OperationalError, ProgrammingError):  # no schema yet
        return False
    finally:
        await db.close()


def run_master(
    settings: Settings, *, init_admin: str | None = None, password: str | None = None
) -> None:
    import uvicorn

    setup_logging(settings.log_level, settings.log_format)
    make_private(settings)
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("settings 'tls_cert' and 'tls_key' go together: give both or neither")
    created = asyncio.run(prepare(settings, init_admin, password))
    if init_admin:
        log.info(
            "superadmin %s %s",
            init_admin,
            "created" if created else "not created: users already exist",
        )
    guard, backlog = connection_guard(settings)
    app = create_app(settings, migrate=False, connection_guard=guard)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol_class(guard),
        timeout_keep_alive=settings.keepalive_timeout,
        log_config=None,
        access_log=False,
        ssl_certfile=settings.tls_cert or None,
        ssl_keyfile=settings.tls_key or None,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        backlog=backlog,
        server_header=False,
        # Shells and forwards (mlsm.wire.channels): one message is at most a data frame,
        # and a silent peer is found by pings.
        ws="websockets-sansio",
        ws_max_size=MAX_MESSAGE,
        ws_ping_interval=WS_PING_INTERVAL_S,
        ws_ping_timeout=WS_PING_TIMEOUT_S,
        # Never let uvicorn rewrite the client address from X-Forwarded-For (by default it
        # believes any local peer): the trusted_proxies setting is the single source.
        proxy_headers=False,
        forwarded_allow_ips=[],
    )
    server = _server_class()(config)
    server.on_exit = services_of(app).nodes.release_polls
    if settings.tls_cert:
        from mlsm.tls import fingerprint_of_file

        log.info(
            "TLS certificate fingerprint sha256:%s (join tokens carry it)",
            fingerprint_of_file(settings.tls_cert),
        )
    log.info(
        "master listening on %s://%s:%s (database: %s, pid %s)",
        "https" if settings.tls_cert else "http",
        settings.host,
        settings.port,
        Database(settings.db_url).backend,
        os.getpid(),
    )
    server.run()
