"""Users, roles, tokens and logins through the real ``mlsm`` executable against a real master."""

from __future__ import annotations

import stat
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from mlsm import PROTOCOL_VERSION, __version__
from tests.integration.helpers import (
    ADMIN,
    ADMIN_PASSWORD,
    USER_PASSWORD,
    CliResult,
    Master,
    assert_one_line_error,
    error_of,
    run_cli,
)

Cli = Callable[..., CliResult]
HEAVY_MODULES = ("textual", "litestar", "sqlalchemy", "docker")


def _me(master: Master, token: str) -> httpx.Response:
    return master.request("GET", "/api/v1/auth/me", token=token)


# ------------------------------------------------------------------ login / whoami
def test_login_keeps_a_0600_token_that_works(master: Master, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    res = run_cli(["login", master.url, "--user", ADMIN], home=home, password=ADMIN_PASSWORD)
    assert res.rc == 0, res
    creds = home / ".config" / "mlsm" / "credentials.toml"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    stored = tomllib.loads(creds.read_text())
    assert stored["url"] == master.url
    assert _me(master, stored["token"]).json()["username"] == ADMIN
    who = run_cli(["whoami"], home=home)  # no MLSM_URL / MLSM_TOKEN: the stored login
    assert who.rc == 0, who
    assert who.out.strip() == f"{ADMIN} (superadmin) at {master.url}"


def test_wrong_password_is_one_line(master: Master, tmp_path: Path) -> None:
    res = run_cli(["login", master.url, "--user", ADMIN], home=tmp_path, password="wrong-pass")
    assert_one_line_error(res)
    assert "wrong username or password" in res.err
    assert not (tmp_path / ".config" / "mlsm" / "credentials.toml").exists()


def test_whoami_without_login_is_one_line(master: Master, mlsm_cli: Cli) -> None:
    assert_one_line_error(mlsm_cli(["whoami"]))


# ------------------------------------------------------------------ users and roles
def test_users_lists_everyone(master: Master, mlsm_cli: Cli) -> None:
    name = master.create_user("member")
    res = mlsm_cli(["users"], token=master.admin_token)
    assert res.rc == 0, res
    assert ADMIN in res.out and name in res.out
    assert res.out.splitlines()[0].split()[:2] == ["USER", "ROLE"]


def test_admin_adds_a_member_and_it_can_log_in(
    master: Master, mlsm_cli: Cli, make_user: Callable[..., str]
) -> None:
    admin = make_user("admin")
    res = mlsm_cli(["user", "add", "alice"], token=admin, password="alice-password")
    assert res.rc == 0, res
    assert "user alice added (member)" in res.out
    assert _me(master, master.login("alice", "alice-password")).json()["role"] == "member"


def test_invalid_user_name_names_the_field(master: Master, mlsm_cli: Cli) -> None:
    res = mlsm_cli(["user", "add", "Bad Name"], token=master.admin_token, password=USER_PASSWORD)
    assert_one_line_error(res)
    assert res.err.startswith("mlsm: error: username: "), res


def test_admin_cannot_create_or_promote_admins(
    master: Master, mlsm_cli: Cli, make_user: Callable[..., str]
) -> None:
    admin = make_user("admin")
    member = master.create_user("member")
    for args in (
        ["user", "add", "bob", "--role", "admin"],
        ["user", "add", "bob", "--role", "superadmin"],
        ["user", "set-role", member, "admin"],
    ):
        res = mlsm_cli(args, token=admin, password=USER_PASSWORD)
        assert_one_line_error(res)
        assert "superadmin" in res.err, res
    assert master.request("GET", "/api/v1/users/bob", token=master.admin_token).status_code == 404


def test_superadmin_creates_and_promotes_admins(master: Master, mlsm_cli: Cli) -> None:
    root = master.admin_token
    res = mlsm_cli(["user", "add", "carol", "--role", "admin"], token=root, password=USER_PASSWORD)
    assert res.rc == 0, res
    member = master.create_user("member")
    res = mlsm_cli(["user", "set-role", member, "admin"], token=root)
    assert res.rc == 0, res
    assert f"user {member} is now admin" in res.out
    assert _me(master, master.login(member)).json()["role"] == "admin"


def test_last_superadmin_cannot_be_demoted_or_disabled(master: Master, mlsm_cli: Cli) -> None:
    root = master.admin_token
    for args in (["user", "set-role", ADMIN, "admin"], ["user", "disable", ADMIN]):
        res = mlsm_cli(args, token=root)
        assert_one_line_error(res)
        assert "last superadmin" in res.err, res
    resp = master.request("PATCH", f"/api/v1/users/{ADMIN}", token=root, json={"disabled": True})
    assert resp.status_code == 409
    assert error_of(resp)["code"] == "conflict"
    assert _me(master, root).json()["role"] == "superadmin"


def test_a_disabled_superadmin_can_be_demoted(master: Master, mlsm_cli: Cli) -> None:
    """Only enabled superadmins count: demoting a disabled one leaves root in charge."""
    root = master.admin_token
    second = master.create_user("superadmin")
    assert mlsm_cli(["user", "disable", second], token=root).rc == 0
    res = mlsm_cli(["user", "set-role", second, "member"], token=root)
    assert res.rc == 0, res


def test_disabled_user_token_stops_at_once(
    master: Master, mlsm_cli: Cli, make_user: Callable[..., str]
) -> None:
    token = make_user("member", "dave")
    assert _me(master, token).status_code == 200
    res = mlsm_cli(["user", "disable", "dave"], token=master.admin_token)
    assert res.rc == 0, res
    resp = _me(master, token)
    assert resp.status_code == 401
    assert error_of(resp)["code"] == "unauthenticated"
    assert_one_line_error(mlsm_cli(["whoami"], token=token))


# ------------------------------------------------------------------ API tokens
def test_token_create_list_revoke(
    master: Master, mlsm_cli: Cli, make_user: Callable[..., str]
) -> None:
    session = make_user("member", "erin")
    res = mlsm_cli(["token", "create", "ci-token"], token=session)
    assert res.rc == 0, res
    api_token = res.out.strip()
    assert api_token.startswith("mlsm_a_") and "\n" not in api_token
    assert "shown only this once" in res.err

    who = mlsm_cli(["whoami", "--json"], token=api_token)
    assert who.rc == 0, who
    assert '"token_kind": "api"' in who.out and '"erin"' in who.out

    listed = mlsm_cli(["token", "list", "--json"], token=session)
    assert listed.rc == 0, listed
    import json

    rows = {r["name"]: r for r in json.loads(listed.out)}
    assert "ci-token" in rows
    assert api_token not in listed.out  # the secret is shown once, never listed
    res = mlsm_cli(["token", "revoke", str(rows["ci-token"]["id"])], token=session)
    assert res.rc == 0, res
    assert _me(master, api_token).status_code == 401
    assert_one_line_error(mlsm_cli(["whoami"], token=api_token))


def test_member_cannot_revoke_others_tokens(
    master: Master, mlsm_cli: Cli, make_user: Callable[..., str]
) -> None:
    owner = make_user("member")
    other = make_user("member")
    created = master.request("POST", "/api/v1/tokens", token=owner, json={"name": "mine"}).json()
    res = mlsm_cli(["token", "revoke", str(created["info"]["id"])], token=other)
    assert_one_line_error(res)
    assert _me(master, created["token"]).status_code == 200


# ------------------------------------------------------------------ login rate limits
def _login_from(master: Master, source: str, user: str, password: str) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=30.0) as c:
        return c.post(
            f"{master.url}/api/v1/auth/login", json={"username": user, "password": password}
        )


def test_login_rate_limit_per_user_and_per_client(master_factory: Callable[..., Master]) -> None:
    m = master_factory()
    m.create_user("member", "victim")
    limit = 10  # login_attempts_per_minute's default
    for _ in range(limit):
        assert _login_from(m, "127.0.0.2", "victim", "wrong-pass").status_code == 401
    # per user: another client, even with the right password
    resp = _login_from(m, "127.0.0.3", "victim", USER_PASSWORD)
    assert resp.status_code == 429, resp.text
    err = error_of(resp)
    assert err["code"] == "rate_limited"
    assert err["details"]["retry_after"] > 0
    # per client: another user from the same client
    resp = _login_from(m, "127.0.0.2", ADMIN, ADMIN_PASSWORD)
    assert resp.status_code == 429, resp.text
    # neither limit touches another user on another client
    assert _login_from(m, "127.0.0.4", ADMIN, ADMIN_PASSWORD).status_code == 200
    # the CLI says so in one line
    res = run_cli(["login", m.url, "--user", "victim"], home=m.home, password=USER_PASSWORD)
    assert_one_line_error(res)
    assert "too many failed logins" in res.err


# ------------------------------------------------------------------ fast start
def _imported_modules(*args: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    mods = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":
                mods.add(name)
    assert mods, "no -X importtime output"
    return mods


@pytest.mark.parametrize(
    "args",
    [("-c", "import mlsm.cli"), ("-m", "mlsm", "--help"), ("-m", "mlsm", "--version")],
    ids=["import", "help", "version"],
)
def test_cli_start_imports_nothing_heavy(args: tuple[str, ...]) -> None:
    mods = _imported_modules(*args)
    assert "mlsm.cli" in mods
    heavy = sorted(m for m in mods if m.split(".")[0] in HEAVY_MODULES)
    assert not heavy, heavy


def test_version_prints_version_and_protocol(tmp_path: Path) -> None:
    res = run_cli(["--version"], home=tmp_path)
    assert res.rc == 0, res
    assert res.out.strip() == f"mlsm {__version__} (protocol {PROTOCOL_VERSION})"
