"""The real master app in-process, reached through the client's transport hook.

No server process and no network: ``create_app`` on a temporary SQLite database with a
superadmin, its lifespan run (migrations, services), and httpx's ``ASGITransport`` in
front of it. The async face uses that transport directly; the sync face reaches the same
app on an anyio portal's event loop (:class:`PortalTransport`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from litestar import Litestar

from mlsm.client import AsyncClient, Client
from mlsm.config import Settings
from mlsm.master.app import create_app
from mlsm.master.server import prepare

ADMIN = "admin"
PASSWORD = "admin-password-1"
#: Any loopback URL: the transport, not the network, carries the requests.
URL = "http://127.0.0.1:8765"


class PortalTransport(httpx.BaseTransport):
    """A sync httpx transport into an ASGI app that runs on ``portal``'s event loop."""

    def __init__(self, portal: BlockingPortal, app: Any) -> None:
        self._portal = portal
        self._asgi = httpx.ASGITransport(app=app)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def run() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
            resp = await self._asgi.handle_async_request(request)
            return resp.status_code, resp.headers.raw, await resp.aread()

        status, headers, content = self._portal.call(run)
        return httpx.Response(status, headers=headers, content=content, request=request)


def _settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=str(tmp_path / "master"))


@asynccontextmanager
async def _running(app: Litestar) -> AsyncIterator[None]:
    """The app's lifespan in a task of its own: pytest-asyncio sets a fixture up and tears
    it down in different tasks, and Litestar's lifespan must end in the task it began in."""
    started, stop = asyncio.Event(), asyncio.Event()

    async def serve() -> None:
        async with app.lifespan():
            started.set()
            await stop.wait()

    task = asyncio.create_task(serve())
    waiting = asyncio.create_task(started.wait())
    await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiting.cancel()
        task.result()  # the start-up failure
    try:
        yield
    finally:
        stop.set()
        await task


@pytest.fixture
async def asgi(tmp_path: Path) -> AsyncIterator[httpx.ASGITransport]:
    """The master app, started, behind a transport for :class:`AsyncClient`."""
    settings = _settings(tmp_path)
    await prepare(settings, ADMIN, PASSWORD)
    app = create_app(settings)
    async with _running(app):
        yield httpx.ASGITransport(app=app)


@pytest.fixture
async def aclient(asgi: httpx.ASGITransport) -> AsyncIterator[AsyncClient]:
    """The async face, logged in as the superadmin."""
    async with AsyncClient(URL, transport=asgi) as c:
        c.token = (await c.auth.login(ADMIN, PASSWORD)).token
        yield c


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[PortalTransport]:
    """The master app, started on a portal's loop, behind a transport for :class:`Client`."""
    settings = _settings(tmp_path)
    with start_blocking_portal() as portal:
        portal.call(prepare, settings, ADMIN, PASSWORD)
        app = portal.call(create_app, settings)
        with portal.wrap_async_context_manager(app.lifespan()):
            yield PortalTransport(portal, app)


@pytest.fixture
def client(transport: PortalTransport) -> Iterator[Client]:
    """The sync face, logged in as the superadmin."""
    with Client(URL, transport=transport) as c:
        c.token = c.auth.login(ADMIN, PASSWORD).token
        yield c
