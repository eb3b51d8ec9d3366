from __future__ import annotations

from typing import Any

from litestar import Request, get, patch

from mlsm.master.http import audit_target
from mlsm.master.routes.common import services
from mlsm.wire import api


@get("/api/v1/settings", opt={"role": "member"}, tags=["settings"])
async def show_settings(request: Request[Any, Any, Any]) -> api.LabSettings:
    """Everyone may read the lab's policies (they explain why a submission is refused)."""
    return services(request).lab_settings.current  # type: ignore[no-any-return]


@patch("/api/v1/settings", opt={"role": "admin", "audit": "settings.update"}, tags=["settings"])
async def update_settings(
    request: Request[Any, Any, Any], data: api.LabSettingsUpdate
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
            }.items()
            if v is not None
        },
    )
    return await services(request).lab_settings.update(data)  # type: ignore[no-any-return]


ROUTES = [show_settings, update_settings]
