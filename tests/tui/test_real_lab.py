"""The real dashboard against a real lab: one ``mlsm master`` and two ``mlsm agent``
processes (2 simulated A100s each) on loopback, driven through Pilot with the real
:class:`~tui.source.MasterSource`. Every wait polls the app with a deadline."""

from __future__ import annotations

import shlex
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input

from mlsm import PROTOCOL_VERSION
from mlsm.wire import agent as w
from mlsm.wire import api
from tests.integration.lab import Lab
from tests.support.wait import pilot_until, wait_until
from tui.app import MlsmApp
from tui.screens import AdminScreen, JobScreen, JobsScreen, OverviewScreen
from tui.source import MasterSource
from tui.widgets.files import FilesPane
from tui.widgets.forms import SubmitForm
from tui.widgets.logview import LogView
from tui.widgets.table import LabTable

#: Longest wait for anything the lab does (a job starting, a master restarting).
DEADLINE_S = 30.0
#: How often the app polls the master in these tests.
POLL_S = 0.3
#: Between tries of a wait: the app waits for a real lab, so the wait does not spin.
PAUSE_S = 0.05
NODES = ("lab-a", "lab-b")

#: A job that prints each line in two writes, flushed apart, so log chunks split lines.
# Lines written in two halves (the log view must join them); after line 0 the job waits for
# the test's go file (argv[1]), so it is still running however slow the machine is.
SLOW_LINES = """\
import os, sys, time
for i in range(5):
    sys.stdout.write(f"line {i} begins")
    sys.stdout.flush()
    time.sleep(0.3)
    sys.stdout.write(f" and ends {i}\\n")
    sys.stdout.flush()
    deadline = time.monotonic() + 120
    while i == 0 and not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
        time.sleep(0.05)
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("tui-lab")) as lab:
        lab.start_master()
        for name in NODES:
            lab.start_agent(name, gpus="2xA100-80GB")
        yield lab


def make(lab: Lab, token: str | None = None, **kwargs: Any) -> MlsmApp:
    return MlsmApp(MasterSource(lab.url, token or lab.token), poll_s=POLL_S, **kwargs)


def rows(app: MlsmApp, table: str) -> list[str]:
    found = app.screen.query(table)
    if not found:
        return []
    return [str(r.key.value) for r in found.first(LabTable).ordered_rows]


def cell(app: MlsmApp, table: str, row: str, column: str) -> str:
    return str(app.screen.query_one(table, LabTable).get_cell(row, column))


def bindings(app: MlsmApp) -> set[str]:
    return {b.binding.action for b in app.screen.active_bindings.values()}


def submit(lab: Lab, argv: list[str], **extra: Any) -> int:
    reply = lab.admin.call(
        "POST", "/api/v1/jobs", json=api.JobSubmit(argv=argv, **extra), type=api.SubmitReply
    )
    return reply.job.id


def test_overview_route_answers_one_compact_row_per_node_with_its_running_jobs(
    lab: Lab,
) -> None:
    """``/api/v1/overview`` is what the overview polls: the summary and, per node, only
    what its row shows, with the (id, user) of each job running there."""
    job_id = submit(lab, ["sleep", "60"], name="on-a-node")
    try:
        wait_until(lambda: lab.job(job_id).state == "running", DEADLINE_S, "the job running")
        job = lab.job(job_id)
        node, mine = job.node, (job_id, job.user)

        def row_with_job() -> api.NodeRow | None:
            reply = lab.admin.call("GET", "/api/v1/overview", type=api.LabOverview)
            rows = {r.name: r for r in reply.nodes}
            return rows[node] if mine in rows[node].jobs else None

        row = wait_until(row_with_job, DEADLINE_S, "the job in its node's row")
        reply = lab.admin.call("GET", "/api/v1/overview", type=api.LabOverview)
        assert [r.name for r in reply.nodes] == sorted(NODES)
        assert reply.summary.nodes_total == len(NODES)
        full = lab.admin.call("GET", f"/api/v1/nodes/{node}", type=api.Node)
        assert row.gpu_model == full.gpus[0].sample.name and row.simulated
        assert [g.mem_total for g in row.gpus] == [g.sample.mem_total for g in full.gpus]
        assert row.mem_total == (full.host.mem_total if full.host else 0)
        others = [r for r in reply.nodes if r.name != node]
        assert all(mine not in r.jobs for r in others)
    finally:
        lab.admin.call("POST", "/api/v1/jobs/cancel", json={"ids": [job_id]})


async def test_overview_polled_as_changes_shows_new_changed_and_removed_nodes_at_once(
    lab: Lab,
) -> None:
    """The overview asks the master only for what changed since its last answer: a node
    that joins, its state changing (a heartbeat, then going stale with time) and its
    removal each reach the table by the next poll."""
    source = MasterSource(lab.url, lab.token)
    answers: list[api.LabOverview] = []
    asked = source.client.nodes.overview

    async def overview(*, since: str | None = None) -> api.LabOverview:
        answers.append(await asked(since=since))
        return answers[-1]

    source.client.nodes.overview = overview  # type: ignore[method-assign]
    app = MlsmApp(source, poll_s=POLL_S)

    async def state_is(*states: str) -> None:
        await pilot_until(
            pilot,
            lambda: (
                "lab-z" in rows(app, "#nodes") and cell(app, "#nodes", "lab-z", "state") in states
            ),
            f"lab-z {' or '.join(states)}",
            DEADLINE_S,
            pause_s=PAUSE_S,
        )

    async with app.run_test(size=(160, 48)) as pilot:
        await pilot_until(
            pilot, lambda: set(NODES) <= set(rows(app, "#nodes")), "both rows", DEADLINE_S
        )
        reply = lab.agent_call(
            "register",
            w.RegisterRequest(protocol=PROTOCOL_VERSION, join_token=lab.join_token(), name="lab-z"),
            None,
        )
        secret = w.decode_register_reply(reply.content).node_secret
        try:
            await state_is("offline")
            assert rows(app, "#nodes") == sorted([*NODES, "lab-z"])
            hb = w.Heartbeat(protocol=PROTOCOL_VERSION)
            assert lab.agent_call("heartbeat", hb, secret).status_code == 200
            await state_is("online", "stale")
            await state_is("stale")  # no heartbeat since: time alone changed the row
        finally:
            lab.cli("node", "remove", "lab-z", "--yes")
        await pilot_until(
            pilot, lambda: "lab-z" not in rows(app, "#nodes"), "lab-z removed", DEADLINE_S
        )
        assert rows(app, "#nodes") == sorted(NODES)
    assert answers[0].full and not any(a.full for a in answers[1:])
    assert any(a.removed == ["lab-z"] for a in answers)


async def test_overview_shows_both_nodes_online_with_their_gpus(lab: Lab) -> None:
    app = make(lab)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot_until(
            pilot,
            lambda: set(NODES) <= set(rows(app, "#nodes")),
            "both node rows",
            DEADLINE_S,
            pause_s=PAUSE_S,
        )
        await pilot_until(
            pilot,
            lambda: all(cell(app, "#nodes", n, "state") == "online" for n in NODES),
            "both nodes online",
            DEADLINE_S,
            pause_s=PAUSE_S,
        )
        for name in NODES:
            model = cell(app, "#nodes", name, "model")
            assert model.startswith("2x ") and "A100-80GB" in model
            assert len(cell(app, "#nodes", name, "util").split()) == 2  # one bar per GPU
        totals = str(app.screen.query_one("#totals").render())
        assert "2/2 online" in totals and "of 4" in totals


async def test_submitted_job_runs_and_its_log_follows_split_lines(lab: Lab, tmp_path: Path) -> None:
    script = tmp_path / "slow_lines.py"
    script.write_text(SLOW_LINES)
    app = make(lab)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot_until(
            pilot, lambda: app.conn.state == "live", "login", DEADLINE_S, pause_s=PAUSE_S
        )
        await pilot.press("2")
        await pilot_until(
            pilot,
            lambda: isinstance(app.screen, JobsScreen),
            "jobs view",
            DEADLINE_S,
            pause_s=PAUSE_S,
        )
        await pilot.press("n")
        await pilot_until(
            pilot,
            lambda: isinstance(app.screen, SubmitForm),
            "submit form",
            DEADLINE_S,
            pause_s=PAUSE_S,
        )
        form = app.screen
        go = tmp_path / "go"
        form.query_one("#f-command", Input).value = shlex.join(
            [sys.executable, str(script), str(go)]
        )
        form.query_one("#f-name", Input).focus()
        await pilot.press(*"slow-lines", "ctrl+s")
        await pilot_until(
            pilot,
            lambda: isinstance(app.screen, JobsScreen),
            "form closed",
            DEADLINE_S,
            pause_s=PAUSE_S,
        )
        jobs = app.screen
        assert isinstance(jobs, JobsScreen)
        await pilot_until(
            pilot,
            lambda: any(j.name == "slow-lines" for j in jobs.jobs.values()),
            "the job in the table",
            DEADLINE_S,
            pause_s=PAUSE_S,
        )
        job = next(j for j in jobs.jobs.values() if j.name == "slow-lines")
        assert str(job.id) in rows(app, "#jobs")
        jobs.table.move_cursor(row=rows(app, "#jobs").index(str(job.id)))
        await pilot.press("l")
        await pilot_until(
            pilot,
            lambda: isinstance(app.screen, JobScreen),
            "job screen",
            DEADLINE_S,
            pause_s=PAUSE_S,
        )
        view = app.screen.query_one(LogView)
        await pilot_until(
            pilot,
            lambda: "line 0 begins and ends 0" in view.lines,
            "the first line",
            DEADLINE_S,
            pause_s=PAUSE_S,
        )
        assert view.ended is None, "the log view followed a job that was still running"
        go.touch()
        await pilot_until(
            pilot, lambda: view.ended is not None, "the end of the log", DEADLINE_S, pause_s=PAUSE_S
        )
        assert view.ended == "succeeded"
        ours = [line for line in view.lines if not line.startswith("[mlsm]")]
        assert ours == [f"line {i} begins and ends {i}" for i in range(5)]


async def test_files_tab_lists_views_and_downloads_a_jobs_outputs(lab: Lab, tmp_path: Path) -> None:
    script = 'mkdir -p "$MLSM_OUTPUT_DIR/ckpt" && seq 1 500 > "$MLSM_OUTPUT_DIR/ckpt/steps.txt"'
    jid = submit(lab, ["sh", "-c", script], node=NODES[0])
    lab.wait_job(jid, timeout=DEADLINE_S)
    app = make(lab)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot_until(
            pilot, lambda: app.conn.state == "live", "login", DEADLINE_S, pause_s=PAUSE_S
        )
        app.open_job(jid, tab="files")
        await pilot_until(
            pilot,
            lambda: "ckpt/steps.txt" in rows(app, "#output-files"),
            "the job's files listed",
            DEADLINE_S,
            pause_s=PAUSE_S,
        )
        pane = app.screen.query_one(FilesPane)
        pane.downloads_dir = tmp_path / "got"
        table = app.screen.query_one("#output-files", LabTable)
        table.move_cursor(row=rows(app, "#output-files").index("ckpt/steps.txt"))
        await pilot.press("enter")
        view = app.screen.query_one("#file-view", LogView)
        await pilot_until(
            pilot, lambda: "500" in view.lines, "the file's tail", DEADLINE_S, pause_s=PAUSE_S
        )
        table.focus()
        await pilot.press("d")
        got = tmp_path / "got" / "ckpt" / "steps.txt"
        await pilot_until(
            pilot,
            lambda: got.exists() and got.read_text().split() == [str(i) for i in range(1, 501)],
            "the download",
            DEADLINE_S,
            pause_s=PAUSE_S,
        )


async def test_cancel_with_capital_c_and_confirm_ends_a_running_job(lab: Lab) -> None:
    job_id = submit(lab, ["sleep", "60"], name="to-cancel")
    app = make(lab)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot_until(
            pilot, lambda: app.conn.state == "live", "login", DEADLINE_S, pause_s=PAUSE_S
        )
        app.open_job(job_id)
        await pilot_until(
            pilot,
            lambda: (
                isinstance(app.screen, JobScreen)
                and app.screen.job is not None
                and app.screen.job.state == "running"
            ),
            "the job running",
            DEADLINE_S,
            pause_s=PAUSE_S,
        )
        await pilot.press("C")
        await pilot_until(
            pilot,
            lambda: type(app.screen).__name__ == "ConfirmModal",
            "confirm",
            DEADLINE_S,
            pause_s=PAUSE_S,
        )
        await pilot.press("y")
        await pilot_until(
            pilot,
            lambda: (
                isinstance(app.screen, JobScreen)
                and app.screen.job is not None
                and app.screen.job.state == "cancelled"
            ),
            "the job cancelled",
            DEADLINE_S,
            pause_s=PAUSE_S,
        )
    assert lab.job(job_id).state == "cancelled"


async def test_admin_adds_a_user(lab: Lab) -> None:
    app = make(lab)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot_until(pilot, lambda: app.is_admin, "admin login", DEADLINE_S, pause_s=PAUSE_S)
        await pilot.press("4")
        await pilot_until(
            pilot,
            lambda: isinstance(app.screen, AdminScreen) and "root" in rows(app, "#users-table"),
            "users table",
            DEADLINE_S,
            pause_s=PAUSE_S,
        )
        await pilot.press("a")
        await pilot_until(
            pilot, lambda: app.screen.query("#problem"), "user form", DEADLINE_S, pause_s=PAUSE_S
        )
        await pilot.press(*"lena", "tab", *"lena-password-1", "ctrl+s")
        await pilot_until(
            pilot,
            lambda: "lena" in rows(app, "#users-table"),
            "the new user's row",
            DEADLINE_S,
            pause_s=PAUSE_S,
        )
    users = lab.admin.call("GET", "/api/v1/users", type=list[api.User])
    assert any(u.username == "lena" and u.role == "member" for u in users)


async def test_readonly_hides_every_action(lab: Lab) -> None:
    job_id = submit(lab, ["true"], name="ro")
    app = make(lab, readonly=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot_until(
            pilot, lambda: app.is_admin and app.first_data_at, "data", DEADLINE_S, pause_s=PAUSE_S
        )
        assert isinstance(app.screen, OverviewScreen)
        assert not {"drain", "resume"} & bindings(app)
        await pilot.press("2")
        await pilot_until(
            pilot,
            lambda: isinstance(app.screen, JobsScreen),
            "jobs view",
            DEADLINE_S,
            pause_s=PAUSE_S,
        )
        assert not {"submit", "cancel_job"} & bindings(app)
        await pilot.press("n")
        assert not isinstance(app.screen, SubmitForm)
        app.open_job(job_id)
        await pilot_until(
            pilot,
            lambda: isinstance(app.screen, JobScreen) and app.screen.ready,
            "job screen",
            DEADLINE_S,
            pause_s=PAUSE_S,
        )
        assert "cancel_job" not in bindings(app)
        assert "read-only" in str(app.screen.query_one("StatusBar").render())


async def test_master_killed_and_restarted_underneath(lab: Lab) -> None:
    app = make(lab)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot_until(
            pilot,
            lambda: set(NODES) <= set(rows(app, "#nodes")),
            "node rows",
            DEADLINE_S,
            pause_s=PAUSE_S,
        )
        screen = app.screen
        status = screen.query_one("StatusBar")
        lab.stop_master(signal.SIGKILL)
        try:
            await pilot_until(
                pilot, lambda: app.conn.state == "stale", "stale state", DEADLINE_S, pause_s=PAUSE_S
            )
            assert "master unreachable" in str(status.render())
            assert screen.has_class("-stale")
            assert set(NODES) <= set(rows(app, "#nodes")), "the last data stays on screen"
        finally:
            lab.start_master()
        await pilot_until(
            pilot, lambda: app.conn.state == "live", "reconnected", DEADLINE_S, pause_s=PAUSE_S
        )
        assert not screen.has_class("-stale")
        assert "unreachable" not in str(status.render())
        await pilot_until(
            pilot,
            lambda: all(cell(app, "#nodes", n, "state") == "online" for n in NODES),
            "nodes online again",
            DEADLINE_S,
            pause_s=PAUSE_S,
        )
