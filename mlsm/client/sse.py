"""The one server-sent-events parser of mlsm: bytes as they arrive in, typed events out.

Incremental: a chunk may end anywhere (inside a line, inside a UTF-8 character), so
memory holds at most one unfinished line. Lines end at ``\\n`` (a ``\\r`` before it is
dropped: the master ends every line with ``\\r\\n``); a blank line ends an event; ``event``,
``data`` and ``id`` fields are read, comments (``:``) and other fields skipped, as the SSE
standard says. Both faces of the client (sync and async) feed the same decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlsm.wire.follow import LogEvent, from_sse


@dataclass(frozen=True, slots=True)
class SseMessage:
    """One event as sent: its kind, its data lines joined by ``\\n``, the last id seen."""

    event: str
    data: str
    id: str


class SseDecoder:
    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[str] = []
        self._id = ""

    def feed(self, chunk: bytes) -> list[SseMessage]:
        """The events that ``chunk`` completes."""
        *lines, self._buf = (self._buf + chunk).split(b"\n")
        out: list[SseMessage] = []
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            if not line:
                if self._data:
                    out.append(
                        SseMessage(self._event or "message", "\n".join(self._data), self._id)
                    )
                self._event, self._data = "", []
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                self._event = value
            elif name == "data":
                self._data.append(value)
            elif name == "id" and "\0" not in value:
                self._id = value
        return out


class LogFollowDecoder:
    """The events of ``GET /api/v1/jobs/{id}/log/follow`` as :mod:`mlsm.wire.follow` structs;
    kinds this mlsm does not know are skipped."""

    def __init__(self) -> None:
        self._sse = SseDecoder()

    def feed(self, chunk: bytes) -> list[LogEvent]:
        events = (from_sse(m.event, m.data, m.id) for m in self._sse.feed(chunk))
        return [e for e in events if e is not None]
