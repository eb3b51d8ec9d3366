"""Shells and port forwards into the jobs this node runs (:mod:`mlsm.wire.channels`).

The master sends :class:`~mlsm.wire.channels.OpenChannel` over the command long-poll; the
agent dials the channel's WebSocket back (it only ever dials out: nothing listens on the
node), connects it to the job (:mod:`agent.channels.pty` for a process job's shell,
:mod:`agent.channels.docker` for a container's, :mod:`agent.channels.forward` for a port)
and pumps bytes until either end closes (:mod:`agent.channels.stream`). A channel that
cannot be connected says why in an ``error`` message (a stopped job, nothing listening).
Each runs as a task of its own, so the command loop is never held up by one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from agent.channels.forward import (
    ForwardError,
    TcpStream,
    connect_in_netns,
    connect_local,
    same_netns,
)
from agent.channels.pty import PtyShell, ShellError, process_job_context
from agent.channels.stream import Stream, pump
from agent.runtimes.base import AdoptRecord
from mlsm.wire import channels as wc

log = logging.getLogger("mlsm.agent.channels")

__all__ = ["ChannelCommands"]


class ChannelCommands:
    """Opens the channels the master asks for (see the module docstring)."""

    def __init__(
        self,
        link: Any,
        record_of: Callable[[int], AdoptRecord | None],
        docker_client: Callable[[], Any],
    ) -> None:
        """``record_of``: the running attempt of a job here; ``docker_client``: the
        engine's client (raises when there is none)."""
        self.link = link
        self.record_of = record_of
        self.docker_client = docker_client
        self._tasks: set[asyncio.Task[None]] = set()

    def install(self, handlers: dict[type, Callable[[Any], Awaitable[None]]]) -> None:
        handlers[wc.OpenChannel] = self.open

    async def open(self, cmd: wc.OpenChannel) -> None:
        task = asyncio.create_task(self._run(cmd))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close_all(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, cmd: wc.OpenChannel) -> None:
        what = f"{cmd.what} {cmd.channel_id[:8]} into job {cmd.job_id} for {cmd.user}"
        try:
            async with self.link.channel(cmd.channel_id) as ws:
                try:
                    stream = await self._connect(cmd)
                except (ShellError, ForwardError) as exc:
                    log.info("%s refused: %s", what, exc)
                    err = wc.Error(code="conflict", message=str(exc))
                    await ws.send(wc.encode_control(err))
                    return
                log.info("%s opened", what)
                await ws.send(wc.encode_control(wc.Ready()))
                try:
                    await pump(ws, stream)
                finally:
                    log.info("%s closed", what)
        except Exception as exc:  # the master went away, refused the socket, ...
            log.info("%s ended: %s: %s", what, type(exc).__name__, exc)

    async def _connect(self, cmd: wc.OpenChannel) -> Stream:
        rec = self.record_of(cmd.job_id)
        if rec is None or rec.attempt != cmd.attempt:
            raise ShellError(f"job {cmd.job_id} does not run on this node now")
        if rec.runtime == "docker":
            return await self._docker(cmd, rec)
        if cmd.what == "shell":
            ctx = await asyncio.to_thread(process_job_context, rec)
            return PtyShell(ctx, rows=cmd.rows, cols=cmd.cols, term=cmd.term)
        uid = rec.uid if rec.uid is not None else -1
        sock = await asyncio.to_thread(connect_local, cmd.port, uid)
        return TcpStream(sock)

    async def _docker(self, cmd: wc.OpenChannel, rec: AdoptRecord) -> Stream:
        from agent.channels.docker import ExecShell

        if not rec.container_id:
            raise ShellError(f"job {cmd.job_id} has no container on this node")
        try:
            client = self.docker_client()
        except Exception as exc:
            raise ShellError(f"the Docker engine is not reachable: {exc}") from exc
        if cmd.what == "shell":
            try:
                return await ExecShell.start(
                    client, rec.container_id, rows=cmd.rows, cols=cmd.cols, term=cmd.term
                )
            except Exception as exc:
                raise ShellError(f"could not exec a shell in the container: {exc}") from exc

        def connect() -> Any:
            try:
                c = client.containers.get(rec.container_id)
                pid = int(c.attrs["State"]["Pid"])
            except Exception as exc:
                raise ForwardError(f"the job's container cannot be read: {exc}") from exc
            if pid <= 0:
                raise ForwardError("the job's container does not run")
            if same_netns(pid):  # the host's network: the account rule of a process job
                uid = rec.uid if rec.uid is not None else -1
                return connect_local(cmd.port, uid)
            return connect_in_netns(pid, cmd.port)

        return TcpStream(await asyncio.to_thread(connect))
