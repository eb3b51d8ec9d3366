"""SVG snapshots of every screen at 80x24 and 160x48 over the fake lab (test double).

Data and clock are frozen (``fakes.NOW``) and the cursor does not blink, so the pictures
only change when the dashboard does. Update with ``pytest tests/tui --snapshot-update``.
"""

from __future__ import annotations

import pytest
from textual.widgets import Input

from tests.tui.conftest import make_app
from tests.tui.fakes import FakeSource

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48")]


def _setup(
    *keys: str,
    job: int | None = None,
    tab: str = "details",
    node: str | None = None,
    polls: int = 3,
):
    async def run_before(pilot) -> None:
        app = pilot.app
        for _ in range(polls):  # a few polls so the sparklines have a history
            app.poll_now()
            await pilot.pause()
            await pilot.pause()
        if job is not None:
            app.open_job(job, tab=tab)
        if node is not None:
            app.open_node(node)
        for _ in range(4):
            await pilot.pause()
        for key in keys:  # one at a time: a key that opens a screen must land before the next
            await pilot.press(key)
            await pilot.pause()
        for _ in range(4):
            await pilot.pause()
        for box in app.screen.query(Input):
            box.cursor_blink = False
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("size", SIZES)
def test_overview(snap_compare, size) -> None:
    assert snap_compare(make_app(FakeSource()), terminal_size=size, run_before=_setup())


@pytest.mark.parametrize("size", SIZES)
def test_overview_stale(snap_compare, size) -> None:
    fake = FakeSource()

    async def run_before(pilot) -> None:
        await _setup()(pilot)
        fake.down = True
        pilot.app.poll_now()
        for _ in range(4):
            await pilot.pause()

    assert snap_compare(make_app(fake), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_node_detail(snap_compare, size) -> None:
    assert snap_compare(
        make_app(FakeSource()), terminal_size=size, run_before=_setup(node="gpu002")
    )


@pytest.mark.parametrize("size", SIZES)
def test_jobs(snap_compare, size) -> None:
    assert snap_compare(make_app(FakeSource()), terminal_size=size, run_before=_setup("2"))


@pytest.mark.parametrize("size", SIZES)
def test_jobs_filtered(snap_compare, size) -> None:
    assert snap_compare(
        make_app(FakeSource()), terminal_size=size, run_before=_setup("2", "slash", *"user:alice")
    )


@pytest.mark.parametrize("size", SIZES)
def test_submit_form(snap_compare, size) -> None:
    assert snap_compare(
        make_app(FakeSource()), terminal_size=size, run_before=_setup("2", "n", *"python train.py")
    )


@pytest.mark.parametrize("size", SIZES)
def test_cancel_confirm(snap_compare, size) -> None:
    assert snap_compare(make_app(FakeSource()), terminal_size=size, run_before=_setup("2", "C"))


@pytest.mark.parametrize("size", SIZES)
def test_job_detail(snap_compare, size) -> None:
    assert snap_compare(make_app(FakeSource()), terminal_size=size, run_before=_setup(job=102))


@pytest.mark.parametrize("size", SIZES)
def test_job_forwards(snap_compare, size) -> None:
    """A running job's screen lists the forwards held open into it, and offers ``s``."""
    assert snap_compare(make_app(FakeSource()), terminal_size=size, run_before=_setup(job=100))


@pytest.mark.parametrize("size", SIZES)
def test_job_log(snap_compare, size) -> None:
    assert snap_compare(
        make_app(FakeSource()), terminal_size=size, run_before=_setup(job=100, tab="log")
    )


@pytest.mark.parametrize("size", SIZES)
def test_job_files(snap_compare, size) -> None:
    assert snap_compare(
        make_app(FakeSource()), terminal_size=size, run_before=_setup(job=100, tab="files")
    )


@pytest.mark.parametrize("size", SIZES)
def test_datasets(snap_compare, size) -> None:
    assert snap_compare(make_app(FakeSource()), terminal_size=size, run_before=_setup("3"))


@pytest.mark.parametrize("size", SIZES)
def test_admin_users(snap_compare, size) -> None:
    assert snap_compare(make_app(FakeSource()), terminal_size=size, run_before=_setup("4"))


@pytest.mark.parametrize("size", SIZES)
def test_admin_audit(snap_compare, size) -> None:
    async def run_before(pilot) -> None:
        await _setup("4")(pilot)
        pilot.app.screen.query_one("TabbedContent").active = "audit"
        for _ in range(4):
            await pilot.pause()

    assert snap_compare(make_app(FakeSource()), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_help(snap_compare, size) -> None:
    assert snap_compare(
        make_app(FakeSource()), terminal_size=size, run_before=_setup("2", "question_mark")
    )


@pytest.mark.parametrize("size", SIZES)
def test_readonly_light(snap_compare, size) -> None:
    app = make_app(FakeSource(), readonly=True, light=True)
    assert snap_compare(app, terminal_size=size, run_before=_setup("2"))
