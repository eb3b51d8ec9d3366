"""Integers as the databases hold them.

SQLite's INTEGER and PostgreSQL's BIGINT are signed 64-bit. A number past that range that
reaches a query is an overflow inside the driver (a 500), so every integer a client or an
agent sends is bounded here, at decode time, and refused with a 400 naming the field.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

#: Any integer the master may store or compare in a query.
Int64 = Annotated[int, Meta(ge=INT64_MIN, le=INT64_MAX)]
#: A row id (jobs, tokens, transfers, commands): positive, within 64 bits.
DbId = Annotated[int, Meta(ge=1, le=INT64_MAX)]
#: A count, size or offset: not negative, within 64 bits.
Count = Annotated[int, Meta(ge=0, le=INT64_MAX)]
