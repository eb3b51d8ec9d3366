"""The Litestar app factory: routes by domain, the one role guard, error mapping, services.

``create_app(settings)`` builds everything: the :class:`~mlsm.master.services.container.Services`
container once, handed to every route through dependency injection (``services: Services``);
the database is migrated and the services started in the app's lifespan, so tests can run
the real app in-process (``litestar.testing``) as well as under uvicorn.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin

from mlsm import __version__
from mlsm.config import Settings
from mlsm.master.bodies import MasterRequest
from mlsm.master.connections import ConnectionGuard
from mlsm.master.db import Database
from mlsm.master.http import RequestMiddleware, handle_exception
from mlsm.master.openapi import ArrayLikeStructSchema, document_errors
from mlsm.master.routes import agent as agent_routes
from mlsm.master.routes import audit as audit_routes
from mlsm.master.routes import auth as auth_routes
from mlsm.master.routes import channels as channel_routes
from mlsm.master.routes import code as code_routes
from mlsm.master.routes import datasets as dataset_routes
from mlsm.master.routes import events as event_routes
from mlsm.master.routes import health as health_routes
from mlsm.master.routes import jobcommands as job_command_routes
from mlsm.master.routes import jobs as job_routes
from mlsm.master.routes import metrics as metric_routes
from mlsm.master.routes import nodes as node_routes
from mlsm.master.routes import outputs as output_routes
from mlsm.master.routes import settings as settings_routes
from mlsm.master.routes import tokens as token_routes
from mlsm.master.routes import usage as usage_routes
from mlsm.master.routes import users as user_routes
from mlsm.master.routes.common import SERVICES
from mlsm.master.routeshape import check_no_shadowed_names
from mlsm.master.security import RoleGuard, check_handler_roles
from mlsm.master.services.container import STATE_KEY, Services

#: Route modules; each exposes ROUTES. Later domains append here.
ROUTE_MODULES: list[ModuleType] = [
    health_routes,
    auth_routes,
    user_routes,
    token_routes,
    audit_routes,
    agent_routes,
    node_routes,
    job_routes,
    job_command_routes,
    output_routes,
    dataset_routes,
    metric_routes,
    settings_routes,
    code_routes,
    event_routes,
    usage_routes,
    channel_routes,
]


def _all_route_handlers() -> list[BaseRouteHandler]:
    handlers: list[BaseRouteHandler] = []
    for mod in ROUTE_MODULES:
        handlers.extend(mod.ROUTES)
    document_errors(handlers)
    return handlers


def _tls_fingerprint(settings: Settings) -> str:
    if not settings.tls_cert:
        return ""
    from mlsm.tls import fingerprint_of_file

    return fingerprint_of_file(settings.tls_cert)


def create_app(
    settings: Settings,
    *,
    db: Database | None = None,
    migrate: bool = True,
    connection_guard: ConnectionGuard | None = None,
) -> Litestar:
    """The master's app; ``connection_guard`` is the HTTP server's (for ``/metrics``)."""
    database = db or Database(settings.db_url)
    handlers = _all_route_handlers()
    check_handler_roles(handlers)
    check_no_shadowed_names(handlers)
    services = Services(
        settings,
        database,
        connection_guard=connection_guard,
        tls_fingerprint=_tls_fingerprint(settings),
    )

    def provide_services() -> Services:
        return services

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if migrate:
            await database.migrate()
        await services.start()
        try:
            yield
        finally:
            await services.stop()
            await database.close()

    app = Litestar(
        route_handlers=handlers,
        guards=[RoleGuard(services.auth)],
        dependencies={SERVICES: Provide(provide_services, use_cache=True, sync_to_thread=False)},
        exception_handlers={Exception: handle_exception},
        request_max_body_size=settings.max_body_bytes,
        request_class=MasterRequest,
        plugins=[ArrayLikeStructSchema()],
        lifespan=[lifespan],
        state=State({STATE_KEY: services}),
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
    middleware = RequestMiddleware(services.audit, services.client_addresses)
    app.asgi_handler = middleware(app.asgi_handler)
    return app
