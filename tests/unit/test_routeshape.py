"""The route table's shape check: a static route beside a ``{...:str}`` parameter must
answer every method of the parameter's route, or a name spelled like it gets 405."""

from __future__ import annotations

import pytest
from litestar import Litestar, delete, get, post
from litestar.testing import TestClient

from mlsm.master.app import _all_route_handlers
from mlsm.master.routes import code as code_routes
from mlsm.master.routes import datasets as dataset_routes
from mlsm.master.routeshape import check_no_shadowed_names, shadowed_names


@get("/x/{name:str}")
async def show_x(name: str) -> str:
    return name


@delete("/x/{name:str}", status_code=200)
async def delete_x(name: str) -> str:
    return name


@post("/x/act")
async def act() -> str:
    return "acted"


@get("/y/{item:int}")
async def show_y(item: int) -> int:
    return item


@post("/y/cancel")
async def cancel_y() -> str:
    return "cancelled"


def test_the_shadowed_methods_are_named_and_int_parameters_need_nothing() -> None:
    handlers = [show_x, delete_x, act, show_y, cancel_y]
    assert shadowed_names(handlers) == ["DELETE /x/act", "GET /x/act"]
    with pytest.raises(RuntimeError, match="GET /x/act"):
        check_no_shadowed_names(handlers)
    # what the check guards against, in the router itself
    with TestClient(Litestar(handlers)) as client:
        assert client.get("/x/act").status_code == 405
        assert client.get("/x/other").text == "other"


def test_the_master_answers_every_name() -> None:
    handlers = _all_route_handlers()
    assert shadowed_names(handlers) == []
    factory = dataset_routes._named_like_an_action.__qualname__
    without = [
        h
        for h in handlers
        if not h.fn.__qualname__.startswith(f"{factory}.")
        and h.fn is not code_routes.remove_project_named_copy.fn
    ]
    assert len(without) == len(handlers) - 7
    assert shadowed_names(without) == [
        "DELETE /api/v1/datasets/import",
        "DELETE /api/v1/datasets/transfer",
        "DELETE /api/v1/projects/copy",
        "GET /api/v1/datasets/import",
        "GET /api/v1/datasets/transfer",
        "PATCH /api/v1/datasets/import",
        "PATCH /api/v1/datasets/transfer",
    ]
