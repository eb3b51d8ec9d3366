from __future__ import annotations

from typing import Any

from litestar import Request, delete, get, patch, post
from litestar.datastructures import State
from litestar.params import Parameter

from mlsm.master.http import audit_target
from mlsm.master.routes.common import DbId, principal, services
from mlsm.redact import redact_url
from mlsm.wire import api


def setup(state: State) -> None:
    """Wire the dataset service to the lab settings and to the heartbeats' progress."""
    state.datasets.lab_settings = state.lab_settings
    state.nodes.on_transfers = state.datasets.on_transfers


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


@post(
    "/api/v1/datasets/import",
    opt={"role": "admin", "audit": "dataset.import"},
    status_code=202,
    tags=["datasets"],
)
async def import_dataset(request: Request[Any, Any, Any], data: api.DatasetImport) -> api.Transfer:
    """Download a URL onto a node's dataset root (http/https only; internal addresses only
    where the lab settings allow their range). Answers the transfer to follow."""
    # The audit row names the URL without its secrets (userinfo, query, fragment).
    audit_target(request, f"dataset:{data.name}", node=data.node, url=redact_url(data.url)[:512])
    return await services(request).datasets.start_import(principal(request), data)  # type: ignore[no-any-return]


@post(
    "/api/v1/datasets/transfer",
    opt={"role": "admin", "audit": "dataset.transfer"},
    status_code=202,
    tags=["datasets"],
)
async def transfer_dataset(
    request: Request[Any, Any, Any], data: api.DatasetTransfer
) -> api.Transfer:
    """Copy (or move) a dataset between nodes, relayed through the master."""
    audit_target(request, f"dataset:{data.name}", src=data.src, dst=data.dst, move=data.move)
    return await services(request).datasets.start_transfer(principal(request), data)  # type: ignore[no-any-return]


@delete(
    "/api/v1/datasets/{name:str}",
    opt={"role": "admin", "audit": "dataset.delete"},
    status_code=202,
    tags=["datasets"],
)
async def delete_dataset(
    request: Request[Any, Any, Any], name: str, node: str = Parameter(min_length=1, max_length=63)
) -> api.Transfer:
    """Remove the copy on ``node``; refused (409) while a job needs that copy."""
    audit_target(request, f"dataset:{name}", node=node)
    return await services(request).datasets.start_delete(principal(request), name, node)  # type: ignore[no-any-return]


@post(
    "/api/v1/datasets/{name:str}/digest",
    opt={"role": "admin", "audit": "dataset.digest"},
    status_code=202,
    tags=["datasets"],
)
async def digest_dataset(
    request: Request[Any, Any, Any], name: str, node: str = Parameter(min_length=1, max_length=63)
) -> api.Transfer:
    """Compute the content digest of the copy on ``node`` (sha256 over every file)."""
    audit_target(request, f"dataset:{name}", node=node)
    return await services(request).datasets.start_digest(principal(request), name, node)  # type: ignore[no-any-return]


@get("/api/v1/transfers", opt={"role": "member"}, tags=["datasets"])
async def list_transfers(request: Request[Any, Any, Any]) -> list[api.Transfer]:
    return await services(request).datasets.list_transfers()  # type: ignore[no-any-return]


@get("/api/v1/transfers/{transfer_id:int}", opt={"role": "member"}, tags=["datasets"])
async def show_transfer(request: Request[Any, Any, Any], transfer_id: DbId) -> api.Transfer:
    return await services(request).datasets.get_transfer(transfer_id)  # type: ignore[no-any-return]


@post(
    "/api/v1/transfers/{transfer_id:int}/cancel",
    opt={"role": "admin", "audit": "transfer.cancel"},
    status_code=200,
    tags=["datasets"],
)
async def cancel_transfer(request: Request[Any, Any, Any], transfer_id: DbId) -> api.Transfer:
    audit_target(request, f"transfer:{transfer_id}")
    return await services(request).datasets.cancel_transfer(principal(request), transfer_id)  # type: ignore[no-any-return]


ROUTES = [
    list_datasets,
    show_dataset,
    update_dataset,
    import_dataset,
    transfer_dataset,
    delete_dataset,
    digest_dataset,
    list_transfers,
    show_transfer,
    cancel_transfer,
]
