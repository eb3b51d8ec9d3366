"""Users, roles, tokens and logins through the real ``mlsm`` executable against a real master."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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
LIMIT_PER_MINUTE = 10  # login_attempts_per_minute's default
FLOOD_ADDRESSES = 4
FLOOD_TRIES = LIMIT_PER_MINUTE + 1  # per flooding address: one more than its limit
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


def test_a_short_password_is_a_sentence_naming_the_field(master: Master, mlsm_cli: Cli) -> None:
    res = mlsm_cli(["user", "add", "shorty"], token=master.admin_token, password="short")
    assert_one_line_error(res)
    assert res.rc == 2
    assert res.err.strip() == "mlsm: error: password: must be at least 8 characters", res.err
    body = error_of(
        master.request(
            "POST",
            "/api/v1/users",
            token=master.admin_token,
            json={"username": "shorty", "password": "short"},
        )
    )
    assert body["message"] == "password: must be at least 8 characters", body
    assert body["details"]["path"] == "password"


@pytest.mark.parametrize(
    "args",
    [
        ["user", "add", "bob"],
        ["user", "passwd", ADMIN],
        ["node", "remove", "some-node"],
        ["dataset", "rm", "some-data", "--node", "some-node"],
    ],
    ids=["user-add", "user-passwd", "node-remove", "dataset-rm"],
)
def test_a_member_is_refused_before_any_prompt(
    master: Master, mlsm_cli: Cli, make_user: Callable[..., str], args: list[str]
) -> None:
    """No password or confirmation is asked of someone the master would refuse anyway."""
    member = make_user("member")
    res = mlsm_cli(args, token=member)  # no MLSM_PASSWORD, no terminal: a prompt would fail
    assert_one_line_error(res)
    assert "needs the admin role; you are" in res.err and "(member)" in res.err, res.err
    for asked in ("no password given", "confirmation", "aborted"):
        assert asked not in res.err, res.err


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


def _token_list(mlsm_cli: Cli, token: str) -> list[dict[str, Any]]:
    res = mlsm_cli(["token", "list", "--all", "--json"], token=token)
    assert res.rc == 0, res
    rows: list[dict[str, Any]] = json.loads(res.out)
    return rows


def _api_token(master: Master, session: str, name: str) -> tuple[int, str]:
    created = master.request("POST", "/api/v1/tokens", token=session, json={"name": name})
    assert created.status_code == 201, created.text
    return created.json()["info"]["id"], created.json()["token"]


def test_tokens_of_a_higher_role_are_out_of_reach(
    master: Master, mlsm_cli: Cli, make_user: Callable[..., str]
) -> None:
    root_id, root_token = _api_token(master, master.admin_token, "root-ci")
    admin = make_user("admin", "tokadmin")
    admin_id, admin_token = _api_token(master, admin, "admin-ci")
    member = make_user("member", "tokmember")
    member_id, member_token = _api_token(master, member, "member-ci")

    seen = {(r["username"], r["name"]) for r in _token_list(mlsm_cli, admin)}
    assert ("tokmember", "member-ci") in seen and ("tokadmin", "admin-ci") in seen
    assert not [u for u, _ in seen if u == ADMIN], seen  # no superadmin token, not even a session

    res = mlsm_cli(["token", "revoke", str(root_id)], token=admin)
    assert_one_line_error(res)
    assert f"no token {root_id}" in res.err
    resp = master.request("DELETE", f"/api/v1/tokens/{root_id}", token=admin)
    assert resp.status_code == 404 and error_of(resp)["code"] == "not_found"
    assert _me(master, root_token).status_code == 200

    # downwards and level is fine: an admin revokes a member's, the superadmin an admin's
    assert mlsm_cli(["token", "revoke", str(member_id)], token=admin).rc == 0
    assert _me(master, member_token).status_code == 401
    seen = {(r["username"], r["name"]) for r in _token_list(mlsm_cli, master.admin_token)}
    assert ("tokadmin", "admin-ci") in seen and (ADMIN, "root-ci") in seen
    assert mlsm_cli(["token", "revoke", str(admin_id)], token=master.admin_token).rc == 0
    assert _me(master, admin_token).status_code == 401


def test_a_password_reset_by_an_admin_ends_the_users_sessions_at_once(
    master: Master, mlsm_cli: Cli, make_user: Callable[..., str]
) -> None:
    session = make_user("member", "pat")
    _, api_token = _api_token(master, session, "pat-ci")
    assert _me(master, session).status_code == 200  # now in the master's token cache
    admin = make_user("admin")
    res = mlsm_cli(["user", "passwd", "pat"], token=admin, password="pat-new-password")
    assert res.rc == 0, res
    resp = _me(master, session)
    assert resp.status_code == 401 and error_of(resp)["code"] == "unauthenticated"
    assert "sessions ended" in res.out
    assert _me(master, api_token).status_code == 200  # API tokens survive a reset ...
    assert _me(master, master.login("pat", "pat-new-password")).status_code == 200
    with pytest.raises(Exception, match="wrong username or password"):
        master.login("pat", USER_PASSWORD)
    # ... unless the reset says otherwise
    fresh = master.login("pat", "pat-new-password")
    res = mlsm_cli(
        ["user", "passwd", "pat", "--revoke-tokens"], token=admin, password="pat-newer-password"
    )
    assert res.rc == 0, res
    assert _me(master, api_token).status_code == 401
    assert _me(master, fresh).status_code == 401


def test_disabling_ends_sessions_for_good_and_enabling_brings_back_only_api_tokens(
    master: Master, mlsm_cli: Cli, make_user: Callable[..., str]
) -> None:
    session = make_user("member", "quinn")
    _, api_token = _api_token(master, session, "quinn-ci")
    assert _me(master, session).status_code == 200
    assert mlsm_cli(["user", "disable", "quinn"], token=master.admin_token).rc == 0
    assert _me(master, session).status_code == 401
    assert _me(master, api_token).status_code == 401
    assert mlsm_cli(["user", "enable", "quinn"], token=master.admin_token).rc == 0
    assert _me(master, session).status_code == 401  # the session ended; it does not come back
    assert _me(master, api_token).status_code == 200


def test_a_role_change_downward_ends_the_sessions(
    master: Master, mlsm_cli: Cli, make_user: Callable[..., str]
) -> None:
    session = make_user("member", "riley")
    root = master.admin_token
    assert mlsm_cli(["user", "set-role", "riley", "admin"], token=root).rc == 0
    assert _me(master, session).json()["role"] == "admin"  # upward: the session goes on
    assert master.request("GET", "/api/v1/users", token=session).status_code == 200
    assert mlsm_cli(["user", "set-role", "riley", "member"], token=root).rc == 0
    assert _me(master, session).status_code == 401
    assert master.request("GET", "/api/v1/users", token=session).status_code == 401


def test_changing_your_own_password_keeps_this_session_and_ends_the_others(
    master: Master, mlsm_cli: Cli, make_user: Callable[..., str]
) -> None:
    here = make_user("member", "sam")
    elsewhere = master.login("sam")
    _, api_token = _api_token(master, here, "sam-ci")
    for t in (here, elsewhere):
        assert _me(master, t).status_code == 200

    wrong = mlsm_cli(
        ["passwd"], token=here, password="not-my-password", env={"MLSM_NEW_PASSWORD": "x" * 12}
    )
    assert_one_line_error(wrong)
    assert "the current password is wrong" in wrong.err
    assert _me(master, elsewhere).status_code == 200

    new = "sam-new-password"
    res = mlsm_cli(["passwd"], token=here, password=USER_PASSWORD, env={"MLSM_NEW_PASSWORD": new})
    assert res.rc == 0, res
    assert "1 token(s) ended" in res.out
    assert _me(master, here).status_code == 200
    assert _me(master, elsewhere).status_code == 401
    assert _me(master, api_token).status_code == 200
    assert _me(master, master.login("sam", new)).status_code == 200
    rows = [r for r in _rows_of(master, "auth.password") if r["target"] == "user:sam"]
    assert [r["outcome"] for r in rows] == ["denied", "ok"]

    res = mlsm_cli(
        ["passwd", "--revoke-tokens"], token=here, password=new, env={"MLSM_NEW_PASSWORD": new * 2}
    )
    assert res.rc == 0, res
    assert _me(master, api_token).status_code == 401 and _me(master, here).status_code == 200


def _rows_of(master: Master, action: str) -> list[dict[str, Any]]:
    resp = master.request(
        "GET", "/api/v1/audit", token=master.admin_token, params={"action": action}
    )
    assert resp.status_code == 200, resp.text
    rows: list[dict[str, Any]] = resp.json()
    return rows


# ------------------------------------------------------------------ login limits
def _login_from(
    master: Master, source: str, user: str, password: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=30.0) as c:
        return c.post(
            f"{master.url}/api/v1/auth/login",
            json={"username": user, "password": password},
            headers=headers or {},
        )


def test_a_flood_of_wrong_passwords_from_other_addresses_never_locks_out_the_right_one(
    master_factory: Callable[..., Master],
) -> None:
    m = master_factory()
    m.create_user("member", "victim")
    flooders = [f"127.0.0.{i}" for i in range(2, 2 + FLOOD_ADDRESSES)]

    def flood(source: str) -> list[int]:
        users = ("victim", ADMIN)
        return [
            _login_from(m, source, users[i % 2], "wrong-pass").status_code
            for i in range(FLOOD_TRIES)
        ]

    with ThreadPoolExecutor(len(flooders)) as pool:
        codes = [c for got in pool.map(flood, flooders) for c in got]
    assert set(codes) <= {401, 429}, codes
    assert 429 in codes  # each flooding address was slowed down
    # More wrong passwords than any per-user limit could allow, yet the right ones log in.
    assert codes.count(401) > 2 * LIMIT_PER_MINUTE
    for user, password in (("victim", USER_PASSWORD), (ADMIN, ADMIN_PASSWORD)):
        resp = _login_from(m, "127.0.0.99", user, password)
        assert resp.status_code == 200, resp.text
    res = run_cli(["login", m.url, "--user", "victim"], home=m.home, password=USER_PASSWORD)
    assert res.rc == 0, res


def test_guessing_from_one_address_is_refused_per_user_and_per_address(
    master_factory: Callable[..., Master],
) -> None:
    m = master_factory()
    m.create_user("member", "victim")
    # per (user, address): a few failures, then that pair backs off, right password or not
    codes = [_login_from(m, "127.0.0.2", "victim", "wrong-pass").status_code for _ in range(6)]
    assert codes[:5] == [401] * 5 and codes[5] == 429, codes
    resp = _login_from(m, "127.0.0.2", "victim", USER_PASSWORD)
    assert resp.status_code == 429, resp.text
    err = error_of(resp)
    assert err["code"] == "rate_limited" and err["details"]["retry_after"] > 0
    assert "victim from 127.0.0.2" in err["message"]
    # ... while the same user from elsewhere is not held up
    assert _login_from(m, "127.0.0.3", "victim", USER_PASSWORD).status_code == 200
    # per address: failures for many users from one address refuse that address
    for i in range(LIMIT_PER_MINUTE):
        assert _login_from(m, "127.0.0.4", f"nobody{i}", "wrong-pass").status_code == 401
    resp = _login_from(m, "127.0.0.4", ADMIN, ADMIN_PASSWORD)
    assert resp.status_code == 429, resp.text
    assert "from 127.0.0.4" in error_of(resp)["message"]
    assert _login_from(m, "127.0.0.5", ADMIN, ADMIN_PASSWORD).status_code == 200
    # the CLI says so in one line (it connects from 127.0.0.1)
    for i in range(LIMIT_PER_MINUTE):
        assert _login_from(m, "127.0.0.1", f"nobody{i}", "wrong-pass").status_code == 401
    res = run_cli(["login", m.url, "--user", "victim"], home=m.home, password=USER_PASSWORD)
    assert_one_line_error(res)
    assert "too many failed logins" in res.err


def _audit_rows(m: Master, request_id: str) -> list[dict[str, Any]]:
    rows = m.request("GET", "/api/v1/audit", token=m.admin_token, params={"limit": 100_000})
    return [r for r in rows.json() if r["request_id"] == request_id]


def _session_names(m: Master, token: str) -> set[str]:
    rows = m.request("GET", "/api/v1/tokens", token=token).json()
    return {r["name"] for r in rows if r["kind"] == "session"}


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(
    master_factory: Callable[..., Master],
) -> None:
    """No trusted proxies (the default): a local client cannot pick its address."""
    m = master_factory()
    m.create_user("member", "victim")
    for i in range(LIMIT_PER_MINUTE):
        spoof = {"X-Forwarded-For": f"198.51.100.{i}", "Forwarded": f"for=198.51.100.{i}"}
        resp = _login_from(m, "127.0.0.1", f"nobody{i}", "wrong-pass", spoof)
        assert resp.status_code == 401, resp.text
    # the per-address limit counted them all against 127.0.0.1
    spoof = {"X-Forwarded-For": "203.0.113.9", "X-Request-ID": "spoofed-login"}
    resp = _login_from(m, "127.0.0.1", "victim", USER_PASSWORD, spoof)
    assert resp.status_code == 429, resp.text
    assert [r["client"] for r in _audit_rows(m, "spoofed-login")] == ["127.0.0.1"]
    # a login that works is named after the real peer, and so is its request log line
    resp = _login_from(m, "127.0.0.2", "victim", USER_PASSWORD, {**spoof, "X-Request-ID": "ok-1"})
    assert resp.status_code == 200, resp.text
    assert _session_names(m, resp.json()["token"]) == {"login from 127.0.0.2"}
    assert [r["client"] for r in _audit_rows(m, "ok-1")] == ["127.0.0.2"]
    logged = [r for r in m.log_records() if r.get("request_id") == "ok-1"]
    assert [r["client"] for r in logged] == ["127.0.0.2"]


def test_a_trusted_proxys_forwarded_address_is_the_client(
    master_factory: Callable[..., Master],
) -> None:
    m = master_factory(extra_args=("--trusted-proxy", "127.0.0.1", "--trusted-proxy", "10.0.0.0/8"))
    m.create_user("member", "victim")
    cases = {
        # request id: (peer, headers, client the master must name)
        "xff": ("127.0.0.1", {"X-Forwarded-For": "198.51.100.7, 203.0.113.9"}, "203.0.113.9"),
        "xff-chain": (
            "127.0.0.1",
            {"X-Forwarded-For": "198.51.100.7, 203.0.113.10, 10.1.2.3"},
            "203.0.113.10",
        ),
        "forwarded": ("127.0.0.1", {"Forwarded": 'for="[2001:db8::5]:4711";proto=https'}, "2001:db8::5"),
        "untrusted-peer": ("127.0.0.2", {"X-Forwarded-For": "203.0.113.11"}, "127.0.0.2"),
        "garbage": ("127.0.0.1", {"X-Forwarded-For": "203.0.113.12, not-an-ip"}, "127.0.0.1"),
    }  # fmt: skip
    for rid, (peer, headers, want) in cases.items():
        resp = _login_from(m, peer, "victim", USER_PASSWORD, {**headers, "X-Request-ID": rid})
        assert resp.status_code == 200, resp.text
        assert [r["client"] for r in _audit_rows(m, rid)] == [want], rid
        assert _session_names(m, resp.json()["token"]) >= {f"login from {want}"}
    # the per-address limit counts the forwarded address, not the proxy
    for i in range(LIMIT_PER_MINUTE):
        fake = {"X-Forwarded-For": "203.0.113.50"}
        assert _login_from(m, "127.0.0.1", f"nobody{i}", "wrong", fake).status_code == 401
    blocked = _login_from(m, "127.0.0.1", "victim", USER_PASSWORD, fake)
    assert blocked.status_code == 429, blocked.text
    other = {"X-Forwarded-For": "203.0.113.51"}
    assert _login_from(m, "127.0.0.1", "victim", USER_PASSWORD, other).status_code == 200


def test_a_trusted_proxy_that_is_no_address_is_one_line(tmp_path: Path) -> None:
    res = run_cli(
        ["master", "--data-dir", str(tmp_path / "d"), "--trusted-proxy", "proxy.lan"],
        home=tmp_path,
    )
    assert_one_line_error(res)
    assert "trusted_proxies" in res.err and "'proxy.lan'" in res.err


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
