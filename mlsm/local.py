"""The embedded local service: a master on loopback with SQLite plus a local agent.

``mlsm up`` starts both in the background under the user's data dir (``~/.local/share/mlsm``)
with pid files and log files, creates the superadmin on first start (named after the Unix
user, with a random password kept 0600 in ``admin-password``), stores an API token in the
user's credentials, and joins the local agent. ``local.json`` remembers the service's URL
and options (``--simulate-gpus``), so a plain ``mlsm up`` (or plain ``mlsm`` after a
reboot) brings back the same service; a changed option restarts the agent with it.

Running means *ours*: the pid in ``master.pid`` is alive, listens on the URL's port, and
answers ``/healthz`` there; any other server on that port is never taken for it. A login
to another master is never replaced silently: ``up`` keeps it aside and ``down`` restores
it. ``mlsm down`` stops both processes; jobs keep running and the next ``up`` re-adopts
them.
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
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from mlsm.config import DEFAULT_PORT, Settings, credentials_file, save_credentials
from mlsm.errors import ConfigError, MlsmError, UnavailableError
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


def aside_credentials() -> Path:
    """Where ``up`` keeps a login to another master while the CLI talks to the local one."""
    return credentials_file().with_name("credentials.before-up.toml")


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


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself holds the listening socket of ``port``: a server of
    someone else on that port is not our master, whatever its ``/healthz`` says."""
    import psutil

    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns)


def _ours(url: str, lp: LocalPaths) -> bool:
    """The master we started serves ``url``: its pid listens on the port and answers."""
    pid = _read_pid(lp.pid("master"))
    port = urlsplit(url).port
    return pid is not None and port is not None and _listens(pid, port) and _healthy(url)


def _state(lp: LocalPaths) -> dict[str, str]:
    try:
        data = json.loads(lp.state.read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def recorded_url(s: Settings) -> str:
    """The URL the local service had when it last ran ('' if it never did), running or not."""
    return _state(paths(s)).get("url", "")


def local_url(s: Settings) -> str:
    """URL of the running embedded master, or ''."""
    lp = paths(s)
    return _state(lp).get("url", "") if _read_pid(lp.pid("master")) else ""


def not_running_hint(s: Settings, url: str) -> str:
    """A line to say when ``url`` is the local service's and it is not running, else ''."""
    if url and url.rstrip("/") == recorded_url(s) and not local_url(s):
        return f"the local mlsm service ({url}) is not running: start it with `mlsm up`"
    return ""


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise UnavailableError("no free port on 127.0.0.1")


def _choose_port(explicit: int | None, preferred: int) -> tuple[int, str]:
    """The port to start on and a note when it is not the one preferred. A port asked for
    with ``--port`` is that port or an error; the usual one moves, and says so."""
    if explicit:
        if not _port_free(explicit):
            raise UnavailableError(
                f"port {explicit} on 127.0.0.1 is in use: choose another with `mlsm up --port N`"
            )
        return explicit, ""
    if _port_free(preferred):
        return preferred, ""
    port = _free_port(0)
    return port, (
        f"port {preferred} on 127.0.0.1 is in use (another program); the local service "
        f"listens on port {port} instead (choose one with `mlsm up --port N`)"
    )


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


def _wait(cond: Callable[[], bool], timeout: float, what: str, log: Path, pidfile: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if _read_pid(pidfile) is None:  # it exited (a port taken meanwhile, a bad setting)
            timeout = 0.0
            break
        time.sleep(POLL_S)
    tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
    said = "exited" if not timeout else f"did not come up within {timeout:.0f} s"
    raise UnavailableError(f"{what} {said}; see {log}" + (": " + " | ".join(tail) if tail else ""))


def status(s: Settings) -> dict[str, object]:
    lp = paths(s)
    url = local_url(s)
    return {
        "url": url,
        "master_pid": _read_pid(lp.pid("master")),
        "agent_pid": _read_pid(lp.pid("agent")),
        "healthy": bool(url) and _ours(url, lp),
        "simulate_gpus": _state(lp).get("simulate_gpus", ""),
        "data_dir": str(lp.root),
    }


@dataclass
class Started:
    """What ``up`` did, for the lines it says."""

    url: str
    master_started: bool = False
    agent_restarted: bool = False
    notes: list[str] = field(default_factory=list)


def up(
    s: Settings,
    *,
    simulate_gpus: str | None = None,
    port: int | None = None,
    quiet: bool = False,
) -> str:
    """Start the service if it is not running (or restart its agent when an option changed);
    returns its URL. ``simulate_gpus=None`` keeps what the service was started with; ``""``
    or ``"none"`` means real GPUs."""
    lp = paths(s)
    lp.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    state = _state(lp)
    gpus = state.get("simulate_gpus", "") if simulate_gpus is None else simulate_gpus.strip()
    gpus = "" if gpus.lower() == "none" else gpus
    url = local_url(s)
    if url and _ours(url, lp):
        done = Started(url)
        if port and port != urlsplit(url).port:
            raise ConfigError(
                f"the local service already runs at {url}: run `mlsm down` first to move it "
                f"to port {port}"
            )
    elif url:
        raise UnavailableError(
            f"the local master (pid {_read_pid(lp.pid('master'))}) does not answer at {url}; "
            f"see {lp.log('master')}, or run `mlsm down` and `mlsm up`"
        )
    else:
        done = _start_master(s, lp, state, port)
    previous_url = state.get("url", "")
    _write_state(lp, {"url": done.url, "simulate_gpus": gpus})
    token = _ensure_token(done, lp, previous_url)
    agent_pid = _read_pid(lp.pid("agent"))
    if agent_pid is not None and state.get("simulate_gpus", "") != gpus:
        _stop(lp, "agent")
        done.agent_restarted = True
        agent_pid = None
    if agent_pid is None:
        _start_agent(done.url, token, lp, gpus)
    if not quiet:
        _say(done, lp, gpus)
    return done.url


def _say(done: Started, lp: LocalPaths, gpus: str) -> None:
    what = "running" if done.master_started else "already running"
    print(f"mlsm is {what} at {done.url} (data in {lp.root})", file=sys.stderr)
    if done.agent_restarted:
        with_gpus = f"simulated GPUs {gpus}" if gpus else "real GPUs (no simulated ones)"
        print(
            f"the local agent restarted with {with_gpus}; running jobs are re-adopted",
            file=sys.stderr,
        )
    for note in done.notes:
        print(note, file=sys.stderr)


def _write_state(lp: LocalPaths, data: dict[str, str]) -> None:
    _write_private(lp.state, json.dumps(data))


def _start_master(s: Settings, lp: LocalPaths, state: dict[str, str], port: int | None) -> Started:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSM_")}
    recorded = urlsplit(state.get("url", "")).port
    chosen, note = _choose_port(port, recorded or s.port or DEFAULT_PORT)
    url = f"http://127.0.0.1:{chosen}"
    if not lp.password.exists():
        _write_private(lp.password, secrets.token_urlsafe(18))
    menv = dict(env, MLSM_PASSWORD=lp.password.read_text().strip())
    _spawn(
        [
            "master",
            "--host",
            "127.0.0.1",
            "--port",
            str(chosen),
            "--data-dir",
            str(lp.root),
            "--init-admin",
            _admin_name(),
        ],
        lp.log("master"),
        lp.pid("master"),
        menv,
    )
    _wait(
        lambda: _ours(url, lp),
        START_TIMEOUT_S,
        "the local master",
        lp.log("master"),
        lp.pid("master"),
    )
    return Started(url, master_started=True, notes=[note] if note else [])


def _start_agent(url: str, token: str, lp: LocalPaths, gpus: str) -> None:
    from mlsm.client import Client

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
    if gpus:
        args += ["--simulate-gpus", gpus]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSM_")}
    _spawn(args, lp.log("agent"), lp.pid("agent"), env)


def _admin_name() -> str:
    name = "".join(c for c in getpass.getuser().lower() if c.isalnum() or c in "_.-") or "admin"
    return name if name[0].isalpha() or name[0] == "_" else f"u{name}"


def _stored_login() -> dict[str, str]:
    try:
        data = tomllib.loads(credentials_file().read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    return {k: str(v) for k, v in data.items()}


def _ensure_token(done: Started, lp: LocalPaths, previous_url: str) -> str:
    """Reuse the stored token when it works for this master, else log in and store a new
    one. A login to another master is kept aside first (``down`` restores it), never lost."""
    from mlsm.client import Client

    url = done.url
    stored = _stored_login()
    if stored.get("url") == url and stored.get("token"):
        try:
            with Client(url, stored["token"]) as c:
                c.auth.me()
            return stored["token"]
        except MlsmError:
            pass
    other = stored.get("url", "")
    if other and other not in (url, previous_url):
        os.replace(credentials_file(), aside_credentials())
        done.notes.append(
            f"your login to {other} is kept aside and comes back with `mlsm down`; "
            f"the CLI now talks to the local service at {url}"
        )
    with Client(url) as c:
        reply = c.auth.login(_admin_name(), lp.password.read_text().strip())
    with Client(url, reply.token) as c:
        api_token = c.tokens.create(api.ApiTokenCreate(name="embedded local service")).token
    save_credentials(url, api_token)
    return api_token


def _stop(lp: LocalPaths, what: str) -> bool:
    """Stop one of the two processes (TERM, then KILL after STOP_TIMEOUT_S)."""
    pid = _read_pid(lp.pid(what))
    if pid is None:
        lp.pid(what).unlink(missing_ok=True)
        return False
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
    return True


@dataclass
class Stopped:
    """What ``down`` did: the processes it stopped and the login it gave back."""

    stopped: list[str]
    restored_url: str = ""


def down(s: Settings) -> Stopped:
    lp = paths(s)
    done = Stopped([what for what in ("agent", "master") if _stop(lp, what)])
    aside = aside_credentials()
    if aside.exists():
        current = _stored_login().get("url", "")
        if not current or current == recorded_url(s):  # the local login: give the other back
            os.replace(aside, credentials_file())
            done.restored_url = _stored_login().get("url", "")
    return done
