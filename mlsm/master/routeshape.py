"""A check of the route table's shape, run when the app is built.

The router matches a static path segment before a parameter: with both
``POST /api/v1/datasets/transfer`` and ``GET /api/v1/datasets/{name:str}``, a dataset
named ``transfer`` is answered 405 by the static route. Any name the lab chooses (dataset,
project, user) must reach its own routes, so a static route beside a ``{...:str}``
parameter must answer every method of that parameter's route too (see
``routes.datasets._named_like_an_action``). An ``{...:int}`` parameter cannot be spelled
like a static segment, so it needs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from litestar.handlers import HTTPRouteHandler
from litestar.handlers.base import BaseRouteHandler


def standing_in_for(handler: HTTPRouteHandler) -> dict[str, Any]:
    """Decorator arguments for a route that answers a static path for the name route
    ``handler``: its role, audit action and status code, left out of the OpenAPI document
    (which describes the name route already)."""
    return {
        "opt": dict(handler.opt),
        "status_code": handler.status_code,
        "include_in_schema": False,
    }


def _methods(handler: BaseRouteHandler) -> set[str]:
    return set(getattr(handler, "http_methods", None) or {"WS"})


def shadowed_names(handlers: Iterable[BaseRouteHandler]) -> list[str]:
    """``"METHOD /static/path"`` for each method a static path leaves unanswered where a
    sibling string parameter's route has it."""
    methods: dict[tuple[str, ...], set[str]] = {}
    for h in handlers:
        for path in h.paths:
            segments = tuple(s for s in path.split("/") if s)
            methods.setdefault(segments, set()).update(_methods(h))
    missing: list[str] = []
    for segments, answered in methods.items():
        if not segments or segments[-1].startswith("{"):
            continue
        parent = segments[:-1]
        for other, wanted in methods.items():
            if (
                other[:-1] == parent
                and len(other) == len(segments)
                and other[-1].startswith("{")
                and other[-1].endswith(":str}")
            ):
                missing += [f"{m} /{'/'.join(segments)}" for m in sorted(wanted - answered)]
    return sorted(missing)


def check_no_shadowed_names(handlers: Iterable[BaseRouteHandler]) -> None:
    """Refuse to build an app where a name would be answered by a static route (405)."""
    missing = shadowed_names(handlers)
    if missing:
        raise RuntimeError(
            "static routes shadow a name parameter's methods (a name spelled like the "
            f"static segment would get 405): {', '.join(missing)}"
        )
