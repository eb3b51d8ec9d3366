"""Datasets (one entry per dataset, with its copies on nodes) and the transfers that
import, copy, move, delete or digest them on nodes (admins start those)."""

from __future__ import annotations

from mlsm.client.call import Call, segment
from mlsm.client.resource import AsyncResource, SyncResource, async_method, sync_method
from mlsm.wire import api

DATASETS = "/api/v1/datasets"
TRANSFERS = "/api/v1/transfers"


def _dataset(name: str, tail: str = "") -> str:
    return f"{DATASETS}/{segment(name, 'dataset')}{tail}"


def _transfer(transfer_id: int, tail: str = "") -> str:
    return f"{TRANSFERS}/{int(transfer_id)}{tail}"


def _list(*, node: str | None = None) -> Call[list[api.Dataset]]:
    """Every dataset, or those with a copy on ``node``."""
    return Call("GET", DATASETS, list[api.Dataset], params={"node": node})


def _get(name: str) -> Call[api.Dataset]:
    return Call("GET", _dataset(name), api.Dataset)


def _update(name: str, req: api.DatasetUpdate) -> Call[api.Dataset]:
    """Change a dataset's description, tags or owner."""
    return Call("PATCH", _dataset(name), api.Dataset, body=req)


def _start_import(req: api.DatasetImport) -> Call[api.Transfer]:
    """Download a URL onto a node as a dataset."""
    return Call("POST", f"{DATASETS}/import", api.Transfer, body=req)


def _start_transfer(req: api.DatasetTransfer) -> Call[api.Transfer]:
    """Copy or move a dataset from one node to another."""
    return Call("POST", f"{DATASETS}/transfer", api.Transfer, body=req)


def _delete(name: str, *, node: str) -> Call[api.Transfer]:
    """Delete the copy on ``node`` from its disk (audited)."""
    return Call("DELETE", _dataset(name), api.Transfer, params={"node": node})


def _digest(name: str, *, node: str) -> Call[api.Transfer]:
    """Hash every file of the copy on ``node``."""
    return Call("POST", _dataset(name, "/digest"), api.Transfer, params={"node": node})


def _list_transfers() -> Call[list[api.Transfer]]:
    """Imports, copies, moves, deletes and digests, newest first."""
    return Call("GET", TRANSFERS, list[api.Transfer])


def _get_transfer(transfer_id: int) -> Call[api.Transfer]:
    return Call("GET", _transfer(transfer_id), api.Transfer)


def _cancel_transfer(transfer_id: int) -> Call[api.Transfer]:
    return Call("POST", _transfer(transfer_id, "/cancel"), api.Transfer)


class Datasets(SyncResource):
    list = sync_method(_list)
    get = sync_method(_get)
    update = sync_method(_update)
    start_import = sync_method(_start_import)
    start_transfer = sync_method(_start_transfer)
    delete = sync_method(_delete)
    digest = sync_method(_digest)


class AsyncDatasets(AsyncResource):
    list = async_method(_list)
    get = async_method(_get)
    update = async_method(_update)
    start_import = async_method(_start_import)
    start_transfer = async_method(_start_transfer)
    delete = async_method(_delete)
    digest = async_method(_digest)


class Transfers(SyncResource):
    list = sync_method(_list_transfers)
    get = sync_method(_get_transfer)
    cancel = sync_method(_cancel_transfer)


class AsyncTransfers(AsyncResource):
    list = async_method(_list_transfers)
    get = async_method(_get_transfer)
    cancel = async_method(_cancel_transfer)
