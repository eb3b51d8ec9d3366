"""Pilot tests of the job screen's Files tab over the fake lab: browse the outputs, view a
text file's tail, download a file (to the dashboard's directory) and a directory (to one
named in a form), and an error from the master shown in place."""

from __future__ import annotations

from pathlib import Path

from textual.css.query import NoMatches

from mlsm import errors
from tests.support.wait import pilot_until
from tests.tui.conftest import make_app
from tests.tui.fakes import FakeSource
from tui.screens import JobScreen
from tui.widgets.files import FilesPane
from tui.widgets.forms import FormModal
from tui.widgets.logview import LogView
from tui.widgets.table import LabTable


def files_rows(app) -> list[str]:
    table = app.screen.query_one("#output-files", LabTable)
    return [row.key.value for row in table.ordered_rows]


async def open_files(app, pilot) -> FilesPane:
    app.open_job(100)
    await pilot_until(pilot, lambda: isinstance(app.screen, JobScreen), what="the job screen")
    await pilot.press("o")
    await pilot_until(pilot, lambda: files_rows(app), what="the files listed")
    return app.screen.query_one(FilesPane)


async def test_files_tab_lists_and_views_a_text_file(fake: FakeSource) -> None:
    app = make_app(fake)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_files(app, pilot)
        assert files_rows(app) == ["ckpt", "ckpt/last.pt", "metrics.json", "train.txt"]
        table = app.screen.query_one("#output-files", LabTable)
        table.move_cursor(row=3)
        await pilot.press("enter")
        view = app.screen.query_one("#file-view", LogView)
        await pilot_until(pilot, lambda: "epoch 39 loss 0.025" in view.lines, what="the tail")
        assert ("read_output", (100, "train.txt", None)) in fake.calls
        assert app.screen.query_one(FilesPane).has_class("-viewing")


async def test_files_tab_downloads_here_and_to_a_chosen_dir(
    fake: FakeSource, tmp_path: Path
) -> None:
    app = make_app(fake)
    async with app.run_test(size=(100, 30)) as pilot:
        pane = await open_files(app, pilot)
        pane.downloads_dir = tmp_path / "here"
        table = app.screen.query_one("#output-files", LabTable)
        table.move_cursor(row=2)  # metrics.json
        await pilot.press("d")
        await pilot_until(pilot, lambda: (tmp_path / "here" / "metrics.json").exists(), "saved")
        assert (tmp_path / "here" / "metrics.json").read_bytes() == b'{"loss": 0.25}\n'
        table.move_cursor(row=0)  # the ckpt directory: its whole subtree
        await pilot.press("D")
        await pilot_until(pilot, lambda: isinstance(app.screen, FormModal), what="the form")
        form = app.screen
        form.query_one("#f-dir").value = str(tmp_path / "chosen")
        await pilot.press("enter")
        await pilot_until(
            pilot, lambda: (tmp_path / "chosen" / "ckpt" / "last.pt").exists(), "saved"
        )
        assert not (tmp_path / "chosen" / "metrics.json").exists()
        assert ("download_outputs", (100, ["ckpt"], str(tmp_path / "chosen"))) in fake.calls


async def test_files_tab_shows_the_masters_refusal(fake: FakeSource) -> None:
    async def refused(job_id: int, path: str = ""):
        raise errors.NodeOffline("outputs of job 100 live on gpu-a, which is offline since 10:42")

    fake.outputs = refused  # type: ignore[method-assign]
    app = make_app(fake)
    async with app.run_test(size=(100, 30)) as pilot:
        app.open_job(100, tab="files")
        await pilot_until(pilot, lambda: isinstance(app.screen, JobScreen), "the job screen")

        def info() -> str:
            try:
                return str(app.screen.query_one("#files-info").render())
            except NoMatches:
                return ""

        await pilot_until(pilot, lambda: "offline since 10:42" in info(), "the line")
