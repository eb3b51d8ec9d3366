"""The events of a followed log (``GET /api/v1/jobs/{id}/log/follow``), typed.

The master streams them as server-sent events: the SSE ``event`` field names the kind,
``data`` carries the payload and ``id`` the byte offset of the log after the event, so a
client that lost the stream asks again with ``?offset=`` where it stopped::

    event: log       data: new output (UTF-8 text)    id: offset after it
    event: attempt   data: the new attempt's number   id: 0 (a retry starts a new log)
    event: end       data: the job's final state      id: offset at the end; then the stream closes

:func:`from_sse` and :func:`to_sse` are the one mapping between SSE fields and these
structs; the client (:mod:`mlsm.client.sse`) decodes with it. An event kind added later
is skipped by older clients (``from_sse`` returns ``None``), never an error.
"""

from __future__ import annotations

from typing import ClassVar

from msgspec import Struct

from mlsm.errors import MlsmError


class LogText(Struct, frozen=True, kw_only=True):
    """New output. A line may be split across events; a UTF-8 character never is."""

    EVENT: ClassVar[str] = "log"
    text: str
    offset: int  # bytes of the log up to the end of this output


class AttemptStarted(Struct, frozen=True, kw_only=True):
    """A retry began: the log starts again from byte 0 of the new attempt."""

    EVENT: ClassVar[str] = "attempt"
    attempt: int
    offset: int = 0


class LogEnded(Struct, frozen=True, kw_only=True):
    """The job ended with ``state`` and every byte of its log was sent."""

    EVENT: ClassVar[str] = "end"
    state: str
    offset: int


LogEvent = LogText | AttemptStarted | LogEnded


def from_sse(event: str, data: str, event_id: str) -> LogEvent | None:
    """The typed event of one server-sent event, or ``None`` for a kind this mlsm does not know."""
    if event == LogText.EVENT:
        return LogText(text=data, offset=_number(event_id, "id"))
    if event == AttemptStarted.EVENT:
        return AttemptStarted(attempt=_number(data, "attempt"), offset=_number(event_id, "id"))
    if event == LogEnded.EVENT:
        return LogEnded(state=data, offset=_number(event_id, "id"))
    return None


def to_sse(ev: LogEvent) -> dict[str, str]:
    """The SSE fields of ``ev`` (the dict Litestar's ``ServerSentEvent`` streams)."""
    if isinstance(ev, LogText):
        data = ev.text
    elif isinstance(ev, AttemptStarted):
        data = str(ev.attempt)
    else:
        data = ev.state
    return {"event": ev.EVENT, "data": data, "id": str(ev.offset)}


def _number(text: str, field: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise MlsmError(f"the master sent a log event whose {field} is not a number: {text!r}")
    return int(text)
