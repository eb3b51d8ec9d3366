"""Pilot tests of the dashboard against a real ``mlsm master`` process on loopback."""

from __future__ import annotations

from conftest import RealMaster, assert_screen_safe

from mlsm.client import Client
from tui.app import MlsmApp
from tui.screens import AdminScreen, JobScreen, JobsScreen
from tui.source import MasterSource
from tui.widgets.table import LabTable

UI_DEADLINE_PAUSES = 200


async def wait_for(pilot, condition, what: str) -> None:
    """Pause the app until ``condition()`` holds, with a deadline in pauses."""
    for _ in range(UI_DEADLINE_PAUSES):
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")


def _rows(app, table_id: str) -> list[str]:
    found = app.screen.query(table_id)
    return [r.key.value for r in found.first(LabTable).ordered_rows] if found else []


async def test_admin_screen_lists_users_and_adds_one(real_master: RealMaster) -> None:
    app = MlsmApp(MasterSource(real_master.url, real_master.token), poll_s=0.5)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.conn.state == "live" and app.is_admin, "login as admin")
        await pilot.press("4")
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, AdminScreen) and "admin" in _rows(app, "#users-table"),
            "users",
        )
        await pilot.press("a")
        await pilot.pause()
        await pilot.press(*"zoe", "tab", *"zoe-password-1", "ctrl+s")
        await wait_for(
            pilot,
            lambda: "zoe" in _rows(app, "#users-table"),
            lambda: f"new user row ({app.screen.query('#problem').first().render()})",
        )
    with Client(real_master.url, real_master.token) as client:
        assert any(u["username"] == "zoe" for u in client.call("GET", "/api/v1/users"))


async def test_audit_tab_shows_verified_chain(real_master: RealMaster) -> None:
    app = MlsmApp(MasterSource(real_master.url, real_master.token), poll_s=0.5)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.is_admin, "admin role")
        await pilot.press("4")
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, AdminScreen) and app.screen.data is not None,
            "admin data",
        )
        app.screen.query_one("TabbedContent").active = "audit"
        await wait_for(
            pilot,
            lambda: "verified" in str(app.screen.query_one("#verify").render()),
            "verify line",
        )


async def test_member_sees_no_admin_and_readonly_hides_actions(real_master: RealMaster) -> None:
    with Client(real_master.url, real_master.token) as client:
        client.call(
            "POST",
            "/api/v1/users",
            json={"username": "mia", "password": "mia-password-1", "role": "member"},
        )
        token = client.call(
            "POST", "/api/v1/auth/login", json={"username": "mia", "password": "mia-password-1"}
        )["token"]
    app = MlsmApp(MasterSource(real_master.url, token), readonly=True, poll_s=0.5)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.conn.user == "mia", "login as mia")
        assert not app.is_admin
        await pilot.press("4")
        await pilot.pause()
        assert not isinstance(app.screen, AdminScreen)
        await pilot.press("2")
        await pilot.pause()
        assert isinstance(app.screen, JobsScreen)
        assert not {"submit", "cancel_job"} & {
            b.binding.action for b in app.screen.active_bindings.values()
        }


async def test_bad_token_asks_for_login(real_master: RealMaster) -> None:
    app = MlsmApp(MasterSource(real_master.url, "not-a-token"), poll_s=0.5)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.conn.state == "login", "login dialog")
        await pilot.press(*"admin", "enter", *"admin-password-1", "enter")
        await wait_for(
            pilot, lambda: app.conn.state == "live" and app.conn.user == "admin", "logged in"
        )


async def test_overview_and_jobs_against_real_master(real_master: RealMaster) -> None:
    app = MlsmApp(MasterSource(real_master.url, real_master.token), poll_s=0.5)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.first_data_at is not None, "first data")
        assert "online" in str(app.screen.query_one("#totals").render())
        await pilot.press("2")
        await wait_for(
            pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen.ready, "jobs"
        )


async def test_unreachable_master_at_start_is_stale_not_a_crash() -> None:
    from tests.conftest import free_port

    app = MlsmApp(MasterSource(f"http://127.0.0.1:{free_port()}", "x"), poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.conn.state == "stale", "stale state")
        assert "unreachable" in str(app.screen.query_one("StatusBar").render())


async def test_hostile_job_names_from_a_real_master_show_as_text(real_master: RealMaster) -> None:
    """A job named ``[/x]`` crashed the dashboard, one with an OSC sequence retitled the
    terminal: both are shown as they are, with the job's other fields, on the jobs screen
    and the job's own screen."""
    names = {"[/x]": "[/x]", "t\x1b]0;PWNED\x07": "t\\x1b]0;PWNED\\x07", "a\u202eb": "a\\u202eb"}
    with Client(real_master.url, real_master.token) as client:
        ids = {
            name: client.call("POST", "/api/v1/jobs", json={"argv": ["echo", name], "name": name})[
                "job"
            ]["id"]
            for name in names
        }
    app = MlsmApp(MasterSource(real_master.url, real_master.token), poll_s=0.5)
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.press("2")
        await wait_for(
            pilot,
            lambda: (
                isinstance(app.screen, JobsScreen) and set(ids.values()) <= set(app.screen.jobs)
            ),
            "the jobs",
        )
        await pilot.pause()
        text = assert_screen_safe(app)
        for shown in names.values():
            assert shown in text
        app.open_job(ids["t\x1b]0;PWNED\x07"])
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, JobScreen) and app.screen.job is not None,
            "the job screen",
        )
        await pilot.pause()
        assert 'echo "t\\x1b]0;PWNED\\x07"' in assert_screen_safe(app)
