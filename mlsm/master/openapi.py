"""What the OpenAPI document (``/schema``) says, where Litestar's defaults would be wrong.

- Errors: Litestar documents its own error shape for 400; every route of mlsm answers
  ``{"error": {"code", "message", "details"}}`` (:class:`~mlsm.wire.api.ErrorBody`) for
  each status of :data:`ERROR_RESPONSES`.
- Structs encoded as arrays (``array_like``, e.g. a job's history entries) are arrays on
  the wire; Litestar would document them as objects.

The fuzz run (tests/fuzz) checks responses against this document, so it must be right.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.plugins import OpenAPISchemaPlugin
from litestar.typing import FieldDefinition

from mlsm.wire.api import ErrorBody

#: The errors any route may answer, each with the one error body.
ERROR_RESPONSES: dict[int, ResponseSpec] = {
    status: ResponseSpec(data_container=ErrorBody, description=what, generate_examples=False)
    for status, what in (
        (400, "Invalid request: validation_error (details.path names the field), bad_request"),
        (401, "unauthenticated: no token, or one that is unknown, expired or revoked"),
        (403, "forbidden: the role may not do this"),
        (404, "not_found"),
        (409, "conflict: the state does not allow it now"),
        (413, "payload_too_large: the body, or what the request would store, is too large"),
        (429, "rate_limited"),
        (503, "unavailable: the database is busy or the master is at its connection limit"),
    )
}


def document_errors(handlers: list[Any]) -> None:
    """Give every HTTP route the error responses (a route's own entries win)."""
    for handler in handlers:
        if isinstance(handler, HTTPRouteHandler):
            handler.responses = {**ERROR_RESPONSES, **(handler.responses or {})}


class ArrayLikeStructSchema(OpenAPISchemaPlugin):
    """An ``array_like`` struct as the array it is on the wire: one item per field."""

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        return (
            not field_definition.is_union
            and field_definition.is_subclass_of(msgspec.Struct)
            and bool(field_definition.type_.__struct_config__.array_like)
        )

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        hints = field_definition.get_type_hints(include_extras=True, resolve_generics=True)
        fields = msgspec.structs.fields(field_definition.type_)
        items: list[Any] = []
        for f in fields:
            item = schema_creator.for_field_definition(
                FieldDefinition.from_annotation(hints[f.name], name=f.encode_name)
            )
            if item not in items:
                items.append(item)
        # Each item's own schema (prefixItems) would be exact, but not every OpenAPI tool
        # reads it; any of the fields' schemas, with the length bounded, is read by all.
        return Schema(
            type=OpenAPIType.ARRAY,
            title=field_definition.type_.__name__,
            description="[" + ", ".join(f.encode_name for f in fields) + "]",
            items=items[0] if len(items) == 1 else Schema(any_of=items),
            min_items=sum(1 for f in fields if f.required),
            max_items=len(fields),
        )
