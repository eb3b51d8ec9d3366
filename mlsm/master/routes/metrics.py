"""Prometheus text exposition at ``/metrics``; built by
:class:`~mlsm.master.services.metrics.LabMetrics`. It reveals node names and load, no
secrets: open like most exporters, or behind a bearer token when the ``metrics_token``
setting is set (:func:`~mlsm.master.security.check_metrics_token`)."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from mlsm.master.routes.common import ServicesDep
from mlsm.master.security import check_metrics_token
from mlsm.master.services.container import services_of
from mlsm.master.services.metrics import CONTENT_TYPE


def metrics_token_guard(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    check_metrics_token(services_of(connection.app).settings.metrics_token, connection)


@get("/metrics", opt={"role": "public"}, guards=[metrics_token_guard], include_in_schema=False)
async def metrics(services: ServicesDep) -> Response[bytes]:
    return Response(content=services.metrics.render(), media_type=CONTENT_TYPE)


ROUTES = [metrics]
