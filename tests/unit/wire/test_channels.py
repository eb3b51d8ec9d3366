"""The channel frames' own rules (mlsm.wire.channels): control messages, close codes and
reasons, and the bounds a decoder holds a peer to."""

from __future__ import annotations

import msgspec
import pytest

from mlsm.wire import channels as wc


def test_control_messages_round_trip_by_their_tag() -> None:
    for msg in (
        wc.Resize(rows=40, cols=132),
        wc.Exit(code=7),
        wc.Error(code="forbidden", message="no", details={"node": "a"}),
        wc.Eof(),
        wc.Ready(),
    ):
        assert wc.decode_control(wc.encode_control(msg)) == msg


@pytest.mark.parametrize(
    "text",
    [
        '{"t": "resize", "rows": 0, "cols": 80}',
        '{"t": "resize", "rows": 24, "cols": 100000}',
        '{"t": "exit", "code": 300}',
        '{"t": "shell-injection"}',
        '{"rows": 24}',
    ],
)
def test_out_of_bounds_or_unknown_controls_are_refused(text: str) -> None:
    with pytest.raises(msgspec.ValidationError):
        wc.decode_control(text)


def test_close_codes_carry_the_http_status_and_nothing_else() -> None:
    assert wc.close_code(403) == 4403 and wc.status_of_close(4403) == 403
    assert wc.close_code(200) == 1011  # not an error status: a protocol error close
    assert wc.status_of_close(1000) is None and wc.status_of_close(1012) is None


def test_a_close_reason_fits_a_close_frame_even_in_multibyte_text() -> None:
    reason = wc.close_reason("forbidden", "ü" * 200)
    assert len(reason.encode()) <= wc.MAX_CLOSE_REASON
    assert wc.parse_close_reason(reason)[0] == "forbidden"
    assert wc.parse_close_reason("no code here") == ("", "no code here")


def test_an_open_channel_command_bounds_what_the_agent_is_told() -> None:
    dec = msgspec.msgpack.Decoder(wc.OpenChannel)
    good = wc.OpenChannel(id=1, channel_id="a" * 24, what="forward", job_id=3, port=8080)
    assert dec.decode(msgspec.msgpack.encode(good)) == good
    for bad in ({"channel_id": "../../x" * 4}, {"port": 70000}, {"term": "xterm; rm -rf"}):
        raw = msgspec.to_builtins(good) | bad
        with pytest.raises(msgspec.ValidationError):
            dec.decode(msgspec.msgpack.encode(raw))
