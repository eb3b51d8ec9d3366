"""A loopback TCP proxy that can be cut, for "the link to the master went down" tests (the
soak's chaos loop and the lease-fence tests): the agent talks to the master through it."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from tests.support.procs import free_port

PROXY_STOP_S = 5.0


class CutProxy:
    """A loopback TCP proxy to the master that can be cut: :meth:`cut` drops every
    connection and black-holes new ones (read and ignored, as behind a dead link),
    :meth:`restore` lets them through again."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._cut = False
        self._conns: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True, name="cut-proxy")
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())
        self._ready.set()
        self.loop.run_forever()

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            if self._cut:
                while await reader.read(65536):
                    pass
                return
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
            self._conns.add(up_w)
            try:
                await asyncio.gather(self._pump(reader, up_w), self._pump(up_r, writer))
            finally:
                self._conns.discard(up_w)
                up_w.transport.abort()
        except OSError:
            pass
        finally:
            self._conns.discard(writer)
            writer.transport.abort()

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.transport.abort()

    def _drop_all(self) -> None:
        for w in list(self._conns):
            w.transport.abort()

    def cut(self) -> None:
        def go() -> None:
            self._cut = True
            self._drop_all()

        self.loop.call_soon_threadsafe(go)

    def restore(self) -> None:
        def go() -> None:
            self._cut = False
            self._drop_all()  # the black-holed ones: the agent reconnects at once

        self.loop.call_soon_threadsafe(go)

    def close(self) -> None:
        """Stop serving, drop every connection, end the loop's tasks and the loop."""

        async def shutdown() -> None:
            self._server.close()
            self._drop_all()  # each connection's task then ends on its own
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            if tasks:
                await asyncio.wait(tasks, timeout=PROXY_STOP_S)
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop)
        self._thread.join(timeout=PROXY_STOP_S)
        if not self._thread.is_alive():
            self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
