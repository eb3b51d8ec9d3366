"""What one request of the JSON API is, apart from how it is sent: a :class:`Call`.

Each resource module spells its paths once, as functions that return a ``Call``; both
faces send the same ``Call`` (:mod:`mlsm.client.resource`). Words in a path go through
:func:`segment`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import quote

import msgspec

from mlsm import errors

T = TypeVar("T")
ParamValue = str | int | float | bool | Sequence[str] | None
Params = Mapping[str, ParamValue]


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and the struct its answer decodes into (unset ``params`` are not sent)."""

    method: str
    path: str
    reply: type[T]
    params: Params | None = None
    body: object = None
    #: Raw bytes to send instead of a JSON ``body`` (a manifest, a frame stream), and their type.
    content: bytes | Iterable[bytes] | None = None
    content_type: str = "application/octet-stream"


def segment(value: str, what: str) -> str:
    """``value`` as one path segment: percent-quoted, so a newline, ``?`` or ``#`` cannot
    break the URL. The master decodes ``%2F`` back into ``/`` before it routes, and a
    client would drop a ``.``/``..`` segment or an empty one, so a word that cannot stay
    one segment is refused here instead of reaching another route."""
    if not value or "/" in value:
        raise errors.ValidationError(
            f"{what} {value!r} is not a valid name (empty, or it holds '/')", path=what
        )
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


class Ack(msgspec.Struct):
    """The answer of a route that only says it did it: ``{"ok": true}``."""

    ok: bool = True
