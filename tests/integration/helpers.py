"""Helpers for integration tests: a real ``mlsm master`` process with API helpers, the real
``mlsm`` executable, and raw HTTP. Fixtures built on these live in ``conftest.py``; waiting,
the isolated environment and starting the process itself are ``tests.support``'s."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import msgspec
import pytest

from mlsm.wire import agent as w
from tests.support.env import isolated_env
from tests.support.master import ADMIN, ADMIN_PASSWORD, MLSM, START_TIMEOUT_S, MasterProcess
from tests.support.procs import STOP_TIMEOUT_S

USER_PASSWORD = "user-password-1"
CLI_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 30.0
#: ``@pytest.fixture(scope="module", params=BOTH_DATABASES) def database_kind(request)``
#: in a test module runs its ``master`` on SQLite and on PostgreSQL.
BOTH_DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


class CliResult(NamedTuple):
    rc: int
    out: str
    err: str


def run_cli(
    args: list[str],
    *,
    home: Path,
    url: str | None = None,
    token: str | None = None,
    password: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = CLI_TIMEOUT_S,
) -> CliResult:
    """Run the real ``mlsm`` executable with an isolated HOME; ``(rc, stdout, stderr)``."""
    extra: dict[str, str] = {}
    if url is not None:
        extra["MLSM_URL"] = url
    if token is not None:
        extra["MLSM_TOKEN"] = token
    if password is not None:
        extra["MLSM_PASSWORD"] = password
    full_env = isolated_env(home, **extra)
    full_env.update(env or {})
    cwd = Path(home) / "cwd"  # mlsm submit ships its directory: an empty one, never the repo's
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [MLSM, *args],
        cwd=cwd,
        env=full_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(res: CliResult) -> None:
    """A user mistake: non-zero exit, one readable line on stderr, no traceback."""
    assert res.rc != 0, res
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {res.err!r}"
    assert "Traceback" not in res.err


def error_of(resp: httpx.Response) -> dict[str, Any]:
    """The structured JSON error body ``{"error": {"code", "message", "details"}}``."""
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err, dict)
    assert set(err) == {"code", "message", "details"}, err
    assert isinstance(err["code"], str) and err["code"]
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["details"], dict)
    return err


def agent_error_of(resp: httpx.Response) -> w.AgentError:
    """The MessagePack error body of an agent route."""
    assert resp.headers["content-type"].startswith(w.MSGPACK), resp.headers
    return msgspec.msgpack.decode(resp.content, type=w.AgentError)


class Master(MasterProcess):
    """A real ``mlsm master`` in ``workdir`` (``data/``, ``home/``, ``master.log``), with
    helpers for the API and the CLI as its superadmin ``root``."""

    def __init__(
        self,
        workdir: Path,
        *,
        database_url: str | None = None,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        popen: dict[str, Any] | None = None,
        port: int | None = None,
    ) -> None:
        """``popen``: extra ``subprocess.Popen`` arguments (``umask``, ``preexec_fn``)."""
        super().__init__(
            workdir / "data",
            log_path=workdir / "master.log",
            home=workdir / "home",
            port=port,
            database_url=database_url,
            extra_args=extra_args,
            env=env,
            popen=popen,
        )
        self.workdir = workdir
        self._admin_token: str | None = None
        self._users = 0

    # ------------------------------------------------------------------ API
    @property
    def admin_token(self) -> str:
        """A session token of the superadmin ``root`` (logged in through the typed client)."""
        if self._admin_token is None:
            self._admin_token = self.session_token()
        return self._admin_token

    def request(
        self, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """An HTTP request; method ``WS`` opens a WebSocket (:func:`ws_request`)."""
        headers = dict(kwargs.pop("headers", None) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if method == "WS":
            return ws_request(f"{self.url}{path}", headers)
        return httpx.request(
            method, f"{self.url}{path}", headers=headers, timeout=HTTP_TIMEOUT_S, **kwargs
        )

    def create_user(self, role: str, name: str | None = None) -> str:
        """Create a user with ``role`` (as the superadmin); returns the user name."""
        self._users += 1
        name = name or f"{role[:5]}{self._users}x{os.getpid() % 1000}"
        resp = self.request(
            "POST",
            "/api/v1/users",
            token=self.admin_token,
            json={"username": name, "password": USER_PASSWORD, "role": role},
        )
        assert resp.status_code == 201, resp.text
        return name

    def login(self, name: str, password: str = USER_PASSWORD) -> str:
        return self.session_token(name, password)

    def make_user(self, role: str, name: str | None = None) -> str:
        """Create a user with ``role`` and return a session token of theirs."""
        return self.login(self.create_user(role, name))

    def join_node(self, name: str) -> str:
        """Register a node through the agent protocol; returns its node secret."""
        resp = self.request("POST", "/api/v1/join-tokens", token=self.admin_token, json={"uses": 1})
        assert resp.status_code == 201, resp.text
        req = w.RegisterRequest(protocol=1, join_token=resp.json()["token"], name=name)
        reg = self.request(
            "POST",
            "/agent/v1/register",
            content=msgspec.msgpack.encode(req),
            headers={"Content-Type": w.MSGPACK},
        )
        assert reg.status_code == 200, reg.content
        return msgspec.msgpack.decode(reg.content, type=w.RegisterReply).node_secret

    def cli(self, args: list[str], *, token: str | None = None, **kwargs: Any) -> CliResult:
        """Run ``mlsm`` against this master (``MLSM_URL``; ``MLSM_TOKEN`` when given)."""
        home = kwargs.pop("home", None) or self.workdir / "cli-home"
        home.mkdir(parents=True, exist_ok=True)
        return run_cli(args, home=home, url=self.url, token=token, **kwargs)


def ws_request(url: str, headers: dict[str, str]) -> httpx.Response:
    """Open a WebSocket and read it to its end, as an HTTP answer for the route tables: a
    refusal's ``error`` message is the JSON body and its close code (4000 + status) the
    status; a channel that opened (``ready``) is 101."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    body: dict[str, Any] = {}
    try:
        with connect(
            "ws" + url.removeprefix("http"),
            additional_headers=headers,
            open_timeout=HTTP_TIMEOUT_S,
            close_timeout=HTTP_TIMEOUT_S,
        ) as ws:
            while True:
                msg = ws.recv(timeout=HTTP_TIMEOUT_S)
                if isinstance(msg, str):
                    ctl = json.loads(msg)
                    if ctl.get("t") == "ready":
                        return httpx.Response(101)
                    if ctl.get("t") == "error":
                        ctl.pop("t")
                        ctl.setdefault("details", {})
                        body = {"error": ctl}
    except InvalidStatus as exc:
        return httpx.Response(exc.response.status_code, content=exc.response.body or b"")
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else 1006
        status = code - 4000 if 4400 <= code < 4600 else (200 if code == 1000 else 500)
        return httpx.Response(status, json=body)


def route_table(data_dir: str = "/nonexistent-mlsm-test") -> list[tuple[str, str, Any]]:
    """(method, path template, handler) of every route of the real app.

    OPTIONS (CORS preflight, generated by Litestar for each path) is not an API route. A raw
    ASGI handler declares no methods; the agent protocol's are POST-only, so they count as POST.
    A WebSocket handler (shells and forwards, mlsm.wire.channels) counts as method ``WS``.
    """
    from litestar.handlers import WebsocketRouteHandler

    from mlsm.config import Settings
    from mlsm.master.app import create_app

    app = create_app(Settings(data_dir=data_dir))
    out = []
    for route in app.routes:
        handlers = getattr(route, "route_handlers", None) or [getattr(route, "route_handler")]
        for handler in handlers:
            methods = getattr(handler, "http_methods", None) or ()
            if isinstance(handler, WebsocketRouteHandler):
                methods = ("WS",)
            elif not methods and route.path.startswith("/agent/"):
                methods = ("POST",)
            out.extend((m, route.path, handler) for m in sorted(methods) if m != "OPTIONS")
    return out


__all__ = [
    "ADMIN",
    "ADMIN_PASSWORD",
    "BOTH_DATABASES",
    "CLI_TIMEOUT_S",
    "HTTP_TIMEOUT_S",
    "MLSM",
    "START_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "USER_PASSWORD",
    "CliResult",
    "Master",
    "agent_error_of",
    "assert_one_line_error",
    "error_of",
    "route_table",
    "run_cli",
]
