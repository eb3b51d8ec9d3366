"""``s`` on a job's screen: the shell of a running job in the dashboard's terminal.

Textual's headless test driver cannot lend its terminal, so Pilot sees the dashboard say
where to run the shell instead (as in a browser); the real suspend-and-run path is driven
under a real PTY against a real lab in tests/integration/test_shell.py."""

from __future__ import annotations

from tests.support.wait import pilot_until
from tests.tui.conftest import make_app
from tests.tui.fakes import FakeSource
from tui.screens import JobScreen
from tui.shell import shell_argv


def _toasts(app) -> str:
    return " ".join(str(n.message) for n in app._notifications)


async def test_s_without_a_terminal_to_lend_says_where_to_run_the_shell() -> None:
    app = make_app(FakeSource())
    async with app.run_test(size=(160, 48), notifications=True) as pilot:
        app.open_job(100)
        await pilot_until(
            pilot, lambda: isinstance(app.screen, JobScreen) and app.screen.job, "job 100"
        )
        await pilot.press("s")
        await pilot_until(pilot, lambda: "mlsm shell 100" in _toasts(app), "the toast")
        assert "no terminal to lend" in _toasts(app)


async def test_s_on_a_job_that_does_not_run_is_refused() -> None:
    app = make_app(FakeSource())
    async with app.run_test(size=(160, 48), notifications=True) as pilot:
        app.open_job(102)  # queued
        await pilot_until(
            pilot, lambda: isinstance(app.screen, JobScreen) and app.screen.job, "job 102"
        )
        await pilot.press("s")
        await pilot_until(pilot, lambda: "job 102 is queued" in _toasts(app), "the refusal")


async def test_the_job_screen_lists_its_forwards() -> None:
    app = make_app(FakeSource())
    async with app.run_test(size=(160, 48)) as pilot:
        app.open_job(100)
        screen = await pilot_until(
            pilot,
            lambda: isinstance(app.screen, JobScreen) and app.screen.forwards and app.screen,
            "job 100's forwards",
        )
        assert [(f.port, f.connections) for f in screen.forwards] == [(8888, 2), (6006, 0)]


def test_the_shell_runs_as_a_child_mlsm_shell() -> None:
    argv = shell_argv(7)
    assert argv[1:] == ["-m", "mlsm", "shell", "7"]
