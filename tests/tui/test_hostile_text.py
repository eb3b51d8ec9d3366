"""The dashboard shows hostile lab data as text (fake lab, a test double).

Job names, commands, users, node facts, dataset names, audit targets, token notes, log
lines and the master's error messages carry Rich markup (``[/x]`` used to crash the
dashboard), an OSC title sequence (it retitled the terminal), a CSI sequence, a bidi
override and C1 controls. Every screen, dialog and toast is rendered to the bytes Textual
would send the terminal: nothing but Textual's own sequences is in them, and the data is
shown literally, its controls as escapes.
"""

from __future__ import annotations

from textual.widgets import Input

from mlsm import errors
from mlsm.wire import api
from tests.support.wait import pilot_until
from tests.tui.conftest import assert_screen_safe, make_app
from tests.tui.fakes import NOW, FakeSource
from tui.screens import AdminScreen, DatasetsScreen, JobScreen, JobsScreen, NodeScreen
from tui.screens.datasets import DatasetDetail
from tui.widgets.confirm import ConfirmModal
from tui.widgets.forms import FormModal
from tui.widgets.help import HelpScreen
from tui.widgets.logview import LogView

OSC = "\x1b]0;PWNED\x07"
OSC_SHOWN = "\\x1b]0;PWNED\\x07"
EVIL = f"ev{OSC}il\x1b[2J\x9b"
EVIL_SHOWN = f"ev{OSC_SHOWN}il\\x1b[2J\\x9b"
BIDI = "abc\u202edcba"
BIDI_SHOWN = "abc\\u202edcba"
MARKUP_JOB, EVIL_JOB, BIDI_JOB, BOLD_JOB = 200, 201, 202, 203
LOG = (
    f"epoch 1 {OSC} done\n\r 10%|#   |\r 20%|##  |\n\x1b[31mred\x1b[0m and [/x] and \u202erlo\x07\n"
)
LOG_SHOWN = [
    f"epoch 1 {OSC_SHOWN} done",
    " 20%|##  |",
    "red and [/x] and \\u202erlo\\x07",
]


class HostileSource(FakeSource):
    """The fake lab with hostile names everywhere, a hostile log and a hostile refusal."""

    def __init__(self) -> None:
        super().__init__()
        for jid, name, user in (
            (MARKUP_JOB, "[/x]", "alice"),
            (EVIL_JOB, EVIL, EVIL),
            (BIDI_JOB, BIDI, "bob"),
            (BOLD_JOB, "[bold]loud[/bold]", "carol"),
        ):
            self._jobs[jid] = api.Job(
                id=jid,
                name=name,
                user=user,
                state="running",
                argv=["python", "-c", f"print('{EVIL}')", "[/x]"],
                created_at=NOW - 600,
                started_at=NOW - 300,
                gpus=1,
                node="gpu001",
                gpu_indices=[0],
                reason=f"reason {EVIL}",
                log_size=len(LOG),
                history=[api.JobEvent(ts=NOW - 600, state="queued", message=f"by {EVIL}")],
            )
        node = self._nodes["gpu001"]
        node.info.hostname = f"host{OSC}"
        node.info.cpu_model = f"[/x] {BIDI}"
        node.labels = {"rack": EVIL}
        node.gpus[0].sample.name = f"GPU {OSC}"
        node.gpus[0].sample.processes[0].user = EVIL
        node.gpus[0].sample.processes[0].name = f"[/x]{OSC}"
        ds = self._datasets[0]
        ds.name = f"[/x]{BIDI}"
        ds.description = f"about {EVIL}"
        ds.tags = [EVIL]
        ds.copies[0].path = f"/data/{OSC}"
        ds.copies[0].node = f"gpu{OSC}"
        self._transfers[0].dataset = EVIL
        self._users[1].unix_user = EVIL
        self._tokens[0].note = f"[/x] {EVIL}"
        self._audit[0].target = f"{OSC}/api/v1/users"  # a request path
        self._audit[1].actor = BIDI

    async def log(self, job_id: int, offset: int = 0, limit: int = 1 << 20) -> bytes:
        self._check()
        return LOG.encode()[offset:]

    async def cancel(self, ids: list[int]) -> api.CancelResult:
        raise errors.Conflict(f"cannot cancel [/x] {EVIL}")

    async def audit_verify(self) -> api.AuditVerify:
        return api.AuditVerify(ok=False, rows=4, first_broken=2, message=f"row [/x] {EVIL}")


async def test_job_table_shows_markup_escapes_and_bidi_literally() -> None:
    app = make_app(HostileSource())
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("2")
        await pilot_until(
            pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen.jobs, "jobs"
        )
        await pilot.pause()
        text = assert_screen_safe(app)
        assert "[/x]" in text and "[bold]loud[/bold]" in text
        assert BIDI_SHOWN in text
        assert "ev\\x1b]0;PWNE" in text  # the name column cuts the rest


async def test_overview_shows_hostile_users_as_text() -> None:
    app = make_app(HostileSource())
    async with app.run_test(size=(200, 48)) as pilot:
        await pilot_until(pilot, lambda: app.first_data_at is not None, "first data")
        await pilot.pause()
        text = assert_screen_safe(app)
        assert "201:ev\\x1b]0;PWNED" in text  # the node's job list (cut to the column)
        assert f"{EVIL_SHOWN} 1" in text  # GPU use by user in the totals


async def test_job_screen_title_details_and_log_show_data_as_text() -> None:
    app = make_app(HostileSource())
    async with app.run_test(size=(160, 48)) as pilot:
        app.open_job(EVIL_JOB)
        await pilot_until(
            pilot,
            lambda: isinstance(app.screen, JobScreen) and app.screen.job is not None,
            "job details",
        )
        await pilot.pause()
        text = assert_screen_safe(app)
        assert f"Job 201 {EVIL_SHOWN}" in text
        assert f"by {EVIL_SHOWN}" in text  # the history
        assert f'\'{EVIL_SHOWN}\')" "[/x]"' in text  # the command
        await pilot.press("l")
        view = app.screen.query_one(LogView)
        await pilot_until(pilot, lambda: len(view.lines) == len(LOG_SHOWN), "the log")
        await pilot.pause()
        assert list(view.lines) == LOG_SHOWN
        text = assert_screen_safe(app)
        assert LOG_SHOWN[0] in text and LOG_SHOWN[2] in text


async def test_a_markup_name_opens_in_every_view_without_a_crash() -> None:
    app = make_app(HostileSource())
    async with app.run_test(size=(100, 30)) as pilot:
        app.open_job(MARKUP_JOB)
        await pilot_until(
            pilot,
            lambda: isinstance(app.screen, JobScreen) and app.screen.job is not None,
            "job details",
        )
        await pilot.pause()
        assert "Job 200 [/x]" in assert_screen_safe(app)
        await pilot.press("question_mark")
        await pilot_until(pilot, lambda: isinstance(app.screen, HelpScreen), "help")
        assert_screen_safe(app)


async def test_confirm_dialog_and_refusal_toast_show_data_as_text() -> None:
    app = make_app(HostileSource())
    async with app.run_test(size=(160, 48), notifications=True) as pilot:
        await pilot.press("2")
        await pilot_until(
            pilot, lambda: isinstance(app.screen, JobsScreen) and app.screen.jobs, "jobs"
        )
        app.actions.cancel_job(app.screen.jobs[EVIL_JOB])
        await pilot_until(pilot, lambda: isinstance(app.screen, ConfirmModal), "confirm dialog")
        await pilot.pause()
        text = assert_screen_safe(app)
        assert f"Cancel job 201 (ev{OSC_SHOWN}" in text
        await pilot.press("y")
        await pilot_until(pilot, lambda: bool(app.screen.query("Toast")), "the refusal toast")
        await pilot.pause()
        text = assert_screen_safe(app)
        assert "cannot cancel [/x] ev\\x1b]0;PWNED" in text


async def test_node_screen_and_its_help_show_agent_facts_as_text() -> None:
    app = make_app(HostileSource())
    async with app.run_test(size=(160, 48)) as pilot:
        app.open_node("gpu001")
        await pilot_until(
            pilot,
            lambda: isinstance(app.screen, NodeScreen) and app.screen.detail is not None,
            "node detail",
        )
        await pilot_until(pilot, lambda: bool(app.screen.query("GpuPanel")), "GPU panels")
        for _ in range(3):
            await pilot.pause()
        text = assert_screen_safe(app)
        assert f"host{OSC_SHOWN}" in text and f"[/x] {BIDI_SHOWN}" in text
        assert f"rack={EVIL_SHOWN}" in text
        await pilot.press("question_mark")
        await pilot_until(pilot, lambda: isinstance(app.screen, HelpScreen), "help")
        assert "Keys on this screen (Node gpu001)" in assert_screen_safe(app)


async def test_datasets_detail_and_import_form_show_data_as_text() -> None:
    app = make_app(HostileSource())
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("3")
        await pilot_until(
            pilot,
            lambda: isinstance(app.screen, DatasetsScreen) and app.screen.data is not None,
            "datasets",
        )
        await pilot.pause()
        text = assert_screen_safe(app)
        assert f"[/x]{BIDI_SHOWN}" in text
        app.screen.table.move_cursor(row=0)
        await pilot.press("enter")
        await pilot_until(pilot, lambda: isinstance(app.screen, DatasetDetail), "dataset detail")
        await pilot.pause()
        text = assert_screen_safe(app)
        assert f"about {EVIL_SHOWN}" in text and f"/data/{OSC_SHOWN}" in text
        await pilot.press("escape")
        await pilot_until(pilot, lambda: isinstance(app.screen, DatasetsScreen), "back")
        app.screen.table.move_cursor(row=0)
        await pilot.press("i")
        await pilot_until(pilot, lambda: isinstance(app.screen, FormModal), "import form")
        await pilot.pause()
        assert_screen_safe(app)
        # the copy's node name cannot be shown raw in an Input: it is not offered
        assert app.screen.query_one("#f-node", Input).value == ""


async def test_admin_tabs_show_data_as_text() -> None:
    app = make_app(HostileSource())
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("4")
        await pilot_until(
            pilot,
            lambda: isinstance(app.screen, AdminScreen) and app.screen.data is not None,
            "admin data",
        )
        for tab, shown in (
            ("users", EVIL_SHOWN[:8]),
            ("tokens", "[/x] ev\\x1b]0;"),
            ("audit", "\\x1b]0;PWNED"),
        ):
            app.screen.query_one("TabbedContent").active = tab  # type: ignore[attr-defined]
            for _ in range(3):
                await pilot.pause()
            assert shown in assert_screen_safe(app), tab
        assert "BROKEN at row 2: row [/x] ev\\x1b]0;PWNED" in assert_screen_safe(app)


async def test_a_typed_command_echoed_in_a_toast_is_not_markup() -> None:
    app = make_app(HostileSource())
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        await pilot.press("colon", *"[/x]", "enter")
        await pilot_until(pilot, lambda: bool(app.screen.query("Toast")), "the toast")
        await pilot.pause()
        assert "no view '[/x]'" in assert_screen_safe(app)
