"""The lab's policies (everyone reads them, admins change them) and the audit log (admins)."""

from __future__ import annotations

from mlsm.client.call import Call
from mlsm.client.resource import AsyncResource, SyncResource, async_method, sync_method
from mlsm.wire import api

SETTINGS = "/api/v1/settings"
AUDIT = "/api/v1/audit"


def _get_settings() -> Call[api.LabSettings]:
    return Call("GET", SETTINGS, api.LabSettings)


def _update_settings(req: api.LabSettingsUpdate) -> Call[api.LabSettings]:
    """Change the lab's policies (audited)."""
    return Call("PATCH", SETTINGS, api.LabSettings, body=req)


def _list_audit(
    *,
    since: float | None = None,
    actor: str | None = None,
    action: str | None = None,
    limit: int | None = None,
) -> Call[list[api.AuditEntry]]:
    """Audit rows, newest first; ``action`` may hold wildcards (``user.*``)."""
    params = {"since": since, "actor": actor, "action": action, "limit": limit}
    return Call("GET", AUDIT, list[api.AuditEntry], params=params)


def _verify_audit() -> Call[api.AuditVerify]:
    """Check the audit log's hash chain; the answer names the first broken row."""
    return Call("GET", f"{AUDIT}/verify", api.AuditVerify)


class LabSettings(SyncResource):
    get = sync_method(_get_settings)
    update = sync_method(_update_settings)


class AsyncLabSettings(AsyncResource):
    get = async_method(_get_settings)
    update = async_method(_update_settings)


class Audit(SyncResource):
    list = sync_method(_list_audit)
    verify = sync_method(_verify_audit)


class AsyncAudit(AsyncResource):
    list = async_method(_list_audit)
    verify = async_method(_verify_audit)
