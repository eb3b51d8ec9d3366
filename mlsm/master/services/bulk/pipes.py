"""Relay pipes: one answer of a source agent, streamed through the master to a puller.

The master never reaches a node: to get bytes from one (a tree's manifest, the frames of a
want, a listing of a job's outputs) it opens a pipe::

    pipe = await services.pipes.open(node, w.BulkServe, source=spec, want=want)
    try:
        async for chunk in pipe:          # bytes; raises the source's mlsm error
            ...
    finally:
        pipe.close()                      # always: a puller that goes away aborts the push

:meth:`Pipes.open` allocates a random pipe id, and sends the node ``kind(pipe_id=...,
**fields)`` over its command long-poll (refused with ``Conflict`` when the node is offline
or its agent's protocol predates the command: "agent too old", never a crash). The agent
runs the command and POSTs its answer to ``/agent/v1/bulk/push/{pipe_id}`` as a streaming
body of pipe records (:mod:`mlsm.wire.bulk`); only the node the pipe was opened for may
push into it (``PermissionDenied`` otherwise), and only once.

Memory is bounded, never the disk: the push's data goes through a queue of at most
:data:`PIPE_BUFFER_BYTES` (plus one received chunk); while it is full the push handler
stops reading its body, so TCP holds the source back (a slow puller slows the source, the
master buffers no more). The puller's end: iteration stops at the source's END record;
an ERROR record raises the source's error as the same :mod:`mlsm.errors` class; a body
that breaks off (or never starts) raises :class:`~mlsm.errors.UnavailableError`, which a
puller retries, and a malformed one :class:`~mlsm.errors.TransferFailed`. :meth:`Pipe.close` before the
end aborts the push (its POST is answered with an error, and the agent stops reading its
source). A pipe that sees no byte for ``idle_timeout`` seconds (the agent never pushed,
or stalled; the puller stopped reading) fails on both ends.

Generic: the bytes are opaque, so "serve these frames" and "list a job's outputs" are
only different commands; any command struct with a ``pipe_id`` field can be sent.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from mlsm import COMMAND_SINCE, errors
from mlsm.master.services.livenode import LiveNode
from mlsm.master.services.nodes import NodeRegistry
from mlsm.wire.bulk import PipeKind, PipeReader, decode_error

log = logging.getLogger("mlsm.master.bulk")

PIPE_BUFFER_BYTES = 4 << 20  # data a pipe holds between the source's push and the puller
#: Data handed to the puller at once, of what the pipe holds (never waited for): a push
#: arrives in pieces of what one socket read gave (64-256 KiB), and each piece sent on
#: its own costs the response a few writes; up to this much goes as one.
RELAY_BATCH_BYTES = 1 << 20
PIPE_ID_BYTES = 16  # random bytes of a pipe id (it is no secret: pushes are node-checked)


class PipeClosed(errors.Conflict):
    """The puller went away (or the pipe timed out): the push is not wanted any more."""


class Pipe:
    """One relayed answer (see the module docstring). Iterate it for the bytes."""

    def __init__(self, pipe_id: str, node: LiveNode, idle_timeout: float) -> None:
        self.id = pipe_id
        self.node_id = node.id
        self.node_name = node.name
        self.idle_timeout = idle_timeout
        self.command_id = 0
        self.bytes_in = 0  # data bytes pushed so far
        self.peak_buffered = 0  # most data bytes held at once (the bound's witness)
        self._chunks: deque[memoryview] = deque()
        self._buffered = 0
        self._changed = asyncio.Event()
        self._result: errors.MlsmError | None = None
        self._done = False  # the source's answer is complete (END) or failed
        self._closed = False  # the puller is gone
        self.pushing = False
        self._on_close: list[Any] = []

    # ---------------------------------------------------------------- puller side
    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[bytes]:
        async for pieces in self.batches():
            yield b"".join(pieces)

    async def batches(self) -> AsyncIterator[list[memoryview]]:
        """The answer as lists of pieces of up to :data:`RELAY_BATCH_BYTES` together, of
        what the pipe holds when the puller asks (never waiting to fill one); the caller
        copies them (one join) before its next step."""
        while True:
            if self._chunks:
                pieces = [self._chunks.popleft()]
                size = len(pieces[0])
                while self._chunks and size + len(self._chunks[0]) <= RELAY_BATCH_BYTES:
                    piece = self._chunks.popleft()
                    pieces.append(piece)
                    size += len(piece)
                self._buffered -= size
                self._changed.set()
                yield pieces
                continue
            if self._done:
                if self._result is not None:
                    raise self._result
                return
            if self._closed:
                raise PipeClosed(f"relay pipe {self.id} is closed")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), self.idle_timeout)
            except TimeoutError:
                what = "started sending" if not self.pushing else "sent more"
                self._fail(
                    errors.UnavailableError(
                        f"node {self.node_name} has not {what} for {self.idle_timeout:g} s "
                        "(offline, or its agent stalled)"
                    )
                )

    async def read_all(self, limit: int) -> bytes:
        """The whole answer (a manifest, a listing), at most ``limit`` bytes."""
        out = bytearray()
        async for chunk in self:
            out += chunk
            if len(out) > limit:
                self.close()
                raise errors.PayloadTooLarge(
                    f"node {self.node_name}'s answer is over {limit} bytes"
                )
        return bytes(out)

    def close(self) -> None:
        """The puller is done (or gone): a push still running is aborted."""
        if self._closed:
            return
        self._closed = True
        self._chunks.clear()
        self._buffered = 0
        self._changed.set()
        for cb in self._on_close:
            cb(self)

    @property
    def closed(self) -> bool:
        return self._closed

    # ---------------------------------------------------------------- push side
    def _fail(self, exc: errors.MlsmError) -> None:
        if not self._done:
            self._result = exc
            self._done = True
        self._changed.set()

    async def _put(self, piece: memoryview) -> None:
        while self._buffered >= PIPE_BUFFER_BYTES and not self._closed:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), self.idle_timeout)
            except TimeoutError:
                self._fail(errors.TransferFailed("the puller stopped reading"))
                self.close()
        if self._closed:
            raise PipeClosed(f"relay pipe {self.id}: the puller went away; stop sending")
        self._chunks.append(piece)
        self._buffered += len(piece)
        self.bytes_in += len(piece)
        self.peak_buffered = max(self.peak_buffered, self._buffered)
        self._changed.set()

    async def take_push(self, body: AsyncIterator[bytes]) -> None:
        """Move a push's records into the pipe (the push route's work); returns when the
        answer is complete, raises :class:`PipeClosed` when the puller went away."""
        reader = PipeReader()
        try:
            async for chunk in body:
                if self._closed:
                    raise PipeClosed(f"relay pipe {self.id}: the puller went away; stop sending")
                for kind, data in reader.feed(chunk):
                    if kind is PipeKind.DATA:
                        if data:
                            await self._put(data)
                    elif kind is PipeKind.END:
                        self._done = True
                        self._changed.set()
                    else:
                        self._fail(decode_error(data))
            if not reader.ended:
                self._fail(self._broke_off())
        except errors.TransferFailed as exc:  # a malformed stream
            self._fail(exc)
            raise
        except BaseException:  # the push's connection went away
            self._fail(self._broke_off())
            raise

    def _broke_off(self) -> errors.MlsmError:
        """The source went away mid-answer (its agent stopped, the network broke): worth
        asking again once it is back, so transient for the puller."""
        return errors.UnavailableError(f"node {self.node_name}'s answer broke off midway")


class Pipes:
    """The open relay pipes (see the module docstring)."""

    def __init__(self, nodes: NodeRegistry, idle_timeout: float) -> None:
        self.nodes = nodes
        self.idle_timeout = idle_timeout
        self._open: dict[str, Pipe] = {}

    def __len__(self) -> int:
        return len(self._open)

    async def open(self, node: LiveNode, kind: type[Any], /, **fields: Any) -> Pipe:
        """Send ``kind(pipe_id=..., **fields)`` to ``node``; the pipe its answer comes
        through. Refused when the node is offline or its agent does not know ``kind``."""
        tag = kind.__struct_config__.tag
        since = COMMAND_SINCE.get(tag, 1)
        if node.protocol < since:
            raise errors.Conflict(
                f"the agent on {node.name} is too old for this (it speaks protocol "
                f"{node.protocol}, {tag} needs {since}): upgrade mlsm on that server",
                details={"node": node.name, "protocol": node.protocol, "needs": since},
            )
        if self.nodes.state_of(node) == "offline":
            raise errors.Conflict(f"node {node.name} is offline", details={"node": node.name})
        pipe = Pipe(secrets.token_urlsafe(PIPE_ID_BYTES), node, self.idle_timeout)
        pipe._on_close.append(self._forget)
        self._open[pipe.id] = pipe
        try:
            pipe.command_id = await self.nodes.enqueue(node.id, kind, pipe_id=pipe.id, **fields)
        except BaseException:
            pipe.close()
            raise
        return pipe

    def _forget(self, pipe: Pipe) -> None:
        self._open.pop(pipe.id, None)

    def for_push(self, node: LiveNode, pipe_id: str) -> Pipe:
        """The pipe ``node`` may push into now (once)."""
        pipe = self._open.get(pipe_id)
        if pipe is None:
            raise errors.NotFound(f"no open relay pipe {pipe_id} (ended or timed out)")
        if pipe.node_id != node.id:
            log.warning(
                "node %s pushed into pipe %s of node %s", node.name, pipe_id, pipe.node_name
            )
            raise errors.PermissionDenied(f"relay pipe {pipe_id} is not for node {node.name}")
        if pipe.pushing:
            raise errors.Conflict(f"relay pipe {pipe_id} is already being pushed")
        pipe.pushing = True
        return pipe


async def answer_stream(pipe: Pipe) -> AsyncIterator[bytes]:
    """``pipe``'s bytes for a streaming response, once its first chunk came: a refusal of
    the source (its error record) raises here, before the response starts, and the pipe
    is closed when the returned iterator ends or is dropped."""
    chunks = aiter(pipe)
    try:
        first = await anext(chunks, b"")
    except BaseException:
        pipe.close()
        raise

    async def stream() -> AsyncIterator[bytes]:
        try:
            if first:
                yield first
            async for chunk in chunks:
                yield chunk
        finally:
            pipe.close()

    return stream()
