"""Pilot tests of the dashboard's behaviour over the fake lab (test double)."""

from __future__ import annotations

from textual.widgets import Input, Select

from tests.tui.conftest import make_app
from tests.tui.fakes import FakeSource
from tui.screens import (
    AdminScreen,
    DatasetsScreen,
    JobScreen,
    JobsScreen,
    NodeScreen,
    OverviewScreen,
)
from tui.widgets.confirm import ConfirmModal
from tui.widgets.forms import FormModal, SubmitForm, validate_submit
from tui.widgets.help import HelpScreen
from tui.widgets.logview import LogView
from tui.widgets.table import LabTable


async def settle(pilot, times: int = 3) -> None:
    for _ in range(times):
        await pilot.pause()


def rows(app, table_id: str) -> list[str]:
    table = app.screen.query_one(table_id, LabTable)
    return [row.key.value for row in table.ordered_rows]


async def test_overview_lists_every_node_and_totals(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, OverviewScreen)
        assert rows(app, "#nodes") == ["gpu001", "gpu002", "gpu003", "gpu004"]
        assert "3/4 online" in str(app.screen.query_one("#totals").render())


async def test_overview_updates_rows_by_key(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        table = app.screen.query_one("#nodes", LabTable)
        table.move_cursor(row=1)
        del fake._nodes["gpu001"]
        app.poll_now()
        await settle(pilot)
        assert rows(app, "#nodes") == ["gpu002", "gpu003", "gpu004"]
        assert table.current_key == "gpu002"  # the cursor stays on its node


async def test_overview_filter(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("slash", *"offline")
        await settle(pilot)
        assert rows(app, "#nodes") == ["gpu003"]
        await pilot.press("escape")
        await settle(pilot)
        assert len(rows(app, "#nodes")) == 4


async def test_enter_opens_node_detail_with_processes(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("j", "enter")
        await settle(pilot, 5)
        assert isinstance(app.screen, NodeScreen) and app.screen.node_name == "gpu002"
        assert "1/4242" in rows(app, "#procs")  # the foreign process
        await pilot.press("escape")
        assert isinstance(app.screen, OverviewScreen)


async def test_node_detail_jobs_show_how_many_gpus_not_which(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("enter")  # gpu001
        await settle(pilot, 5)
        assert isinstance(app.screen, NodeScreen) and app.screen.node_name == "gpu001"
        table = app.screen.query_one("#node-jobs", LabTable)
        shown = {
            int(key.value): str(table.get_row(key)[4])
            for key in (row.key for row in table.ordered_rows)
            if key.value is not None
        }
        assert shown, "the node's jobs"
        for job in fake._jobs.values():
            if job.id in shown:
                assert shown[job.id] == str(job.gpus), (job.id, job.gpu_indices)
        assert any(
            j.gpus == 1 and j.gpu_indices == [0] for j in fake._jobs.values() if j.id in shown
        )


async def test_overview_says_sim_for_simulated_gpus(fake: FakeSource) -> None:
    for g in fake._nodes["gpu002"].gpus:  # a node with real GPUs
        g.sample.simulated = False
    for size in ((80, 24), (200, 40)):
        app = make_app(fake)
        async with app.run_test(size=size) as pilot:
            await settle(pilot)
            table = app.screen.query_one("#nodes", LabTable)
            text = {
                str(row.key.value): " ".join(str(c) for c in table.get_row(row.key))
                for row in table.ordered_rows
            }
            assert "sim" in text["gpu001"].split(), (size, text["gpu001"])
            assert "sim" not in text["gpu002"].split(), (size, text["gpu002"])
            assert "sim" not in text["gpu004"].split()  # no GPUs at all


async def test_jobs_filter_by_text_state_and_user(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await settle(pilot)
        assert isinstance(app.screen, JobsScreen)
        assert len(rows(app, "#jobs")) == 12
        await pilot.press("slash", *"user:alice")
        await settle(pilot)
        assert set(rows(app, "#jobs")) == {"100", "104", "108"}
        await pilot.press("escape", "s", "s", "s")  # all -> active -> queued -> running
        await settle(pilot)
        assert set(rows(app, "#jobs")) == {"100", "101", "108", "110"}


async def test_submit_form_validates_as_you_type_and_submits(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await settle(pilot)
        await pilot.press("n")
        await settle(pilot)
        form = app.screen
        assert isinstance(form, SubmitForm)
        assert "command" in str(form.query_one("#problem").render())
        await pilot.press(*"python train.py")
        form.query_one("#f-gpus", Input).value = "99"
        await settle(pilot)
        assert "gpus" in str(form.query_one("#problem").render())
        form.query_one("#f-gpus", Input).value = "2"
        await settle(pilot)
        assert str(form.query_one("#problem").render()) == "ready to submit"
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert not isinstance(app.screen, SubmitForm)
        kind, spec = fake.calls[-1]
        assert kind == "submit" and spec.argv == ["python", "train.py"] and spec.gpus == 2


async def test_submit_form_shows_the_masters_refusal(fake: FakeSource) -> None:
    fake.submit_error = "no node has 8 GPUs"
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2", "n")
        await settle(pilot)
        await pilot.press(*"sleep 1", "enter")
        await settle(pilot)
        assert isinstance(app.screen, SubmitForm)
        assert "no node has 8 GPUs" in str(app.screen.query_one("#problem").render())


def test_submit_validation_env_kinds() -> None:
    base = {"command": "python x.py"}
    assert validate_submit({**base, "env_kind": "docker", "image": "torch:2"}).image == "torch:2"
    for kind in ("venv", "conda", "docker"):
        try:
            validate_submit({**base, "env_kind": kind})
        except ValueError:
            pass
        else:
            raise AssertionError(f"{kind} without its setting was accepted")
    spec = validate_submit(
        {**base, "where": "gpu=a100,rack=r1", "timeout": "2h", "dataset": "imagenet"}
    )
    assert (
        spec.labels == {"gpu": "a100", "rack": "r1"}
        and spec.timeout_s == 7200
        and spec.datasets == ["imagenet"]
    )


async def test_cancel_needs_confirmation(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await settle(pilot)
        assert rows(app, "#jobs")[0] == "108"
        await pilot.press("C")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press("n")
        await settle(pilot)
        assert not [c for c in fake.calls if c[0] == "cancel"]
        await pilot.press("C", "y")
        await settle(pilot)
        assert ("cancel", [108]) in fake.calls
        assert fake._jobs[108].state == "cancelled"


async def test_log_view_follow_wrap_and_bounded_buffer(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        app.open_job(100, tab="log")
        await settle(pilot, 5)
        assert isinstance(app.screen, JobScreen)
        view = app.screen.query_one(LogView)
        assert len(view.lines) == 50
        await pilot.press("f")
        assert view.follow is False
        await pilot.press("w")
        assert view.wrap is True
        await pilot.press("f")
        assert view.follow is True
        view.max_lines = 10
        view.lines = view.lines.__class__(view.lines, maxlen=10)
        await fake.follow_queue.put(("log", "".join(f"live {i}\n" for i in range(30))))
        await settle(pilot)
        assert len(view.lines) == 10 and view.lines[-1] == "live 29" and view.dropped > 0
        await fake.follow_queue.put(("end", "succeeded"))
        await settle(pilot)
        assert view.ended == "succeeded"


async def test_log_search_finds_lines(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        app.open_job(100, tab="log")
        await settle(pilot, 5)
        view = app.screen.query_one(LogView)
        await pilot.press("slash", *"step 7 ", "enter")
        await settle(pilot)
        assert view.term == "step 7" and view.matches() == [7]
        assert view.follow is False


async def test_readonly_hides_every_action(fake: FakeSource) -> None:
    app = make_app(fake, readonly=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert "drain" not in {b.binding.action for b in app.screen.active_bindings.values()}
        await pilot.press("2")
        await settle(pilot)
        actions = {b.binding.action for b in app.screen.active_bindings.values()}
        assert not actions & {"submit", "cancel_job"}
        await pilot.press("n", "C")
        await settle(pilot)
        assert isinstance(app.screen, JobsScreen)
        assert not fake.calls


async def test_members_do_not_see_admin(fake: FakeSource) -> None:
    fake.role, fake.user = "member", "alice"
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert "drain" not in {b.binding.action for b in app.screen.active_bindings.values()}
        await pilot.press("4")
        await settle(pilot)
        assert not isinstance(app.screen, AdminScreen)


async def test_admin_add_user_and_disable(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("4")
        await settle(pilot)
        assert isinstance(app.screen, AdminScreen)
        assert rows(app, "#users-table") == ["admin", "alice", "bob", "carol"]
        await pilot.press("a")
        await settle(pilot)
        assert isinstance(app.screen, FormModal)
        await pilot.press(*"dave", "tab", *"long-password", "ctrl+s")
        await settle(pilot)
        assert any(c[0] == "create_user" and c[1].username == "dave" for c in fake.calls)
        assert "dave" in rows(app, "#users-table")
        await pilot.press("g", "j", "D", "y")  # alice
        await settle(pilot)
        assert any(
            c[0] == "update_user" and c[1][0] == "alice" and c[1][1].disabled for c in fake.calls
        )


async def test_add_user_form_says_what_is_wrong_in_words(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("4")
        await settle(pilot)
        await pilot.press("a")
        await settle(pilot)
        assert isinstance(app.screen, FormModal)
        await pilot.press(*"erin", "tab", *"short", "ctrl+s")
        await settle(pilot)
        assert isinstance(app.screen, FormModal)  # still open, saying why
        problem = str(app.screen.query_one("#problem").render())
        assert problem == "password: must be at least 8 characters", problem
        assert not any(c[0] == "create_user" for c in fake.calls)


async def test_admin_join_token_shown_once(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("4")
        await settle(pilot)
        app.screen.query_one("TabbedContent").active = "tokens"
        await settle(pilot)
        await pilot.press("n")
        await settle(pilot)
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert "jt_SECRET" in str(app.screen.query_one("#secret").render())


async def test_admin_node_drain_from_overview(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("d", "y")
        await settle(pilot)
        assert ("drain", "gpu001") in fake.calls


async def test_dataset_delete_needs_confirmation(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        await settle(pilot)
        assert isinstance(app.screen, DatasetsScreen)
        assert rows(app, "#datasets") == ["imagenet@gpu001", "imagenet@gpu002", "wikitext@gpu002"]
        await pilot.press("D")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press("y")
        await settle(pilot)
        assert ("delete_dataset", ("imagenet", "gpu001")) in fake.calls


async def test_dataset_import_form(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        await settle(pilot)
        await pilot.press("i")
        await settle(pilot)
        await pilot.press(*"https://example.org/coco.tar", "tab", "tab", *"coco", "ctrl+s")
        await settle(pilot)
        kind, req = fake.calls[-1]
        assert kind == "import" and req.node == "gpu001" and req.name == "coco"


async def test_master_down_keeps_data_marks_stale_and_reconnects(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        fake.down = True
        app.poll_now()
        await settle(pilot)
        assert app.conn.state == "stale"
        assert app.screen.has_class("-stale")
        assert len(rows(app, "#nodes")) == 4  # last data stays on screen
        assert "unreachable" in str(app.screen.query_one("StatusBar").render())
        fake.down = False
        app.poll_now()
        await settle(pilot)
        assert app.conn.state == "live" and not app.screen.has_class("-stale")


async def test_master_down_at_start_shows_unreachable() -> None:
    fake = FakeSource()
    fake.down = True
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.conn.state == "stale"
        assert app.conn.retry_at is not None


async def test_login_when_token_missing() -> None:
    fake = FakeSource()
    fake.token = ""
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.conn.state == "login"
        await pilot.press(*"admin", "enter", *"wrong", "enter")
        await settle(pilot)
        assert "wrong" in str(app.screen.query_one("#problem").render())
        app.screen.query_one("#password", Input).value = "correct-horse"
        await pilot.press("enter")
        await settle(pilot, 5)
        assert app.conn.state == "live" and app.conn.user == "admin"


async def test_help_lists_screen_bindings(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await settle(pilot)
        await pilot.press("question_mark")
        await settle(pilot)
        assert isinstance(app.screen, HelpScreen)
        entries = dict((what, key) for key, what in app.screen.entries)
        assert entries["Cancel job"] == "C" and entries["Submit"] == "n" and "Quit" in entries
        await pilot.press("escape")
        assert isinstance(app.screen, JobsScreen)


async def test_help_shows_each_key_as_the_footer_does(fake: FakeSource) -> None:
    """Quit is `q` in the footer, so help says `q`, not Textual's hidden `^q`."""
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        footer = {
            b.binding.description: app.get_key_display(b.binding)
            for b in app.screen.active_bindings.values()
            if b.binding.show and b.binding.description
        }
        await pilot.press("question_mark")
        await settle(pilot)
        assert isinstance(app.screen, HelpScreen)
        entries = dict((what, key) for key, what in app.screen.entries)
        assert entries["Quit"] == "q"
        for what, key in footer.items():
            assert entries[what] == key, what


async def test_colon_command_line_jumps(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("colon", *"datasets", "enter")
        await settle(pilot)
        assert isinstance(app.screen, DatasetsScreen)
        await pilot.press("colon", *"job 105", "enter")
        await settle(pilot)
        assert isinstance(app.screen, JobScreen) and app.screen.job_id == 105


async def test_palette_reaches_screen_actions(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await settle(pilot)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Submit", "Cancel job", "Go to nodes", "Go to admin", "Light/dark theme"} <= titles


async def test_theme_toggles(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+t")
        assert app.theme == "textual-light"


async def test_role_form_uses_select(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("4")
        await settle(pilot)
        await pilot.press("G", "r")  # carol
        await settle(pilot)
        app.screen.query_one("#f-role", Select).value = "admin"
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert any(
            c[0] == "update_user" and c[1][0] == "carol" and c[1][1].role == "admin"
            for c in fake.calls
        )


async def test_node_detail_flags_gpus_used_without_their_reservation(fake: FakeSource) -> None:
    """A GPU of a reservation that is on says whose it is, and says it loudly when someone
    else uses it (as `mlsm reserve list` and the node view do)."""
    gpu = fake._nodes["gpu002"].gpus[1]  # the one the foreign process holds
    gpu.reserved_for, gpu.reservation_id, gpu.unreserved_use = "alice", 3, True
    other = fake._nodes["gpu002"].gpus[0]
    other.reserved_for, other.reservation_id = "", 4  # maintenance, unused
    app = make_app(fake)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("j", "enter")
        await settle(pilot, 5)
        flagged = str(app.screen.query_one("#gpu1 #figures").render())
        quiet = str(app.screen.query_one("#gpu0 #figures").render())
    assert "reserved for alice" in flagged and "USED WITHOUT RESERVATION" in flagged
    assert "reserved for maintenance" in quiet and "WITHOUT" not in quiet
