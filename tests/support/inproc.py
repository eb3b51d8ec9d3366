"""A real master served by uvicorn inside the test process: :class:`InProcessMaster`.

For tests that must reach the master's services directly (open a relay pipe, read a
pipe's counters) while real agent processes talk to it over loopback HTTP. The master
runs the production app (:func:`mlsm.master.app.create_app`, the guarded h11 protocol) in
a thread with its own event loop; :meth:`InProcessMaster.run` runs a coroutine there.
A :class:`~tests.integration.lab.Lab` can adopt it (:meth:`InProcessMaster.adopt`) and
start its agents against it as usual.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import httpx

from mlsm.config import Settings
from mlsm.master.app import create_app
from mlsm.master.connections import protocol_class
from mlsm.master.server import connection_guard, prepare
from mlsm.master.services.container import Services, services_of
from tests.support.procs import free_port
from tests.support.wait import wait_until

T = TypeVar("T")
START_DEADLINE_S = 30.0
STOP_DEADLINE_S = 15.0


class InProcessMaster:
    def __init__(self, data_dir: Path, *, admin: str, password: str, **settings: Any) -> None:
        self.port = free_port()
        self.settings = Settings(
            data_dir=str(data_dir), host="127.0.0.1", port=self.port, **settings
        )
        self.admin, self.password = admin, password
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.services: Services | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> InProcessMaster:
        import uvicorn

        Path(self.settings.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        asyncio.run(prepare(self.settings, self.admin, self.password))
        guard, _backlog = connection_guard(self.settings)
        app = create_app(self.settings, migrate=False, connection_guard=guard)
        self.services = services_of(app)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            http=protocol_class(guard),
            log_config=None,
            access_log=False,
            lifespan="on",
        )
        self._server = uvicorn.Server(config)

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self._server.serve())
            loop.close()

        self._thread = threading.Thread(target=serve, name="inproc-master", daemon=True)
        self._thread.start()
        wait_until(self._healthy, START_DEADLINE_S, "the in-process master's /healthz")
        return self

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run ``coro`` on the master's event loop; its result."""
        assert self._loop is not None
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def adopt(self, lab: Any) -> None:
        """Make ``lab`` (a :class:`~tests.integration.lab.Lab`) use this master."""
        lab.port = self.port
        lab.token = lab.login(self.admin, self.password)

    def stop(self) -> None:
        if self._server is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.services.nodes.release_polls)  # type: ignore[union-attr]
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_DEADLINE_S)
