"""Request bodies: the one place the master decodes them, for every route.

msgspec decodes nested arrays and objects recursively and stops at Python's recursion
limit with a ``RecursionError``, which no decoder error class covers. Litestar decodes a
JSON body untyped first (``Request.json``) and only then converts it to the route's
struct, so a body such as ``[`` x 5,000 reached the error handler as an unknown exception:
a 500 on every JSON route. Here that case is a 400 ``validation_error`` for all of them
(through the app's request class) and for the agents' MessagePack routes (through
:func:`decode_agent_body`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from litestar import Request

from mlsm.errors import ValidationError

T = TypeVar("T")

TOO_DEEP = "the request body nests arrays or objects too deeply"


def _too_deep() -> ValidationError:
    return ValidationError(TOO_DEEP, path="", details={"source": "body"})


class MasterRequest(Request[Any, Any, Any]):
    """Litestar's request, with body nesting beyond the decoder's depth refused as a 400."""

    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            raise _too_deep() from None

    async def msgpack(self) -> Any:
        try:
            return await super().msgpack()
        except RecursionError:
            raise _too_deep() from None


def decode_agent_body(body: bytes, decode: Callable[[bytes], T]) -> T:
    """Decode an agent's MessagePack body; every way it can be malformed is a 400."""
    try:
        return decode(body)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"invalid agent message: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ValidationError(f"malformed MessagePack: {exc}") from None
    except RecursionError:
        raise _too_deep() from None
