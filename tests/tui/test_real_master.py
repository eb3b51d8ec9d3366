"""Pilot tests of the dashboard against a real ``mlsm master`` process on loopback."""

from __future__ import annotations

from mlsm.client import Client
from mlsm.errors import UnavailableError
from tests.support.wait import pilot_until
from tests.tui.conftest import RealMaster, assert_screen_safe
from tui.app import MlsmApp
from tui.screens import AdminScreen, JobScreen, JobsScreen
from tui.source import AdminData, MasterSource
from tui.widgets.table import LabTable

#: Between tries of a wait: the app waits for a real master, so the wait does not spin.
PAUSE_S = 0.05


def _rows(app, table_id: str) -> list[str]:
    found = app.screen.query(table_id)
    return [r.key.value for r in found.first(LabTable).ordered_rows] if found else []


async def test_admin_screen_lists_users_and_adds_one(real_master: RealMaster) -> None:
    app = MlsmApp(MasterSource(real_master.url, real_master.token), poll_s=0.5)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot_until(
            pilot,
            lambda: app.conn.state == "live" and app.is_admin,
            "login as admin",
            pause_s=PAUSE_S,
        )
        await pilot.press("4")
        await pilot_until(
            pilot,
            lambda: isinstance(app.screen, AdminScreen) and "admin" in _rows(app, "#users-table"),
            "users",
            pause_s=PAUSE_S,
        )
        await pilot.press("a")
        await pilot.pause()
        await pilot.press(*"zoe", "tab", *"zoe-password-1", "ctrl+s")
        await pilot_until(
            pilot,
            lambda: "zoe" in _rows(app, "#users-table"),
            lambda: f"new user row ({app.screen.query('#problem').first().render()})",
            pause_s=PAUSE_S,
        )
    with Client(real_master.url, real_master.token) as client:
        assert any(u["username"] == "zoe" for u in client.call("GET", "/api/v1/users"))


async def test_audit_tab_shows_verified_chain(real_master: RealMaster) -> None:
    app = MlsmApp(MasterSource(real_master.url, real_master.token), poll_s=0.5)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot_until(pilot, lambda: app.is_admin, "admin role", pause_s=PAUSE_S)
        await pilot.press("4")
        await pilot_until(
            pilot,
            lambda: isinstance(app.screen, AdminScreen) and app.screen.data is not None,
            "admin data",
            pause_s=PAUSE_S,
        )
        app.screen.query_one("TabbedContent").active = "audit"
        await pilot_until(
            pilot,
            lambda: "verified" in str(app.screen.query_one("#verify").render()),
            "verify line",
            pause_s=PAUSE_S,
        )


class _FirstAdminPollFails(MasterSource):
    """The real master, with one injected fault: the first admin poll fails as a master
    that went away would (the check it carried must be asked for again)."""

    failed = False

    async def admin(self, *, verify: bool) -> AdminData:
        if not self.failed:
            self.failed = True
            raise UnavailableError("master unreachable (injected once by the test)")
        return await super().admin(verify=verify)


async def test_the_chain_check_survives_a_failed_poll(real_master: RealMaster) -> None:
    source = _FirstAdminPollFails(real_master.url, real_master.token)
    app = MlsmApp(source, poll_s=0.5)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot_until(pilot, lambda: app.is_admin, "admin role", pause_s=PAUSE_S)
        await pilot.press("4")
        await pilot_until(pilot, lambda: source.failed, "the failed poll", pause_s=PAUSE_S)
        app.screen.query_one("TabbedContent").active = "audit"
        await pilot_until(
            pilot,
            lambda: "verified" in str(app.screen.query_one("#verify").render()),
            lambda: f"verify line ({app.screen.query_one('#verify').render()})",
            pause_s=PAUSE_S,
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
        await pilot_until(pilot, lambda: app.conn.user == "mia", "login as mia", pause_s=PAUSE_S)
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
        await pilot_until(pilot, lambda: app.conn.state == "login", "login dialog", pause_s=PAUSE_S)
        await pilot.press(*"admin", "enter", *"admin-password-1", "enter")
        await pilot_until(
            pilot,
            lambda: app.conn.state == "live" and app.conn.user == "admin",
            "logged in",
            pause_s=PAUSE_S,
        )


async def test_overview_and_jobs_against_real_master(real_master: RealMaster) -> None:
    app = MlsmApp(MasterSource(real_master.url, real_master.token), poll_s=0.5)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot_until(
            pilot, lambda: app.first_data_at is not None, "first data", pause_s=PAUSE_S
        )
        assert "online" in str(app.screen.query_one("#totals").render())
        await pilot.press("2")
        await pilot_until(
            pilot,
            lambda: isinstance(app.screen, JobsScreen) and app.screen.ready,
            "jobs",
            pause_s=PAUSE_S,
        )


async def test_unreachable_master_at_start_is_stale_not_a_crash() -> None:
    from tests.support.procs import free_port

    app = MlsmApp(MasterSource(f"http://127.0.0.1:{free_port()}", "x"), poll_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot_until(pilot, lambda: app.conn.state == "stale", "stale state", pause_s=PAUSE_S)
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
        await pilot_until(
            pilot,
            lambda: (
                isinstance(app.screen, JobsScreen) and set(ids.values()) <= set(app.screen.jobs)
            ),
            "the jobs",
            pause_s=PAUSE_S,
        )
        await pilot.pause()
        text = assert_screen_safe(app)
        for shown in names.values():
            assert shown in text
        app.open_job(ids["t\x1b]0;PWNED\x07"])
        await pilot_until(
            pilot,
            lambda: isinstance(app.screen, JobScreen) and app.screen.job is not None,
            "the job screen",
            pause_s=PAUSE_S,
        )
        await pilot.pause()
        assert 'echo "t\\x1b]0;PWNED\\x07"' in assert_screen_safe(app)
