"""The Litestar app factory: routes by domain, the one role guard, error mapping, services.

``create_app(settings)`` builds everything; the database is migrated in the app's lifespan,
so tests can run the real app in-process (``litestar.testing``) as well as under uvicorn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin

from mlsm import __version__
from mlsm.config import Settings
from mlsm.master.bodies import MasterRequest
from mlsm.master.clientaddr import ClientAddresses
from mlsm.master.db import Database
from mlsm.master.http import RequestMiddleware, handle_exception
from mlsm.master.openapi import ArrayLikeStructSchema, document_errors
from mlsm.master.routes import agent as agent_routes
from mlsm.master.routes import audit as audit_routes
from mlsm.master.routes import auth as auth_routes
from mlsm.master.routes import datasets as dataset_routes
from mlsm.master.routes import health as health_routes
from mlsm.master.routes import jobs as job_routes
from mlsm.master.routes import metrics as metric_routes
from mlsm.master.routes import nodes as node_routes
from mlsm.master.routes import settings as settings_routes
from mlsm.master.routes import tokens as token_routes
from mlsm.master.routes import users as user_routes
from mlsm.master.security import check_handler_roles, role_guard
from mlsm.master.services.audit import AuditLog
from mlsm.master.services.auth import AuthService
from mlsm.master.services.datasets import DatasetService
from mlsm.master.services.joblogs import LogStore
from mlsm.master.services.jobs import JobService
from mlsm.master.services.nodes import NodeRegistry
from mlsm.master.services.policy import JobPolicy
from mlsm.master.services.settings import SettingsService
from mlsm.master.services.telemetry import History
from mlsm.master.services.users import UserService

log = logging.getLogger("mlsm.master")

#: Route modules; each exposes ROUTES. Later domains append here.
ROUTE_MODULES: list[Any] = [
    health_routes,
    auth_routes,
    user_routes,
    token_routes,
    audit_routes,
    agent_routes,
    node_routes,
    job_routes,
    dataset_routes,
    metric_routes,
    settings_routes,
]

#: Extra start-up/shutdown hooks registered by domain modules: (startup, shutdown) pairs.
Hook = Callable[[State], Any]


def _all_route_handlers() -> list[Any]:
    handlers: list[Any] = []
    for mod in ROUTE_MODULES:
        handlers.extend(mod.ROUTES)
    document_errors(handlers)
    return handlers


def build_services(state: State, settings: Settings, db: Database) -> None:
    state.settings = settings
    state.db = db
    state.client_addresses = ClientAddresses(settings.trusted_proxies)
    state.audit = AuditLog(db, settings.data_path)
    state.auth = AuthService(db, settings)
    state.history = History(db, settings.heartbeat_interval, settings.history_retention_days)
    state.nodes = NodeRegistry(db, settings, state.history)
    state.auth.registry = state.nodes
    state.jobs = JobService(db, settings, state.nodes, LogStore(settings.data_path / "logs"))
    state.datasets = DatasetService(db, state.nodes)
    state.lab_settings = SettingsService(db)
    state.jobs.policy = JobPolicy(state.lab_settings)
    state.jobs.datasets = state.datasets

    def _user_changed(user_id: int) -> None:
        state.auth.forget_user(user_id)
        _spawn(state, state.jobs.refresh_users())

    state.users = UserService(db, on_change=_user_changed)
    state.background = set()
    state.tls_fingerprint = ""
    if settings.tls_cert:
        from mlsm.tls import fingerprint_of_file

        state.tls_fingerprint = fingerprint_of_file(settings.tls_cert)


def _spawn(state: State, coro: Any) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    state.background.add(task)
    task.add_done_callback(state.background.discard)


async def _start_domains(state: State) -> None:
    await state.audit.load()
    await state.lab_settings.load()
    await state.nodes.load()
    await state.datasets.load()
    await state.jobs.load()
    _spawn(state, state.nodes.run_background())
    _spawn(state, state.jobs.run_loop())


async def _stop_domains(state: State) -> None:
    for task in list(state.background):
        task.cancel()
    try:
        await state.nodes.flush()
        await state.jobs.flush_usage()
    except Exception:
        log.exception("final flush failed")
    state.audit.close()


def create_app(
    settings: Settings,
    *,
    db: Database | None = None,
    migrate: bool = True,
    extra_startup: Sequence[Hook] = (),
    extra_shutdown: Sequence[Hook] = (),
) -> Litestar:
    database = db or Database(settings.db_url)
    handlers = _all_route_handlers()
    check_handler_roles(handlers)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if migrate:
            await database.migrate()
        await _start_domains(app.state)
        for hook in app.state.startup_hooks:
            res = hook(app.state)
            if asyncio.iscoroutine(res):
                await res
        try:
            yield
        finally:
            for hook in app.state.shutdown_hooks:
                res = hook(app.state)
                if asyncio.iscoroutine(res):
                    await res
            await _stop_domains(app.state)
            await database.close()

    state = State()
    build_services(state, settings, database)
    state.startup_hooks = list(extra_startup)
    state.shutdown_hooks = list(extra_shutdown)
    for mod in ROUTE_MODULES:
        setup = getattr(mod, "setup", None)
        if setup is not None:
            setup(state)

    app = Litestar(
        route_handlers=handlers,
        guards=[role_guard],
        exception_handlers={Exception: handle_exception},
        request_max_body_size=settings.max_body_bytes,
        request_class=MasterRequest,
        plugins=[ArrayLikeStructSchema()],
        lifespan=[lifespan],
        state=state,
        openapi_config=OpenAPIConfig(
            title="mlsm master API",
            version=__version__,
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
        ),
        debug=False,
        logging_config=None,
    )
    # Around the whole app rather than per route, so unrouted requests (404, 405) get a
    # request id and a log line too.
    app.asgi_handler = RequestMiddleware()(app.asgi_handler)
    return app
