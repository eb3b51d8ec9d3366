"""The audit log under ``/api/v1/audit``: read it, and verify its hash chain (admins)."""

from __future__ import annotations

from litestar import get
from litestar.params import Parameter

from mlsm.master.routes.common import ServicesDep
from mlsm.wire import api


@get("/api/v1/audit", opt={"role": "admin"}, tags=["audit"])
async def list_audit(
    services: ServicesDep,
    since: float | None = None,
    actor: str | None = Parameter(default=None, max_length=64),
    action: str | None = Parameter(default=None, max_length=64),
    limit: int = Parameter(default=1000, ge=1, le=100_000),
) -> list[api.AuditEntry]:
    return await services.audit.query(since=since, actor=actor, action=action, limit=limit)


@get("/api/v1/audit/verify", opt={"role": "admin"}, tags=["audit"])
async def verify_audit(services: ServicesDep) -> api.AuditVerify:
    return await services.audit.verify()


ROUTES = [list_audit, verify_audit]
