"""The one log-follow parser: server-sent events, split anywhere, into typed events."""

from __future__ import annotations

import pytest

from mlsm.client.sse import LogFollowDecoder, SseDecoder, SseMessage
from mlsm.errors import MlsmError
from mlsm.wire.follow import AttemptStarted, LogEnded, LogEvent, LogText, from_sse, to_sse

# What the master's stream looks like (Litestar ends each line with CRLF).
STREAM = (
    "id: 12\r\nevent: log\r\ndata: step 1 \u00e9t\u00e9\r\ndata: step 2\r\n\r\n"
    ": a comment line\r\n\r\n"
    "id: 0\r\nevent: attempt\r\ndata: 2\r\n\r\n"
    "id: 7\r\nevent: gpu-warning\r\ndata: a kind from a newer master\r\n\r\n"
    "id: 20\r\nevent: log\r\ndata: \r\ndata: tail\r\n\r\n"
    "id: 20\r\nevent: end\r\ndata: succeeded\r\n\r\n"
).encode()
EVENTS: list[LogEvent] = [
    LogText(text="step 1 \u00e9t\u00e9\nstep 2", offset=12),
    AttemptStarted(attempt=2, offset=0),
    LogText(text="\ntail", offset=20),
    LogEnded(state="succeeded", offset=20),
]


def _decode(chunks: list[bytes]) -> list[LogEvent]:
    decoder = LogFollowDecoder()
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def test_the_whole_stream_at_once() -> None:
    assert _decode([STREAM]) == EVENTS


def test_split_at_every_byte_the_events_are_the_same() -> None:
    """Inside a field name, a CRLF, a UTF-8 character: a chunk may end anywhere."""
    for cut in range(1, len(STREAM)):
        assert _decode([STREAM[:cut], STREAM[cut:]]) == EVENTS, cut
    assert _decode([STREAM[i : i + 1] for i in range(len(STREAM))]) == EVENTS


def test_an_unfinished_event_waits_for_its_blank_line() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"event: log\ndata: x\nid: 3\n") == []
    assert decoder.feed(b"\n") == [SseMessage(event="log", data="x", id="3")]


def test_an_event_without_a_kind_is_a_message_and_the_id_carries_over() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"id: 5\ndata:x\n\ndata: y\n\n") == [
        SseMessage(event="message", data="x", id="5"),
        SseMessage(event="message", data="y", id="5"),
    ]


@pytest.mark.parametrize("event", EVENTS)
def test_sse_fields_round_trip(event: LogEvent) -> None:
    fields = to_sse(event)
    assert from_sse(fields["event"], fields["data"], fields["id"]) == event


def test_an_unknown_kind_is_skipped_not_an_error() -> None:
    assert from_sse("gpu-warning", "hot", "1") is None


@pytest.mark.parametrize(("event", "data", "event_id"), [("log", "x", ""), ("attempt", "two", "0")])
def test_a_malformed_event_is_one_clear_error(event: str, data: str, event_id: str) -> None:
    with pytest.raises(MlsmError, match="not a number"):
        from_sse(event, data, event_id)
