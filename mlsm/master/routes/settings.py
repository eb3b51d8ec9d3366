"""The lab's policies under ``/api/v1/settings``: everyone reads them, admins change them."""

from __future__ import annotations

from typing import Any

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
    audit_target(
        request,
        "settings:lab",
        **{
            k: v
            for k, v in {
                "image_patterns": data.image_patterns,
                "mount_allow": data.mount_allow,
                "import_allow_cidrs": data.import_allow_cidrs,
                "import_max_bytes": data.import_max_bytes,
                "job_retention_days": data.job_retention_days,
                "node_disk_high_pct": data.node_disk_high_pct,
                "webhook_allow_cidrs": data.webhook_allow_cidrs,
                "idle_gpu_enabled": data.idle_gpu_enabled,
                "idle_gpu_pct": data.idle_gpu_pct,
                "idle_gpu_window_s": data.idle_gpu_window_s,
                "idle_gpu_grace_s": data.idle_gpu_grace_s,
                "idle_gpu_action": data.idle_gpu_action,
                "idle_gpu_exempt_users": data.idle_gpu_exempt_users,
            }.items()
            if v is not None
        },
    )
    updated = await services.lab_settings.update(data)
    if data.job_retention_days is not None or data.node_disk_high_pct is not None:
        services.disk.kick()  # the new retention applies now, not at the next sweep
    return updated


ROUTES = [show_settings, update_settings]
