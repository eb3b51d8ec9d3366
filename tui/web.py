"""``mlsm web``: the dashboard in a browser, behind the master's login and roles.

Built on textual-serve (the Textual project's own server: aiohttp, xterm.js in the page,
one app process per browser tab). What mlsm adds around it:

- **Login first.** ``/`` and the app's WebSocket ``/ws`` need a web session; without one
  the page is the login form (``/login``), whose password goes to the master's own login
  (``POST /api/v1/auth/login``): the master's rate limits, disabled accounts and audit
  apply, and the web server keeps no passwords.
- **Each tab runs as its user.** The app process a tab gets is ``mlsm ui`` with that
  user's master session token in its *environment* (``MLSM_URL``, ``MLSM_TOKEN``): every
  call it makes is that user's, so the master's roles decide what it shows and allows.
  The token never appears in a URL (nothing lands in a proxy's or the browser's history),
  nor on a command line (which every account on the host can read).
- **The browser holds only a random session id** in an HttpOnly, SameSite=Strict cookie
  (Secure behind HTTPS); the server keeps a SHA-256 of it, the user's name and token, at
  most :data:`MAX_SESSIONS` of them, each for the master's session lifetime at most.
- **Cross-site WebSockets are refused**: the ``Origin`` of ``/ws`` must be this server
  (a page elsewhere cannot drive a logged-in dashboard through the browser's cookie).
- ``POST /logout`` revokes the master session and forgets the web one.

The served app cannot suspend itself for a job's shell (``s``): it says to run
``mlsm shell JOB`` in a terminal instead (:mod:`tui.shell`).
"""

from __future__ import annotations

import hashlib
import html
import logging
import secrets
import shlex
import ssl
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from textual_serve.app_service import AppService
from textual_serve.server import Server, to_int

from mlsm import errors
from mlsm.client import AsyncClient, Verify

log = logging.getLogger("mlsm.web")

COOKIE = "mlsm_web"
#: Web sessions held at once (the oldest goes first).
MAX_SESSIONS = 1000
#: A web session lasts at most this long (the master's session may end it sooner).
SESSION_TTL_S = 12 * 3600.0
#: Bytes of a login form's body.
MAX_FORM_BYTES = 4096
#: The app each tab runs: the dashboard itself.
APP_ARGV = [sys.executable, "-m", "mlsm", "ui"]


@dataclass
class WebSession:
    user: str
    token: str
    created: float


def _digest(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


class Sessions:
    """Web sessions by the SHA-256 of their cookie."""

    def __init__(self, ttl: float = SESSION_TTL_S, limit: int = MAX_SESSIONS) -> None:
        self.ttl = ttl
        self.limit = limit
        self._by_digest: dict[str, WebSession] = {}

    def new(self, user: str, token: str) -> str:
        while len(self._by_digest) >= self.limit:
            self._by_digest.pop(next(iter(self._by_digest)))
        cookie = secrets.token_urlsafe(32)
        self._by_digest[_digest(cookie)] = WebSession(user, token, time.time())
        return cookie

    def get(self, cookie: str | None) -> WebSession | None:
        if not cookie:
            return None
        s = self._by_digest.get(_digest(cookie))
        if s is not None and time.time() - s.created > self.ttl:
            self._by_digest.pop(_digest(cookie), None)
            return None
        return s

    def drop(self, cookie: str | None) -> WebSession | None:
        return self._by_digest.pop(_digest(cookie), None) if cookie else None


class UserAppService(AppService):
    """textual-serve's app process, started with one user's master login."""

    def __init__(self, *args: Any, user_env: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user_env = user_env

    def _build_environment(self, width: int = 80, height: int = 24) -> dict[str, str]:
        env: dict[str, str] = super()._build_environment(width=width, height=height)
        for key in [k for k in env if k.startswith("MLSM_")]:
            del env[key]  # nothing of the server operator's own login reaches a user's app
        env.update(self.user_env)
        return env


_LOGIN_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>mlsm: log in</title>
<style>body{{background:#0c181f;color:#eee;font-family:monospace;display:flex;
justify-content:center;margin-top:15vh}}form{{display:flex;flex-direction:column;gap:.6em;
width:22em}}input,button{{font:inherit;padding:.4em}}.err{{color:#f77}}</style></head>
<body><form method="post" action="/login"><h2>mlsm at {master}</h2>{error}
<input name="username" placeholder="user" autocomplete="username" required autofocus>
<input name="password" type="password" placeholder="password"
 autocomplete="current-password" required>
<button type="submit">Log in</button></form></body></html>
"""


class WebDashboard(Server):
    """textual-serve's server with mlsm's login in front (see the module docstring)."""

    def __init__(
        self,
        master_url: str,
        *,
        verify: Verify = True,
        allow_plain_http: bool = False,
        host: str = "127.0.0.1",
        port: int = 8050,
        public_url: str | None = None,
        tls_cert: str = "",
        tls_key: str = "",
    ) -> None:
        scheme = "https" if tls_cert else "http"
        super().__init__(
            shlex.join(APP_ARGV),
            host=host,
            port=port,
            title="mlsm",
            public_url=public_url or f"{scheme}://{host}:{port}",
        )
        self.master_url = master_url
        self.verify = verify
        self.allow_plain_http = allow_plain_http
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.sessions = Sessions()
        self.secure_cookie = self.public_url.startswith("https://")

    # ------------------------------------------------------------ the aiohttp app
    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        app.router.add_get("/login", self.handle_login_page)
        app.router.add_post("/login", self.handle_login)
        app.router.add_post("/logout", self.handle_logout)
        app.middlewares.append(self._headers)
        return app

    @web.middleware
    async def _headers(self, request: web.Request, handler: Any) -> web.StreamResponse:
        resp: web.StreamResponse = await handler(request)
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        return resp

    def _client(self, token: str = "") -> AsyncClient:
        return AsyncClient(
            self.master_url, token, verify=self.verify, allow_plain_http=self.allow_plain_http
        )

    def _session(self, request: web.Request) -> WebSession | None:
        return self.sessions.get(request.cookies.get(COOKIE))

    async def handle_index(self, request: web.Request) -> Any:
        if self._session(request) is None:
            raise web.HTTPFound("/login")
        return await super().handle_index(request)

    async def handle_login_page(self, request: web.Request, error: str = "") -> web.Response:
        page = _LOGIN_PAGE.format(
            master=html.escape(self.master_url),
            error=f'<p class="err">{html.escape(error)}</p>' if error else "",
        )
        status = 401 if error else 200
        return web.Response(text=page, content_type="text/html", status=status)

    async def handle_login(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
            raise web.HTTPRequestEntityTooLarge(MAX_FORM_BYTES, request.content_length)
        form = await request.post()
        user, password = str(form.get("username", "")), str(form.get("password", ""))
        try:
            async with self._client() as c:
                reply = await c.auth.login(user, password)
        except errors.MlsmError as exc:
            log.info("web login of %r refused: %s", user[:64], exc.message)
            return await self.handle_login_page(request, exc.message)
        cookie = self.sessions.new(user, reply.token)
        resp = web.HTTPFound("/")
        resp.set_cookie(
            COOKIE,
            cookie,
            httponly=True,
            samesite="Strict",
            secure=self.secure_cookie,
            max_age=int(SESSION_TTL_S),
            path="/",
        )
        raise resp

    async def handle_logout(self, request: web.Request) -> web.Response:
        if not self._same_origin(request):
            raise web.HTTPForbidden(text="cross-site request refused")
        s = self.sessions.drop(request.cookies.get(COOKIE))
        if s is not None:
            try:
                async with self._client(s.token) as c:
                    await c.auth.logout()
            except errors.MlsmError as exc:
                log.info("master logout of %s failed: %s", s.user, exc.message)
        resp = web.HTTPFound("/login")
        resp.del_cookie(COOKIE, path="/")
        raise resp

    def _same_origin(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser's cross-site request (browsers always send it there)
        public = urlsplit(self.public_url)
        got = urlsplit(origin)
        return (got.scheme, got.netloc) == (public.scheme, public.netloc) or (
            got.netloc == request.host
        )

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        session = self._session(request)
        if session is None:
            raise web.HTTPUnauthorized(text="log in first: /login")
        if not self._same_origin(request):
            raise web.HTTPForbidden(text="cross-site WebSocket refused")
        websocket = web.WebSocketResponse(heartbeat=15)
        width = to_int(request.query.get("width", "80"), 80)
        height = to_int(request.query.get("height", "24"), 24)
        await websocket.prepare(request)
        app_service = UserAppService(
            self.command,
            write_bytes=websocket.send_bytes,
            write_str=websocket.send_str,
            close=websocket.close,
            download_manager=self.download_manager,
            debug=self.debug,
            user_env={"MLSM_URL": self.master_url, "MLSM_TOKEN": session.token},
        )
        log.info("dashboard for %s opened", session.user)
        try:
            await app_service.start(width, height)
            await self._process_messages(websocket, app_service)
        finally:
            await app_service.stop()
            log.info("dashboard for %s closed", session.user)
        return websocket

    # ------------------------------------------------------------ running
    async def on_startup(self, app: web.Application) -> None:
        log.info("mlsm web: the dashboard of %s on %s", self.master_url, self.public_url)

    def initialize_logging(self) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM."""
        self.initialize_logging()
        ssl_ctx: ssl.SSLContext | None = None
        if self.tls_cert:
            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_ctx.load_cert_chain(self.tls_cert, self.tls_key)
        web.run_app(
            self._make_app(),
            host=self.host,
            port=self.port,
            ssl_context=ssl_ctx,
            print=lambda *args: None,
            access_log=None,
        )
