"""The embedded default through the real ``mlsm`` executable, in an isolated HOME:
``mlsm up`` starts a master and a local agent in the background, ``mlsm status`` and
``mlsm nodes`` see them, a second ``up`` starts nothing new, ``mlsm down`` stops both."""

from __future__ import annotations

import json
import os
import pty
import signal
import socket
import stat
import subprocess
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.integration.helpers import (
    ADMIN,
    ADMIN_PASSWORD,
    MLSM,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    CliResult,
    Master,
    assert_one_line_error,
    isolated_env,
    run_cli,
)
from tests.support.wait import wait_until

NODE_ONLINE_TIMEOUT_S = 30.0


class Local:
    def __init__(self, home: Path, **env: str) -> None:
        self.home = home
        self.root = home / ".local" / "share" / "mlsm"
        self.creds = home / ".config" / "mlsm" / "credentials.toml"
        self.env = env

    def cli(self, *args: str) -> CliResult:
        return run_cli(list(args), home=self.home, timeout=START_TIMEOUT_S * 2, env=self.env)

    def pid(self, what: str) -> int | None:
        try:
            return int((self.root / f"{what}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def url(self) -> str:
        return str(json.loads((self.root / "local.json").read_text())["url"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_leftovers(loc: Local) -> None:
    """`mlsm down`, and never leave a process behind a failed test."""
    loc.cli("down")
    for what in ("agent", "master"):
        pid = loc.pid(what)
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie whose parent has not reaped it yet is not running
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    home = tmp_path_factory.mktemp("local") / "home"
    home.mkdir()
    # A port of its own, not the usual 8765: another test file's local service (tests run
    # in parallel workers) may hold that one, and this module checks the port is kept.
    loc = Local(home, MLSM_PORT=str(free_port()))
    res = loc.cli("up")
    try:
        assert res.rc == 0, res
        yield loc
    finally:
        stop_leftovers(loc)


@pytest.fixture
def own(tmp_path: Path) -> Iterator[Local]:
    """A local service of this test only, in its own HOME, preferring a port of its own."""
    home = tmp_path / "home"
    home.mkdir()
    loc = Local(home, MLSM_PORT=str(free_port()))
    try:
        yield loc
    finally:
        stop_leftovers(loc)


def test_up_starts_master_and_agent(local: Local) -> None:
    for what in ("master", "agent"):
        pid = local.pid(what)
        assert pid is not None and alive(pid), what
        assert (local.root / f"{what}.log").exists()
    assert httpx.get(f"{local.url()}/healthz", timeout=5).status_code == 200
    assert stat.S_IMODE((local.root / "admin-password").stat().st_mode) == 0o600


def test_up_stores_a_working_token_0600(local: Local) -> None:
    assert stat.S_IMODE(local.creds.stat().st_mode) == 0o600
    creds = tomllib.loads(local.creds.read_text())
    assert creds["url"] == local.url()
    res = local.cli("whoami")
    assert res.rc == 0, res
    assert "(superadmin)" in res.out


def test_status_says_running(local: Local) -> None:
    res = local.cli("status")
    assert res.rc == 0, res
    assert f"running at {local.url()}" in res.out
    assert f"master pid {local.pid('master')}" in res.out
    info = json.loads(local.cli("status", "--json").out)
    assert info["healthy"] is True and info["agent_pid"] == local.pid("agent")


def test_second_up_starts_nothing_new(local: Local) -> None:
    pids = (local.pid("master"), local.pid("agent"))
    url = local.url()
    res = local.cli("up")
    assert res.rc == 0, res
    assert "already running" in res.err
    assert (local.pid("master"), local.pid("agent")) == pids
    assert local.url() == url


def test_nodes_shows_the_local_node_online(local: Local) -> None:
    def online() -> list[dict[str, object]]:
        res = local.cli("nodes", "--json")
        assert res.rc == 0, res
        return [n for n in json.loads(res.out) if n.get("state") == "online"]

    nodes = wait_until(online, NODE_ONLINE_TIMEOUT_S, "the local node online in `mlsm nodes`")
    assert len(nodes) == 1
    table = local.cli("nodes")
    assert table.rc == 0 and "online" in table.out


def test_down_stops_both(local: Local) -> None:
    pids = [local.pid("master"), local.pid("agent")]
    assert all(pids)
    res = local.cli("down")
    assert res.rc == 0, res
    assert "stopped agent and master" in res.out
    assert "running jobs keep running, and the next `mlsm up` re-adopts them" in res.out
    for pid in pids:
        assert pid is not None
        wait_until(lambda p=pid: not alive(p), STOP_TIMEOUT_S, f"pid {pid} gone")
    assert local.pid("master") is None and local.pid("agent") is None
    res = local.cli("status")
    assert res.rc == 0 and "not running" in res.out


def test_a_cli_call_after_down_says_to_run_up(local: Local) -> None:
    assert local.pid("master") is None  # after test_down_stops_both
    res = local.cli("whoami")
    assert_one_line_error(res)
    assert "the local mlsm service" in res.err and "`mlsm up`" in res.err, res.err
    assert "cannot reach" not in res.err


def test_plain_mlsm_after_down_starts_the_service_again(local: Local) -> None:
    """The stored login is the local service's: the dashboard brings the service back."""
    assert local.pid("master") is None
    url = local.url()
    fd, term = pty.openpty()
    proc = subprocess.Popen(
        [MLSM],
        stdin=term,
        stdout=term,
        stderr=term,
        env=isolated_env(local.home, TERM="xterm"),
        start_new_session=True,
    )
    os.close(term)
    drained = threading.Thread(target=_drain, args=(fd,), daemon=True)
    drained.start()
    try:
        wait_until(
            lambda: local.pid("master") is not None and _answers(local.url()),
            START_TIMEOUT_S,
            "the local master started again by plain `mlsm`",
        )
        assert local.url() == url  # the same port: the stored login still works
    finally:
        proc.kill()
        proc.wait()
        os.close(fd)
    res = local.cli("whoami")
    assert res.rc == 0 and "(superadmin)" in res.out, res


def _drain(fd: int) -> None:
    """Read what the dashboard draws, so it never blocks on a full terminal."""
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_up_keeps_a_remote_login_aside_and_down_restores_it(own: Local, master: Master) -> None:
    res = run_cli(["login", master.url, "--user", ADMIN], home=own.home, password=ADMIN_PASSWORD)
    assert res.rc == 0, res
    up = own.cli("up")
    assert up.rc == 0, up
    assert f"your login to {master.url} is kept aside" in up.err, up.err
    assert f"the CLI now talks to the local service at {own.url()}" in up.err
    assert own.cli("whoami").out.strip().endswith(f"at {own.url()}")
    down = own.cli("down")
    assert down.rc == 0, down
    assert f"the CLI talks to {master.url} again" in down.out, down.out
    who = own.cli("whoami")
    assert who.rc == 0 and who.out.strip() == f"{ADMIN} (superadmin) at {master.url}", who


def _node_gpus(loc: Local, agent_pid: int | None) -> list[dict[str, object]] | None:
    """The local node's GPUs once the agent ``agent_pid`` reports them, else None."""
    if agent_pid is None or loc.pid("agent") != agent_pid:
        return None
    res = loc.cli("nodes", "--json")
    nodes = json.loads(res.out) if res.rc == 0 else []
    online = [n for n in nodes if n.get("state") == "online"]
    return online[0].get("gpus") if online else None


def test_a_changed_option_restarts_the_agent_and_is_remembered(own: Local) -> None:
    res = own.cli("up", "--simulate-gpus", "1xT4")
    assert res.rc == 0, res
    first = own.pid("agent")
    gpus = wait_until(lambda: _node_gpus(own, first), NODE_ONLINE_TIMEOUT_S, "one simulated GPU")
    assert len(gpus) == 1
    res = own.cli("up", "--simulate-gpus", "2xA100-80GB")
    assert res.rc == 0, res
    assert "the local agent restarted with simulated GPUs 2xA100-80GB" in res.err, res.err
    second = own.pid("agent")
    assert second is not None and second != first and first is not None and not alive(first)

    def two() -> list[dict[str, object]] | None:
        got = _node_gpus(own, second)
        return got if got is not None and len(got) == 2 else None

    wait_until(two, NODE_ONLINE_TIMEOUT_S, "two simulated GPUs after the restart")
    again = own.cli("up")  # a plain `up` keeps the options: nothing restarts
    assert again.rc == 0 and "restarted" not in again.err, again
    assert own.pid("agent") == second
    info = json.loads(own.cli("status", "--json").out)
    assert info["simulate_gpus"] == "2xA100-80GB"
    assert "local agent:   simulated GPUs 2xA100-80GB" in own.cli("status").out
    own.cli("down")
    back = own.cli("up")  # and after `down` too
    assert back.rc == 0, back
    assert json.loads(own.cli("status", "--json").out)["simulate_gpus"] == "2xA100-80GB"


class _FakeHealth(BaseHTTPRequestHandler):
    """Another program on the port that answers `/healthz` as a master would."""

    def do_GET(self) -> None:
        body = b'{"status":"ok","version":"0.1.0","protocol":2,"database":"sqlite"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def impostor() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHealth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_a_busy_port_is_named_and_another_is_chosen(own: Local, impostor: int) -> None:
    own.env["MLSM_PORT"] = str(impostor)
    res = own.cli("up")
    assert res.rc == 0, res
    url = own.url()
    assert url != f"http://127.0.0.1:{impostor}"
    assert f"port {impostor} on 127.0.0.1 is in use" in res.err, res.err
    assert f"listens on port {url.rsplit(':', 1)[1]} instead" in res.err
    assert own.cli("whoami").rc == 0


def test_a_busy_port_asked_for_is_one_line_with_a_hint(own: Local, impostor: int) -> None:
    res = own.cli("up", "--port", str(impostor))
    assert_one_line_error(res)
    assert f"port {impostor} on 127.0.0.1 is in use" in res.err and "--port" in res.err
    assert own.pid("master") is None


def test_up_never_takes_another_server_on_its_port_for_its_own(own: Local, impostor: int) -> None:
    """The state says the service runs at a port where someone else's server answers
    `/healthz`, with a live pid that is not serving it: never "already running"."""
    own.root.mkdir(parents=True)
    (own.root / "local.json").write_text(json.dumps({"url": f"http://127.0.0.1:{impostor}"}))
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        (own.root / "master.pid").write_text(str(sleeper.pid))
        res = own.cli("up")
        assert_one_line_error(res)
        assert "already running" not in res.err
        assert f"does not answer at http://127.0.0.1:{impostor}" in res.err, res.err
        assert not own.creds.exists()  # no login was tried against the impostor
    finally:
        (own.root / "master.pid").unlink(missing_ok=True)
        sleeper.kill()
        sleeper.wait()
