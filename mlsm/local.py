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

import json
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from mlsm import localprocs
from mlsm.config import DEFAULT_PORT, Settings, credentials_file, save_credentials
from mlsm.errors import ConfigError, MlsmError, UnavailableError
from mlsm.wire import api

START_TIMEOUT_S = 30.0
#: Seconds the local master has to answer a health check.
HEALTH_TIMEOUT_S = 2.0
#: Seconds the local agent has to join with the token `mlsm up` makes for it.
AGENT_JOIN_TOKEN_TTL_S = 600.0


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


def _healthy(url: str) -> bool:
    from mlsm.client import Client

    try:
        with Client(url, timeout=HEALTH_TIMEOUT_S) as c:
            c.auth.health()
    except (MlsmError, ValueError):  # unreachable, an error, or not a master's answer
        return False
    return True


def _ours(url: str, lp: LocalPaths) -> bool:
    """The master we started serves ``url``: its pid listens on the port and answers."""
    pid = localprocs.read_pid(lp.pid("master"))
    port = urlsplit(url).port
    return pid is not None and port is not None and localprocs.listens(pid, port) and _healthy(url)


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
    return _state(lp).get("url", "") if localprocs.read_pid(lp.pid("master")) else ""


def not_running_hint(s: Settings, url: str) -> str:
    """A line to say when ``url`` is the local service's and it is not running, else ''."""
    if url and url.rstrip("/") == recorded_url(s) and not local_url(s):
        return f"the local mlsm service ({url}) is not running: start it with `mlsm up`"
    return ""


def status(s: Settings) -> dict[str, object]:
    lp = paths(s)
    url = local_url(s)
    return {
        "url": url,
        "master_pid": localprocs.read_pid(lp.pid("master")),
        "agent_pid": localprocs.read_pid(lp.pid("agent")),
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
            f"the local master (pid {localprocs.read_pid(lp.pid('master'))}) does not answer at {url}; "
            f"see {lp.log('master')}, or run `mlsm down` and `mlsm up`"
        )
    else:
        done = _start_master(s, lp, state, port)
    previous_url = state.get("url", "")
    _write_state(lp, {"url": done.url, "simulate_gpus": gpus})
    token = _ensure_token(done, lp, previous_url)
    agent_pid = localprocs.read_pid(lp.pid("agent"))
    if agent_pid is not None and state.get("simulate_gpus", "") != gpus:
        localprocs.stop(lp.pid("agent"))
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
    localprocs.write_private(lp.state, json.dumps(data))


def _start_master(s: Settings, lp: LocalPaths, state: dict[str, str], port: int | None) -> Started:
    import secrets  # here, as in _start_agent: every CLI call imports this module

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSM_")}
    recorded = urlsplit(state.get("url", "")).port
    chosen, note = localprocs.choose_port(port, recorded or s.port or DEFAULT_PORT)
    url = f"http://127.0.0.1:{chosen}"
    if not lp.password.exists():
        localprocs.write_private(lp.password, secrets.token_urlsafe(18))
    menv = dict(env, MLSM_PASSWORD=lp.password.read_text().strip())
    localprocs.spawn(
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
    localprocs.wait(
        lambda: _ours(url, lp),
        START_TIMEOUT_S,
        "the local master",
        lp.log("master"),
        lp.pid("master"),
    )
    return Started(url, master_started=True, notes=[note] if note else [])


def _start_agent(url: str, token: str, lp: LocalPaths, gpus: str) -> None:
    import socket

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
    localprocs.spawn(args, lp.log("agent"), lp.pid("agent"), env)


def _admin_name() -> str:
    import getpass

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


@dataclass
class Stopped:
    """What ``down`` did: the processes it stopped and the login it gave back."""

    stopped: list[str]
    restored_url: str = ""


def down(s: Settings) -> Stopped:
    lp = paths(s)
    done = Stopped([what for what in ("agent", "master") if localprocs.stop(lp.pid(what))])
    aside = aside_credentials()
    if aside.exists():
        current = _stored_login().get("url", "")
        if not current or current == recorded_url(s):  # the local login: give the other back
            os.replace(aside, credentials_file())
            done.restored_url = _stored_login().get("url", "")
    return done
