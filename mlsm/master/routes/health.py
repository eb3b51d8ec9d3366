"""``/healthz``: the one public route, for load balancers and ``mlsm up`` to poll."""

from __future__ import annotations

from litestar import get

from mlsm import PROTOCOL_VERSION, __version__
from mlsm.master.routes.common import ServicesDep
from mlsm.wire import api


@get("/healthz", opt={"role": "public"}, tags=["meta"])
async def healthz(services: ServicesDep) -> api.Health:
    """Liveness: the master answers and knows its database backend."""
    return api.Health(
        status="ok",
        version=__version__,
        protocol=PROTOCOL_VERSION,
        database=services.db.backend,
    )


ROUTES = [healthz]
