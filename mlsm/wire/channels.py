"""Interactive channels: a shell or a port forward into a running job, as WebSockets.

A channel is one byte stream between a person's tool (CLI, dashboard) and a job, relayed
by the master; nothing listens on a node::

    CLI  --WS /api/v1/jobs/{id}/shell ............-->  master
                                                        | OpenChannel over the command poll
    agent --WS /agent/v1/channels/{channel_id} ----->  master  (the agent dials out)

The master splices the two sockets once the agent's arrives. The same frames flow on both
halves:

- **binary** messages are the stream's bytes (terminal input and output, or a TCP
  connection's bytes), at most :data:`MAX_DATA_FRAME` each;
- **text** messages are :class:`Control` messages in JSON: ``resize`` (rows, cols: the
  person's side to the shell), ``exit`` (the shell's exit status, the node's side to the
  person), ``error`` (a stable mlsm error code and a message: why the channel could not
  open or ended), ``eof`` (a forwarded connection's sender closed its half).

Every refusal (no login, the wrong role, another member's job, a job that is not running,
an agent too old) is an ``error`` message with the error JSON's fields, then a close with
``4000 + HTTP status`` (:func:`close_code`) and ``"<code>: <message>"`` as its reason, so
a client rebuilds the same :mod:`mlsm.errors` class an HTTP call would raise.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from mlsm.wire.ints import Int64

#: Bytes of one binary message (terminal output and forwarded bytes are cut to this).
MAX_DATA_FRAME = 64 << 10
#: The largest message either side accepts (a data frame, or a control message).
MAX_MESSAGE = MAX_DATA_FRAME + 1024
#: A window's rows and columns.
Dim = Annotated[int, Meta(ge=1, le=10_000)]
#: A TCP port inside the job.
Port = Annotated[int, Meta(ge=1, le=65535)]
#: Close codes (RFC 6455 leaves 4000-4999 to applications): 4000 + the HTTP status.
APP_CLOSE_BASE = 4000
#: Closes that mean "ended normally".
NORMAL_CLOSE = 1000
#: The master went away (uvicorn closes open sockets with 1012 on shutdown; 1006: the
#: connection broke without a close).
GOING_AWAY = (1001, 1006, 1011, 1012)

ChannelKind = Literal["shell", "forward"]
TermName = Annotated[str, Meta(max_length=64, pattern=r"^[A-Za-z0-9._+-]*$")]


class OpenChannel(Struct, tag="open_channel", kw_only=True):
    """Master -> agent (command poll): dial ``/agent/v1/channels/{channel_id}`` and connect
    it to job ``job_id``'s shell (``what="shell"``) or to ``port`` inside it."""

    id: Int64
    channel_id: Annotated[str, Meta(min_length=16, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    what: ChannelKind
    job_id: Int64
    attempt: Int64 = 0
    port: Annotated[int, Meta(ge=0, le=65535)] = 0
    rows: Dim = 24
    cols: Dim = 80
    term: TermName = "xterm-256color"
    user: Annotated[str, Meta(max_length=128)] = ""  # who opened it (said in the agent's log)


class Control(Struct, kw_only=True, omit_defaults=True, tag_field="t"):
    """Base of the JSON control messages (tagged by ``t``)."""


class Resize(Control, tag="resize"):
    rows: Dim
    cols: Dim


class Exit(Control, tag="exit"):
    """The shell ended; ``code`` is its exit status (128 + N when signal N killed it)."""

    code: Annotated[int, Meta(ge=0, le=255)] = 0


class Error(Control, tag="error"):
    """Why a channel was refused or ended: the error JSON's fields (mlsm.errors)."""

    code: Annotated[str, Meta(max_length=64)]
    message: Annotated[str, Meta(max_length=4096)]
    details: dict[str, Any] = {}


class Eof(Control, tag="eof"):
    """The sender closed its half of a forwarded connection."""


class Ready(Control, tag="ready"):
    """The node's side is connected (the shell started, the port answered)."""


AnyControl = Resize | Exit | Error | Eof | Ready
#: What a person's tool may send (the master drops anything else it gets from one).
FromPerson = (Resize, Eof)

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(AnyControl).decode


def encode_control(msg: Control) -> str:
    return _encode(msg).decode()


def decode_control(text: str | bytes) -> AnyControl:
    """A control message; raises :class:`msgspec.ValidationError` / ``DecodeError``."""
    return _decode(text)


def close_code(status: int) -> int:
    """The WebSocket close code for an error of HTTP ``status``."""
    return APP_CLOSE_BASE + status if 400 <= status <= 599 else 1011


#: Bytes of a close frame's reason (RFC 6455: 125 bytes of payload, 2 of them the code).
MAX_CLOSE_REASON = 123


def close_reason(code: str, message: str) -> str:
    """``"<error code>: <message>"``, cut to what a close frame carries (UTF-8 safe)."""
    raw = f"{code}: {message}".encode()[:MAX_CLOSE_REASON]
    return raw.decode(errors="ignore")


def parse_close_reason(reason: str) -> tuple[str, str]:
    """(error code, message) of a reason :func:`close_reason` wrote."""
    code, sep, message = reason.partition(": ")
    return (code, message) if sep and code.replace("_", "").isalnum() else ("", reason)


def status_of_close(code: int) -> int | None:
    """The HTTP status a close code carries, or None for a protocol close code."""
    status = code - APP_CLOSE_BASE
    return status if 400 <= status <= 599 else None


class ForwardInfo(Struct, kw_only=True):
    """A port forward someone holds open into a job (``mlsm forward``)."""

    job_id: int
    port: int
    user: str
    local: str = ""  # where it listens on that person's machine, as they said
    opened_at: float = 0.0
    connections: int = 0  # open right now


__all__ = [
    "MAX_DATA_FRAME",
    "MAX_MESSAGE",
    "AnyControl",
    "ChannelKind",
    "Control",
    "Eof",
    "Error",
    "Exit",
    "ForwardInfo",
    "OpenChannel",
    "Ready",
    "Resize",
    "close_code",
    "close_reason",
    "decode_control",
    "encode_control",
    "parse_close_reason",
    "status_of_close",
]
