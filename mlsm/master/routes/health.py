from __future__ import annotations

from typing import Any

from litestar import Request, get

from mlsm import PROTOCOL_VERSION, __version__
from mlsm.wire import api


@get("/healthz", opt={"role": "public"}, tags=["meta"])
async def healthz(request: Request[Any, Any, Any]) -> api.Health:
    """Liveness: the master answers and knows its database backend."""
    return api.Health(
        status="ok",
        version=__version__,
        protocol=PROTOCOL_VERSION,
        database=request.app.state.db.backend,
    )


ROUTES = [healthz]
