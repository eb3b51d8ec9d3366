"""A shell in a container job: ``docker exec`` with a TTY, as the container's own user.

The exec inherits the container's user (the member's uid:gid, set when it was created),
working directory and environment, so the shell sees what the job sees. Its command is
``bash`` when the image has it, else ``sh``. The engine's exec socket carries the terminal
(a TTY exec is not multiplexed); ``exec_resize`` passes window sizes on; the exit status
comes from ``exec_inspect`` once the socket ends. Blocking engine calls run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from mlsm.wire.channels import MAX_DATA_FRAME

SHELL_CMD = ["/bin/sh", "-c", "command -v bash >/dev/null 2>&1 && exec bash -i || exec sh -i"]


class ExecShell:
    """A ``docker exec`` shell (a :class:`~agent.channels.stream.Stream`)."""

    def __init__(self, api: Any, exec_id: str, sock: socket.socket) -> None:
        self.api = api
        self.exec_id = exec_id
        self.sock = sock
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def start(
        cls, client: Any, container_id: str, *, rows: int, cols: int, term: str
    ) -> ExecShell:
        api = client.api

        def create() -> tuple[str, socket.socket]:
            ex = api.exec_create(
                container_id,
                SHELL_CMD,
                stdin=True,
                tty=True,
                environment={"TERM": term or "xterm-256color", "MLSM_SHELL": "1"},
            )
            raw = api.exec_start(ex["Id"], tty=True, socket=True)
            sock = getattr(raw, "_sock", raw)
            with contextlib.suppress(Exception):
                api.exec_resize(ex["Id"], height=rows, width=cols)
            return ex["Id"], sock

        exec_id, sock = await asyncio.to_thread(create)
        sock.setblocking(False)
        return cls(api, exec_id, sock)

    async def read(self) -> bytes:
        try:
            return await self._loop.sock_recv(self.sock, MAX_DATA_FRAME)
        except OSError:
            return b""

    async def write(self, data: bytes) -> None:
        await self._loop.sock_sendall(self.sock, data)

    def resize(self, rows: int, cols: int) -> None:
        def call() -> None:
            with contextlib.suppress(Exception):
                self.api.exec_resize(self.exec_id, height=rows, width=cols)

        self._loop.run_in_executor(None, call)

    def write_eof(self) -> None:
        return None

    async def finish(self) -> int:
        info = await asyncio.to_thread(self.api.exec_inspect, self.exec_id)
        code = info.get("ExitCode")
        return int(code) if isinstance(code, int) and 0 <= code <= 255 else 255

    async def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
