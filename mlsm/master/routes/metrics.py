"""Prometheus text exposition at ``/metrics`` (public, like most exporters; it reveals node
names and load, no secrets); built by :class:`~mlsm.master.services.metrics.LabMetrics`."""

from __future__ import annotations

from litestar import Response, get

from mlsm.master.routes.common import ServicesDep
from mlsm.master.services.metrics import CONTENT_TYPE


@get("/metrics", opt={"role": "public"}, include_in_schema=False)
async def metrics(services: ServicesDep) -> Response[bytes]:
    return Response(content=services.metrics.render(), media_type=CONTENT_TYPE)


ROUTES = [metrics]
