"""The embedded default through the real ``mlsm`` executable, in an isolated HOME:
``mlsm up`` starts a master and a local agent in the background, ``mlsm status`` and
``mlsm nodes`` see them, a second ``up`` starts nothing new, ``mlsm down`` stops both."""

from __future__ import annotations

import json
import os
import signal
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.helpers import (
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    CliResult,
    run_cli,
)
from tests.support.wait import wait_until

NODE_ONLINE_TIMEOUT_S = 30.0


class Local:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.root = home / ".local" / "share" / "mlsm"
        self.creds = home / ".config" / "mlsm" / "credentials.toml"

    def cli(self, *args: str) -> CliResult:
        return run_cli(list(args), home=self.home, timeout=START_TIMEOUT_S * 2)

    def pid(self, what: str) -> int | None:
        try:
            return int((self.root / f"{what}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def url(self) -> str:
        return str(json.loads((self.root / "local.json").read_text())["url"])


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
    loc = Local(home)
    res = loc.cli("up")
    try:
        assert res.rc == 0, res
        yield loc
    finally:
        loc.cli("down")
        for what in ("agent", "master"):  # never leave a process behind a failed test
            pid = loc.pid(what)
            if pid is not None and alive(pid):
                os.kill(pid, signal.SIGKILL)


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
    for pid in pids:
        assert pid is not None
        wait_until(lambda p=pid: not alive(p), STOP_TIMEOUT_S, f"pid {pid} gone")
    assert local.pid("master") is None and local.pid("agent") is None
    res = local.cli("status")
    assert res.rc == 0 and "not running" in res.out
