"""The lab's policies under ``/api/v1/settings``: everyone reads them, admins change them."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, get, patch

from mlsm.master.http import audit_target
from mlsm.master.routes.common import ServicesDep
from mlsm.wire import api


@get("/api/v1/settings", opt={"role": "member"}, tags=["settings"])
async def show_settings(services: ServicesDep) -> api.LabSettings:
    """Everyone may read the lab's policies (they explain why a submission is refused)."""
    return services.lab_settings.current


@patch("/api/v1/settings", opt={"role": "admin", "audit": "settings.update"}, tags=["settings"])
async def update_settings(
    request: Request[Any, Any, Any], services: ServicesDep, data: api.LabSettingsUpdate
) -> api.LabSettings:
    # Every field the change sets is in its audit row (what it was set to).
    audit_target(
        request,
        "settings:lab",
        **{k: v for k, v in msgspec.structs.asdict(data).items() if v is not None},
    )
    updated = await services.lab_settings.update(data)
    if data.job_retention_days is not None or data.node_disk_high_pct is not None:
        services.disk.kick()  # the new retention applies now, not at the next sweep
    return updated


ROUTES = [show_settings, update_settings]
