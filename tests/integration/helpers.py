"""Helpers for integration tests: a real ``mlsm master`` process, the real ``mlsm`` executable,
polling with deadlines, and raw HTTP. Fixtures built on these live in ``conftest.py``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import httpx
import msgspec
import pytest

from mlsm.client import Client
from mlsm.wire import agent as w

T = TypeVar("T")

#: The console script of this environment (the real executable users run).
MLSM = str(Path(sys.executable).with_name("mlsm"))
ADMIN = "root"
ADMIN_PASSWORD = "root-password-1"
USER_PASSWORD = "user-password-1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
CLI_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 30.0
POLL_S = 0.05
#: ``@pytest.fixture(scope="module", params=BOTH_DATABASES) def database_kind(request)``
#: in a test module runs its ``master`` on SQLite and on PostgreSQL.
BOTH_DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def poll(cond: Callable[[], T], timeout: float, what: str) -> T:
    """Call ``cond`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(POLL_S)


def isolated_env(home: Path, **extra: str) -> dict[str, str]:
    """The caller's environment with HOME and the XDG dirs under ``home`` and no MLSM_* settings
    (``MLSM_TEST_*`` kept), plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MLSM_") or k.startswith("MLSM_TEST_")
    }
    env["HOME"] = str(home)
    for var, sub in (
        ("XDG_CONFIG_HOME", ".config"),
        ("XDG_DATA_HOME", ".local/share"),
        ("XDG_STATE_HOME", ".local/state"),
        ("XDG_CACHE_HOME", ".cache"),
    ):
        path = home / sub
        path.mkdir(parents=True, exist_ok=True)
        env[var] = str(path)
    env.update(extra)
    return env


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
    proc = subprocess.run(
        [MLSM, *args],
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


class Master:
    """A real ``mlsm master`` process on a free loopback port, with its own data dir."""

    def __init__(
        self,
        workdir: Path,
        *,
        database_url: str | None = None,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        popen: dict[str, Any] | None = None,
    ) -> None:
        """``popen``: extra ``subprocess.Popen`` arguments (``umask``, ``preexec_fn``)."""
        from tests.conftest import free_port

        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.home = workdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "master.log"
        self.database_url = database_url
        self.extra_args = extra_args
        self.extra_env = env or {}
        self.popen = popen or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._admin_token: str | None = None
        self._users = 0

    # ------------------------------------------------------------------ lifecycle
    def argv(self) -> list[str]:
        args = [MLSM, "master", "--host", "127.0.0.1", "--port", str(self.port)]
        args += ["--data-dir", str(self.data_dir), "--init-admin", ADMIN]
        if self.database_url:
            args += ["--database-url", self.database_url]
        return args + list(self.extra_args)

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process without waiting for it to answer."""
        env = isolated_env(self.home, MLSM_PASSWORD=ADMIN_PASSWORD, **self.extra_env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self.popen,
            )
        return self.proc

    def start(self) -> Master:
        proc = self.spawn()

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"master exited with {proc.returncode} before answering:\n{self.log_tail()}"
                )
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        poll(ready, START_TIMEOUT_S, f"master at {self.url} answering /healthz")
        return self

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL at the deadline; the exit status."""
        return self._end(signal.SIGTERM)

    def kill(self) -> int | None:
        return self._end(signal.SIGKILL)

    def _end(self, sig: int) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
        self.proc = None
        return proc.returncode

    def restart(self) -> Master:
        self.stop()
        return self.start()

    # ------------------------------------------------------------------ reading
    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_records(self) -> list[dict[str, Any]]:
        """The master's JSON log lines (lines that are not JSON are skipped)."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out

    # ------------------------------------------------------------------ API
    @property
    def admin_token(self) -> str:
        """A session token of the superadmin ``root`` (logged in through the typed client)."""
        if self._admin_token is None:
            with Client(self.url) as c:
                self._admin_token = c.login(ADMIN, ADMIN_PASSWORD).token
        return self._admin_token

    def request(
        self, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
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
        with Client(self.url) as c:
            return c.login(name, password).token

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


def route_table(data_dir: str = "/nonexistent-mlsm-test") -> list[tuple[str, str, Any]]:
    """(method, path template, handler) of every route of the real app.

    OPTIONS (CORS preflight, generated by Litestar for each path) is not an API route. A raw
    ASGI handler declares no methods; the agent protocol's are POST-only, so they count as POST.
    """
    from mlsm.config import Settings
    from mlsm.master.app import create_app

    app = create_app(Settings(data_dir=data_dir))
    out = []
    for route in app.routes:
        handlers = getattr(route, "route_handlers", None) or [getattr(route, "route_handler")]
        for handler in handlers:
            methods = getattr(handler, "http_methods", None) or ()
            if not methods and route.path.startswith("/agent/"):
                methods = ("POST",)
            out.extend((m, route.path, handler) for m in sorted(methods) if m != "OPTIONS")
    return out
