"""One relayed channel: the agent's socket handed over, then spliced with the person's.

See :mod:`mlsm.master.services.channels` for the whole flow. Bounded: each direction holds
one message at a time (at most :data:`~mlsm.wire.channels.MAX_MESSAGE` bytes, uvicorn's
``ws_max_size``) and reads the next only once the other side took it, so a slow reader
holds back the writer through TCP, never the master's memory. A person's control messages
are checked: only ``resize`` and ``eof`` pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from mlsm import errors
from mlsm.wire import channels as wc

log = logging.getLogger("mlsm.master.channels")


class Socket(Protocol):
    """The part of a Litestar ``WebSocket`` a splice uses."""

    def receive(self) -> Awaitable[Any]: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


@dataclass(eq=False)
class Channel:
    """One relayed stream (see the module docstring)."""

    id: str
    kind: wc.ChannelKind
    job_id: int
    node_id: int
    node_name: str
    user: str
    port: int = 0
    session: bool = False  # the job is a session that ends with its last shell
    opened_at: float = field(default_factory=time.time)
    exit_code: int | None = None
    bytes_in: int = 0  # from the person
    bytes_out: int = 0  # to the person
    end_reason: str = ""
    _agent: asyncio.Future[Socket] = field(default_factory=lambda: asyncio.Future())
    _done: asyncio.Event = field(default_factory=asyncio.Event)
    _ending: str = ""  # set when the master ends the channel (the job ended)
    _person: Socket | None = None

    # ---------------------------------------------------------------- the agent's side
    async def agent_connected(self, ws: Socket) -> None:
        """Hand the agent's socket over, and hold it until the splice is done."""
        if self._agent.done():
            raise errors.Conflict(f"channel {self.id} is already connected")
        self._agent.set_result(ws)
        await self._done.wait()

    async def wait_agent(self, timeout: float) -> Socket:
        try:
            return await asyncio.wait_for(asyncio.shield(self._agent), timeout)
        except TimeoutError:
            raise errors.UnavailableError(
                f"node {self.node_name} did not connect the {self.kind} within {timeout:g} s "
                "(its agent may be busy or cut off from the master)",
                details={"node": self.node_name},
            ) from None

    # ---------------------------------------------------------------- splice
    async def splice(self, person: Socket) -> None:
        """Copy both ways until one side ends; both sockets are closed when it returns."""
        self._person = person
        agent = self._agent.result()
        up = asyncio.create_task(self._person_to_agent(person, agent))
        down = asyncio.create_task(self._agent_to_person(agent, person))
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (up, down):
                t.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            with contextlib.suppress(Exception):
                await agent.close(wc.NORMAL_CLOSE)
            self._done.set()
        code = wc.NORMAL_CLOSE
        if self._ending:
            await self._say(person, errors.Conflict(self._ending))
            code = wc.close_code(errors.Conflict.status)
        with contextlib.suppress(Exception):
            await person.close(code)

    async def _person_to_agent(self, person: Socket, agent: Socket) -> None:
        while True:
            msg = await person.receive()
            if msg["type"] != "websocket.receive":
                self.end_reason = self.end_reason or "the person's side closed"
                return
            data = msg.get("bytes")
            if data is not None:
                self.bytes_in += len(data)
                await agent.send_bytes(data)
                continue
            text = msg.get("text") or ""
            try:
                ctl = wc.decode_control(text)
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.debug("channel %s: dropped a malformed control message", self.id)
                continue
            if isinstance(ctl, wc.FromPerson):
                await agent.send_text(wc.encode_control(ctl))

    async def _agent_to_person(self, agent: Socket, person: Socket) -> None:
        while True:
            msg = await agent.receive()
            if msg["type"] != "websocket.receive":
                if self.exit_code is None and self.kind == "shell" and not self._ending:
                    self._ending = f"the connection to node {self.node_name} was lost"
                self.end_reason = self.end_reason or "the node's side closed"
                return
            data = msg.get("bytes")
            if data is not None:
                self.bytes_out += len(data)
                await person.send_bytes(data)
                continue
            text = msg.get("text") or ""
            try:
                ctl = wc.decode_control(text)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if isinstance(ctl, wc.Exit):
                self.exit_code = ctl.code
            await person.send_text(wc.encode_control(ctl))

    @staticmethod
    async def _say(ws: Socket, exc: errors.MlsmError) -> None:
        with contextlib.suppress(Exception):
            await ws.send_text(wc.encode_control(wc.Error(code=exc.code, message=exc.message)))

    def end(self, why: str) -> None:
        """End the channel from the master's side (the job ended): both sockets close."""
        if not self._ending:
            self._ending = why
        if self._agent.done():
            agent = self._agent.result()
            asyncio.get_running_loop().create_task(_close_quietly(agent))
        else:
            self._agent.set_exception(errors.Conflict(why))
            self._agent.exception()  # retrieved: nobody else may wait for it


async def _close_quietly(ws: Socket) -> None:
    with contextlib.suppress(Exception):
        await ws.close(wc.NORMAL_CLOSE)
