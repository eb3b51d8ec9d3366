"""Helpers shared by route modules."""

from __future__ import annotations

from typing import Any

from litestar import Request

from mlsm.master.security import Principal


def principal(request: Request[Any, Any, Any]) -> Principal:
    user = request.scope.get("user")
    assert isinstance(user, Principal), "role_guard sets the principal before any handler runs"
    return user


def services(request: Request[Any, Any, Any]) -> Any:
    return request.app.state
