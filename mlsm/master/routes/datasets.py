from __future__ import annotations

from typing import Any

from litestar import Request, get, patch
from litestar.params import Parameter

from mlsm.master.http import audit_target
from mlsm.master.routes.common import principal, services
from mlsm.wire import api


@get("/api/v1/datasets", opt={"role": "member"}, tags=["datasets"])
async def list_datasets(
    request: Request[Any, Any, Any], node: str | None = Parameter(default=None, max_length=63)
) -> list[api.Dataset]:
    return await services(request).datasets.query(node)


@get("/api/v1/datasets/{name:str}", opt={"role": "member"}, tags=["datasets"])
async def show_dataset(request: Request[Any, Any, Any], name: str) -> api.Dataset:
    return await services(request).datasets.show(name)


@patch(
    "/api/v1/datasets/{name:str}",
    opt={"role": "member", "audit": "dataset.update"},
    tags=["datasets"],
)
async def update_dataset(
    request: Request[Any, Any, Any], name: str, data: api.DatasetUpdate
) -> api.Dataset:
    audit_target(request, f"dataset:{name}")
    return await services(request).datasets.update(principal(request), name, data)


ROUTES = [list_datasets, show_dataset, update_dataset]
