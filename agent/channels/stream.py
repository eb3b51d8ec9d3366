"""What a channel connects to on the node, and the pump between it and the master's socket.

A :class:`Stream` is the node's end of a channel: a shell's terminal (a PTY, or a
``docker exec`` socket) or a forwarded TCP connection. :func:`pump` copies bytes both ways
between it and the agent's WebSocket to the master, one message at a time (reading the
next only once the last was written, so each direction holds at most one
:data:`~mlsm.wire.channels.MAX_DATA_FRAME`), hands ``resize`` to the stream, and, when the
stream ends, sends its exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

import msgspec

from mlsm.wire import channels as wc

log = logging.getLogger("mlsm.agent.channels")


class Stream(Protocol):
    """The node's end of a channel."""

    async def read(self) -> bytes:
        """Up to MAX_DATA_FRAME bytes; b"" at the end."""
        ...

    async def write(self, data: bytes) -> None: ...

    def resize(self, rows: int, cols: int) -> None: ...

    def write_eof(self) -> None:
        """The person closed their half (a forwarded connection)."""
        ...

    async def finish(self) -> int | None:
        """After the end of output: the exit status (a shell), or None (a connection)."""
        ...

    async def close(self) -> None:
        """End it now (and whatever the shell left running)."""
        ...


class Socket(Protocol):
    """The part of a ``websockets`` client connection the pump uses."""

    async def recv(self) -> str | bytes: ...

    async def send(self, message: str | bytes) -> None: ...


async def pump(ws: Socket, stream: Stream) -> None:
    """Copy until the stream ends (then send its exit status) or the socket closes."""
    down = asyncio.create_task(_stream_to_socket(ws, stream))
    up = asyncio.create_task(_socket_to_stream(ws, stream))
    try:
        done, _ = await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
        if down in done and down.exception() is None:
            code = await stream.finish()
            if code is not None:
                await ws.send(wc.encode_control(wc.Exit(code=code)))
    finally:
        for t in (up, down):
            t.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
        with contextlib.suppress(Exception):
            await stream.close()


async def _stream_to_socket(ws: Socket, stream: Stream) -> None:
    while data := await stream.read():
        await ws.send(data)


async def _socket_to_stream(ws: Socket, stream: Stream) -> None:
    while True:
        msg: Any = await ws.recv()
        if isinstance(msg, bytes):
            await stream.write(msg)
            continue
        try:
            ctl = wc.decode_control(msg)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if isinstance(ctl, wc.Resize):
            stream.resize(ctl.rows, ctl.cols)
        elif isinstance(ctl, wc.Eof):
            stream.write_eof()
