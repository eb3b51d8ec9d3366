"""The embedded local service: a master on loopback with SQLite plus a local agent.

``mlsm up`` starts both in the background under the user's data dir (``~/.local/share/mlsm``)
with pid files and log files, creates the superadmin on first start (named after the Unix
user, with a random password kept 0600 in ``admin-password``), stores an API token in the
user's credentials, and joins the local agent. Starting twice does not start two: a live
pid whose master answers ``/healthz`` counts as running. ``mlsm down`` stops both; jobs keep
running and are re-adopted by the next ``mlsm up``.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from mlsm.config import DEFAULT_PORT, Settings, credentials_file, load_settings, save_credentials
from mlsm.errors import MlsmError, UnavailableError
from mlsm.wire import api

START_TIMEOUT_S = 30.0
#: Seconds the local master has to answer a health check.
HEALTH_TIMEOUT_S = 2.0
#: Seconds the local agent has to join with the token `mlsm up` makes for it.
AGENT_JOIN_TOKEN_TTL_S = 600.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.1


@dataclass
class LocalPaths:
    root: Path

    @property
    def state(self) -> Path:
        return self.root / "local.json"

    def pid(self, what: str) -> Path:
        return self.root / f"{what}.pid"

    def log(self, what: str) -> Path:
        return self.root / f"{what}.log"

    @property
    def password(self) -> Path:
        return self.root / "admin-password"


def paths(s: Settings) -> LocalPaths:
    return LocalPaths(s.data_path)


def _read_pid(p: Path) -> int | None:
    try:
        pid = int(p.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def _healthy(url: str) -> bool:
    from mlsm.client import Client

    try:
        with Client(url, timeout=httpx.Timeout(HEALTH_TIMEOUT_S)) as c:
            c.auth.health()
    except (MlsmError, ValueError):  # unreachable, an error, or not a master's answer
        return False
    return True


def local_url(s: Settings) -> str:
    """URL of the running embedded master, or ''."""
    lp = paths(s)
    try:
        data = json.loads(lp.state.read_text())
    except (OSError, ValueError):
        return ""
    return str(data.get("url", "")) if _read_pid(lp.pid("master")) else ""


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise UnavailableError("no free port on 127.0.0.1")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _spawn(args: list[str], log: Path, pidfile: Path, env: dict[str, str]) -> int:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlsm", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    pidfile.write_text(str(proc.pid))
    return proc.pid


def _wait(cond: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(POLL_S)
    tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
    raise UnavailableError(
        f"{what} did not come up within {timeout:.0f} s; see {log}"
        + (": " + " | ".join(tail) if tail else "")
    )


def status(s: Settings) -> dict[str, object]:
    lp = paths(s)
    url = local_url(s)
    return {
        "url": url,
        "master_pid": _read_pid(lp.pid("master")),
        "agent_pid": _read_pid(lp.pid("agent")),
        "healthy": bool(url) and _healthy(url),
        "data_dir": str(lp.root),
    }


def up(s: Settings, *, simulate_gpus: str = "", quiet: bool = False) -> str:
    """Start the service if it is not running; returns its URL."""
    from mlsm.client import Client

    lp = paths(s)
    lp.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSM_")}
    url = local_url(s)
    if url and _healthy(url):
        started_master = False
    else:
        port = _free_port(s.port or DEFAULT_PORT)
        url = f"http://127.0.0.1:{port}"
        if not lp.password.exists():
            _write_private(lp.password, secrets.token_urlsafe(18))
        admin = _admin_name()
        menv = dict(env, MLSM_PASSWORD=lp.password.read_text().strip())
        _spawn(
            [
                "master",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(lp.root),
                "--init-admin",
                admin,
            ],
            lp.log("master"),
            lp.pid("master"),
            menv,
        )
        lp.state.write_text(json.dumps({"url": url}))
        _wait(lambda: _healthy(url), START_TIMEOUT_S, "the local master", lp.log("master"))
        started_master = True
    token = _ensure_token(s, url, lp)
    if _read_pid(lp.pid("agent")) is None:
        aenv = dict(env)
        args = [
            "agent",
            "--master",
            url,
            "--data-dir",
            str(lp.root / "agent"),
            "--name",
            socket.gethostname().split(".")[0] or "local",
            # One person's machine: their jobs run as they do (as root too, when they are).
            "--single-user",
        ]
        if not (lp.root / "agent" / "node-secret").exists():
            with Client(url, token) as c:
                jt = c.join_tokens.create(
                    api.JoinTokenCreate(
                        ttl_s=AGENT_JOIN_TOKEN_TTL_S, uses=1, note="embedded local agent"
                    )
                )
            args += ["--join-token", jt.token]
        if simulate_gpus:
            args += ["--simulate-gpus", simulate_gpus]
        _spawn(args, lp.log("agent"), lp.pid("agent"), aenv)
    if not quiet:
        print(
            f"mlsm is {'running' if started_master else 'already running'} at {url} (data in {lp.root})",
            file=sys.stderr,
        )
    return url


def _admin_name() -> str:
    name = "".join(c for c in getpass.getuser().lower() if c.isalnum() or c in "_.-") or "admin"
    return name if name[0].isalpha() or name[0] == "_" else f"u{name}"


def _ensure_token(s: Settings, url: str, lp: LocalPaths) -> str:
    """Reuse the stored token when it works for this master, else log in and store a new one."""
    from mlsm.client import Client

    stored = load_settings()
    if stored.url == url and stored.token:
        try:
            with Client(url, stored.token) as c:
                c.auth.me()
            return stored.token
        except MlsmError:
            pass
    with Client(url) as c:
        reply = c.auth.login(_admin_name(), lp.password.read_text().strip())
    with Client(url, reply.token) as c:
        api_token = c.tokens.create(api.ApiTokenCreate(name="embedded local service")).token
    save_credentials(url, api_token)
    return api_token


def down(s: Settings) -> list[str]:
    lp = paths(s)
    stopped = []
    for what in ("agent", "master"):
        pid = _read_pid(lp.pid(what))
        if pid is None:
            lp.pid(what).unlink(missing_ok=True)
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline and _read_pid(lp.pid(what)) is not None:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(POLL_S)
        if _read_pid(lp.pid(what)) is not None:
            os.kill(pid, signal.SIGKILL)
        lp.pid(what).unlink(missing_ok=True)
        stopped.append(what)
    return stopped


def uses_local(s: Settings) -> bool:
    """True when nothing points at another master (no URL configured, or it is ours)."""
    return not s.url or s.url == local_url(s) or not credentials_file().exists()
