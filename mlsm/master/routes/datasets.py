"""Datasets and their transfers under ``/api/v1`` (the agents' side is in :mod:`.agent`)."""

from __future__ import annotations

from typing import Any

from litestar import Request, delete, get, patch, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import Parameter

from mlsm.master.http import audit_target
from mlsm.master.routes.common import DbId, ServicesDep, principal
from mlsm.master.routeshape import standing_in_for
from mlsm.redact import redact_url
from mlsm.wire import api


@get("/api/v1/datasets", opt={"role": "member"}, tags=["datasets"])
async def list_datasets(
    services: ServicesDep, node: str | None = Parameter(default=None, max_length=63)
) -> list[api.Dataset]:
    return await services.catalog.query(node)


@get("/api/v1/datasets/{name:str}", opt={"role": "member"}, tags=["datasets"])
async def show_dataset(services: ServicesDep, name: str) -> api.Dataset:
    return await services.catalog.show(name)


@patch(
    "/api/v1/datasets/{name:str}",
    opt={"role": "member", "audit": "dataset.update"},
    tags=["datasets"],
)
async def update_dataset(
    request: Request[Any, Any, Any], services: ServicesDep, name: str, data: api.DatasetUpdate
) -> api.Dataset:
    audit_target(request, f"dataset:{name}")
    return await services.catalog.update(principal(request), name, data)


@post(
    "/api/v1/datasets/import",
    opt={"role": "admin", "audit": "dataset.import"},
    status_code=202,
    tags=["datasets"],
)
async def import_dataset(
    request: Request[Any, Any, Any], services: ServicesDep, data: api.DatasetImport
) -> api.Transfer:
    """Download a URL onto a node's dataset root (http/https only; internal addresses only
    where the lab settings allow their range), or bring a directory from below an import
    root of another node (``from_node``, ``path``). Answers the transfer to follow."""
    if data.from_node is not None or data.path:
        audit_target(
            request,
            f"dataset:{data.name}",
            node=data.node,
            from_node=data.from_node,
            path=data.path,
        )
    else:  # the audit row names the URL without its secrets (userinfo, query, fragment)
        audit_target(
            request, f"dataset:{data.name}", node=data.node, url=redact_url(data.url)[:512]
        )
    return await services.dataset_ops.start_import(principal(request), data)


@post(
    "/api/v1/datasets/transfer",
    opt={"role": "admin", "audit": "dataset.transfer"},
    status_code=202,
    tags=["datasets"],
)
async def transfer_dataset(
    request: Request[Any, Any, Any], services: ServicesDep, data: api.DatasetTransfer
) -> api.Transfer:
    """Copy (or move) a dataset between nodes, relayed through the master."""
    audit_target(request, f"dataset:{data.name}", src=data.src, dst=data.dst, move=data.move)
    return await services.dataset_ops.start_transfer(principal(request), data)


@delete(
    "/api/v1/datasets/{name:str}",
    opt={"role": "admin", "audit": "dataset.delete"},
    status_code=202,
    tags=["datasets"],
)
async def delete_dataset(
    request: Request[Any, Any, Any],
    services: ServicesDep,
    name: str,
    node: str = Parameter(min_length=1, max_length=63),
) -> api.Transfer:
    """Remove the copy on ``node``; refused (409) while a job needs that copy."""
    audit_target(request, f"dataset:{name}", node=node)
    return await services.dataset_ops.start_delete(principal(request), name, node)


@post(
    "/api/v1/datasets/{name:str}/digest",
    opt={"role": "admin", "audit": "dataset.digest"},
    status_code=202,
    tags=["datasets"],
)
async def digest_dataset(
    request: Request[Any, Any, Any],
    services: ServicesDep,
    name: str,
    node: str = Parameter(min_length=1, max_length=63),
) -> api.Transfer:
    """Compute the content digest of the copy on ``node`` (sha256 over every file)."""
    audit_target(request, f"dataset:{name}", node=node)
    return await services.dataset_ops.start_digest(principal(request), name, node)


@get("/api/v1/transfers", opt={"role": "member"}, tags=["datasets"])
async def list_transfers(services: ServicesDep) -> list[api.Transfer]:
    return await services.transfers.query()


@get("/api/v1/transfers/{transfer_id:int}", opt={"role": "member"}, tags=["datasets"])
async def show_transfer(services: ServicesDep, transfer_id: DbId) -> api.Transfer:
    return await services.transfers.get(transfer_id)


@post(
    "/api/v1/transfers/{transfer_id:int}/cancel",
    opt={"role": "admin", "audit": "transfer.cancel"},
    status_code=200,
    tags=["datasets"],
)
async def cancel_transfer(
    request: Request[Any, Any, Any], services: ServicesDep, transfer_id: DbId
) -> api.Transfer:
    audit_target(request, f"transfer:{transfer_id}")
    return await services.transfers.cancel(principal(request), transfer_id)


def _named_like_an_action(word: str) -> list[HTTPRouteHandler]:
    """The routes of a dataset named ``word`` where a static action route of the same
    path (``POST /api/v1/datasets/{word}``) would otherwise answer them with 405: the
    router matches a static segment before a parameter (:mod:`mlsm.master.routeshape`)."""
    path = f"/api/v1/datasets/{word}"

    @get(path, **standing_in_for(show_dataset))
    async def show(services: ServicesDep) -> api.Dataset:
        shown: api.Dataset = await show_dataset.fn(services=services, name=word)
        return shown

    @patch(path, **standing_in_for(update_dataset))
    async def update(
        request: Request[Any, Any, Any], services: ServicesDep, data: api.DatasetUpdate
    ) -> api.Dataset:
        updated: api.Dataset = await update_dataset.fn(
            request=request, services=services, name=word, data=data
        )
        return updated

    @delete(path, **standing_in_for(delete_dataset))
    async def remove(
        request: Request[Any, Any, Any],
        services: ServicesDep,
        node: str = Parameter(min_length=1, max_length=63),
    ) -> api.Transfer:
        started: api.Transfer = await delete_dataset.fn(
            request=request, services=services, name=word, node=node
        )
        return started

    return [show, update, remove]


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
    *_named_like_an_action("import"),
    *_named_like_an_action("transfer"),
]
