"""One job: its spec, state history, why it waits, where it ran, the port forwards held
open into it, its live log, and its files (the Files tab: browse, view, download;
:mod:`tui.widgets.files`). ``s`` opens its shell in this terminal (:mod:`tui.shell`)."""

from __future__ import annotations

import asyncio

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.css.query import NoMatches
from textual.widgets import TabbedContent, TabPane

from mlsm.errors import MlsmError, UnavailableError
from mlsm.termsafe import visible
from mlsm.wire import api
from mlsm.wire.channels import ForwardInfo
from mlsm.wire.follow import AttemptStarted, LogText
from tui import fmt
from tui.screens.base import View
from tui.shell import Runner, open_shell
from tui.source import LOG_TAIL_BYTES
from tui.widgets.files import FilesPane
from tui.widgets.logview import LogView
from tui.widgets.plain import PlainStatic

#: Wait before reopening a log stream the master dropped.
LOG_RETRY_S = 2.0


def job_details(job: api.Job, now: float, forwards: list[ForwardInfo] | None = None) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()

    def row(label: str, value: object) -> None:
        if value not in (None, "", [], {}):
            grid.add_row(label, fmt.safe(value if isinstance(value, Text) else str(value)))

    row("Job", f"{job.id}  {job.name}")
    row("State", fmt.state_text(job.state))
    if job.state in api.PENDING_STATES:
        row("Waiting because", fmt.plain(job.reason or "waiting for the scheduler", "yellow"))
    elif job.reason:
        row("Reason", job.reason)
    row("User", job.user)
    row("Command", fmt.command(job.argv))
    env = job.env_kind
    if job.env_kind == "venv":
        env += f" {job.venv}"
    elif job.env_kind == "conda":
        env += f" {job.conda}"
    elif job.env_kind == "docker":
        env += f" {job.image}"
    row("Environment", env)
    row("Workdir", job.workdir)
    res = f"{job.gpus} GPU" + (f" ≥{job.gpu_mem_gib:g} GiB" if job.gpu_mem_gib else "")
    if job.cpus:
        res += f", {job.cpus:g} CPU"
    if job.mem_gib:
        res += f", {job.mem_gib:g} GiB RAM"
    row("Resources", res)
    row("Wanted node", job.node_req)
    row("Labels", " ".join(f"{k}={v}" for k, v in job.labels.items()))
    row("Datasets", ", ".join(job.datasets))
    row("After", ", ".join(job.after))
    row("Priority", job.priority)
    row("Retries", f"{job.attempt}/{job.retries}" if job.retries else "")
    row("Timeout", fmt.duration(job.timeout_s) if job.timeout_s else "")
    row(
        "Ran on",
        f"{job.node} GPUs {','.join(map(str, job.gpu_indices)) or '-'}" if job.node else "",
    )
    row("Submitted", fmt.ago(job.created_at, now))
    row("Started", fmt.ago(job.started_at, now) if job.started_at else "")
    if job.started_at:
        row("Runtime", fmt.duration((job.ended_at or now) - job.started_at))
    row("Exit code", job.exit_code)
    row("Log", fmt.human_bytes(job.log_size) if job.log_size else "")
    if job.kind == "session":
        row("Kind", "session" + (" (kept when its shell leaves)" if job.session_keep else ""))
    if forwards:
        lines = Text()
        for f in forwards:
            lines.append(f"port {f.port} <- {visible(f.user)}")
            if f.local:
                lines.append(f" at {visible(f.local)}", style="dim")
            lines.append(f"  {f.connections} open, since {fmt.ago(f.opened_at, now)}\n")
        lines.rstrip()
        row("Forwards", lines)
    if job.history:
        hist = Text()
        for ev in job.history:
            hist.append(f"{fmt.ago(ev.ts, now):>12}  ", style="dim")
            hist.append_text(fmt.state_text(ev.state))
            if ev.message:
                hist.append(f"  {visible(ev.message)}")
            hist.append("\n")
        hist.rstrip()
        row("History", hist)
    return grid


def job_title(job: api.Job) -> Text:
    """One line that says which job this screen is about, and where it stands."""
    text = Text(f" Job {job.id}", style="bold")
    if job.name:
        text.append(f" {visible(job.name)}")
    text.append("  ")
    text.append_text(fmt.state_text(job.state))
    if job.node:
        text.append(f" on {visible(job.node)}")
    text.append(f"  {visible(job.user)}", style="dim")
    return text


class JobScreen(View):
    MUTATING = frozenset({"cancel_job"})
    BINDINGS = [
        Binding("i", "tab('details')", "Details"),
        Binding("l", "tab('log')", "Log"),
        Binding("o", "tab('files')", "Files"),
        Binding("s", "shell", "Shell"),
        Binding("C", "cancel_job", "Cancel job"),
    ]
    #: How ``s`` runs the shell once the app is suspended (tests record the call).
    shell_runner: Runner | None = None

    def __init__(self, job_id: int, tab: str = "details") -> None:
        super().__init__()
        self.job_id = job_id
        self.tab = tab
        self.title = f"Job {job_id}"
        self.job: api.Job | None = None
        self.forwards: list[ForwardInfo] = []

    def body(self) -> ComposeResult:
        yield PlainStatic(f" Job {self.job_id}", id="job-title")
        with TabbedContent(initial=self.tab):
            with TabPane("Details", id="details"):
                with VerticalScroll():
                    yield PlainStatic(f"job {self.job_id}: loading…", id="job-details")
            with TabPane("Log", id="log"):
                yield LogView(id="log-view")
            with TabPane("Files", id="files"):
                yield FilesPane(self.job_id, id="files-pane")

    def setup(self) -> None:
        self.stream_log()
        if self.tab == "log":
            self.query_one(LogView).focus_log()
        elif self.tab == "files":
            self.call_after_refresh(self._show_files)  # the pane mounts with the tabs

    async def fetch(self) -> tuple[api.Job, list[ForwardInfo]]:
        job = await self.source.job(self.job_id)
        forwards: list[ForwardInfo] = []
        if job.state == "running":
            try:
                forwards = await self.source.forwards(self.job_id)
            except MlsmError:  # another member's job: its forwards are not ours to see
                forwards = []
        return job, forwards

    def apply(self, fetched: tuple[api.Job, list[ForwardInfo]]) -> None:
        job, self.forwards = fetched
        self.job = job
        details = job_details(job, self.mlsm.now(), self.forwards)
        self.query_one("#job-details", PlainStatic).update(details)
        self.query_one("#job-title", PlainStatic).update(job_title(job), layout=False)

    def action_shell(self) -> None:
        """The job's shell in this terminal (the app suspends meanwhile; see tui.shell)."""
        job = self.job
        if job is None or job.state != "running":
            state = job.state if job is not None else "not loaded"
            self.notify(f"job {self.job_id} is {state}: a shell opens only into a running job")
            return
        said = (
            open_shell(self.app, job.id, self.source.shell_env(), self.shell_runner)
            if self.shell_runner is not None
            else open_shell(self.app, job.id, self.source.shell_env())
        )
        self.notify(said)
        self.refresh(layout=True)

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        if tab == "log":
            self.query_one(LogView).focus_log()
        elif tab == "files":
            self._show_files()

    @on(TabbedContent.TabActivated)
    def _tab_shown(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "files":
            self._show_files()

    def _show_files(self) -> None:
        """The listing is fetched the first time the tab is shown (then on ``r``)."""
        try:
            pane = self.query_one(FilesPane)
        except NoMatches:  # not mounted yet: TabActivated calls again
            return
        if not pane.entries:
            pane.load()
        pane.query_one("#output-files").focus()

    def action_cancel_job(self) -> None:
        if self.job:
            self.actions.cancel_job(self.job)

    @work(exclusive=True, group="log")
    async def stream_log(self) -> None:
        """The tail of the log, then follow it live; reconnect while the master is away."""
        try:
            view = self.query_one(LogView)
        except NoMatches:  # the screen closed before the worker started
            return
        offset: int | None = None
        while True:
            try:
                if offset is None:
                    job = await self.source.job(self.job_id)
                    start = max(0, job.log_size - LOG_TAIL_BYTES)
                    data = await self.source.log(self.job_id, offset=start)
                    text = data.decode("utf-8", "replace")
                    if start:
                        text = text.split("\n", 1)[1] if "\n" in text else ""
                    view.append(text)
                    offset = start + len(data)
                    if job.state in api.FINAL_STATES and offset >= job.log_size:
                        view.end(job.state)
                        return
                async for event in self.source.follow_log(self.job_id, offset):
                    if isinstance(event, LogText):
                        # Raw chunks: a line may be split across events. The view holds
                        # the unfinished tail until its newline (or the end) arrives.
                        # Resume after the bytes shown, not at the event's offset: that
                        # also counts a character the master has not sent whole yet.
                        view.append(event.text)
                        offset += len(event.text.encode())
                    elif isinstance(event, AttemptStarted):
                        view.append(
                            ("\n" if view.pending else "") + f"--- attempt {event.attempt} ---\n"
                        )
                        offset = 0
                    else:
                        view.end(event.state)
                        return
                return
            except UnavailableError:
                await asyncio.sleep(LOG_RETRY_S)
            except MlsmError as exc:
                view.append(f"[log unavailable: {exc.message}]\n")
                return
