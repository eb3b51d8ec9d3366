"""Helpers shared by route modules.

Every handler that needs the master's services declares ``services: ServicesDep``; the app
factory provides the one :class:`~mlsm.master.services.container.Services` built at start
through Litestar's dependency injection, under the name :data:`SERVICES`.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.params import Parameter, SkipValidation

from mlsm.master.security import Principal
from mlsm.master.services.container import Services
from mlsm.wire.ints import INT64_MAX

#: The name handlers receive the service container under.
SERVICES = "services"
#: A handler's ``services`` parameter: the container, injected by name; it is the app's own
#: object, so Litestar does not validate it per request.
ServicesDep = NamedDependency[SkipValidation[Services]]


def principal(request: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    user = request.scope.get("user")
    assert isinstance(user, Principal), "the role guard sets the principal before any handler runs"
    return user


#: A database id in a path or query: positive and within 64 bits, so it never overflows a
#: driver (the rule of :mod:`mlsm.wire.ints`, for route parameters).
DbId = Annotated[int, Parameter(ge=1, le=INT64_MAX)]
#: A byte offset or count in a query: not negative, within 64 bits.
QueryCount = Annotated[int, Parameter(ge=0, le=INT64_MAX)]
