"""Helpers shared by route modules."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request
from litestar.params import Parameter

from mlsm.master.security import Principal
from mlsm.wire.ints import INT64_MAX


def principal(request: Request[Any, Any, Any]) -> Principal:
    user = request.scope.get("user")
    assert isinstance(user, Principal), "role_guard sets the principal before any handler runs"
    return user


def services(request: Request[Any, Any, Any]) -> Any:
    return request.app.state


#: A database id in a path or query: positive and within 64 bits, so it never overflows a
#: driver (the rule of :mod:`mlsm.wire.ints`, for route parameters).
DbId = Annotated[int, Parameter(ge=1, le=INT64_MAX)]
#: A byte offset or count in a query: not negative, within 64 bits.
QueryCount = Annotated[int, Parameter(ge=0, le=INT64_MAX)]
