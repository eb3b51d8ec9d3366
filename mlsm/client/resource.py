"""Resource groups (``client.jobs``, ``client.nodes``, ...) and how their methods are made.

A group's request is written once, as a function that returns a :class:`Call`;
:func:`sync_method` and :func:`async_method` turn it into the method of each face, with
its parameters and its reply type intact for the type checker.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from mlsm.client.call import Call
from mlsm.client.http import AsyncHttp, SyncHttp

T = TypeVar("T")
P = ParamSpec("P")
G = TypeVar("G")


class SyncResource:
    """A group of the sync face's methods."""

    def __init__(self, http: SyncHttp) -> None:
        self._http = http


class AsyncResource:
    """A group of the async face's methods."""

    def __init__(self, http: AsyncHttp) -> None:
        self._http = http


def _named_after(build: Callable[..., Any], method: Callable[..., Any]) -> None:
    method.__name__ = method.__qualname__ = build.__name__.lstrip("_")
    method.__doc__ = build.__doc__


def sync_method(build: Callable[P, Call[T]]) -> Callable[Concatenate[SyncResource, P], T]:
    """The sync face's method that sends what ``build`` describes."""

    def method(self: SyncResource, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._http.send(build(*args, **kwargs))

    _named_after(build, method)
    return method


def async_method(
    build: Callable[P, Call[T]],
) -> Callable[Concatenate[AsyncResource, P], Coroutine[Any, Any, T]]:
    """The async face's method that sends what ``build`` describes."""

    async def method(self: AsyncResource, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._http.send(build(*args, **kwargs))

    _named_after(build, method)
    return method


class group(Generic[G]):
    """A face's attribute that holds one resource group, made on first use from the class
    ``name`` of ``module``: a command imports only the groups it calls (and what they
    import), not every resource of the API."""

    def __init__(self, module: str, name: str) -> None:
        self._where = (module, name)
        self._name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, face: None, owner: type) -> group[G]: ...
    @overload
    def __get__(self, face: object, owner: type) -> G: ...
    def __get__(self, face: object | None, owner: type) -> G | group[G]:
        if face is None:
            return self
        import importlib

        made: G = getattr(importlib.import_module(self._where[0]), self._where[1])(face)
        face.__dict__[self._name] = made  # later reads find it without this descriptor
        return made
