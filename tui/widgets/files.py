"""The job screen's Files tab: browse a job's outputs on its node, view a text file (its
tail, then follow it as it grows) and download files or directories to this machine.

Everything goes through the dashboard's data source (the master relays from the node), in
workers: the listing (``r`` reloads it), a file's tail when a row is opened (enter), its
growth every :data:`FOLLOW_S` while the view follows (``f`` in the view), a download of
the row under the cursor (``d``: into the dashboard's working directory, ``D``: into a
directory you name; a directory row brings its whole subtree). Names from the node are
shown with their controls visible, like every other text from a remote host.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable

from mlsm.errors import MlsmError
from mlsm.termsafe import visible
from mlsm.wire.outputs import OutputEntry
from tui import fmt
from tui.widgets.logview import LogView
from tui.widgets.plain import PlainStatic
from tui.widgets.table import LabTable

if TYPE_CHECKING:
    from tui.screens.base import Dashboard

#: How often a followed file is asked for its new bytes.
FOLLOW_S = 2.0
KIND_LABEL = {"f": "", "d": "dir", "l": "link", "o": "other"}


class FilesPane(Vertical):
    DEFAULT_CSS = """
    FilesPane { height: 1fr; }
    FilesPane > #files-info { height: 1; background: $boost; }
    FilesPane > #output-files { height: 1fr; }
    FilesPane > #file-view { height: 1fr; display: none; }
    FilesPane.-viewing > #file-view { display: block; }
    """
    BINDINGS = [
        Binding("r", "reload", "Reload files"),
        Binding("d", "download", "Download here"),
        Binding("D", "download_to", "Download to…"),
    ]

    def __init__(self, job_id: int, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.job_id = job_id
        self.entries: dict[str, OutputEntry] = {}
        self.viewing: str | None = None
        self.downloads_dir = Path.cwd()

    @property
    def dash(self) -> Dashboard:
        return cast("Dashboard", self.app)

    def compose(self) -> ComposeResult:
        yield PlainStatic(" files: not loaded (r)", id="files-info")
        yield LabTable(id="output-files")
        yield LogView(id="file-view")

    def on_mount(self) -> None:
        table = self.query_one("#output-files", LabTable)
        for label, key, width in (
            ("Path", "path", None),
            ("Size", "size", 10),
            ("Modified", "mtime", 12),
            ("", "kind", 6),
        ):
            table.add_column(label, key=key, width=width)

    def info(self, text: str | Text) -> None:
        self.query_one("#files-info", PlainStatic).update(text)

    # ---------------------------------------------------------------- listing
    def action_reload(self) -> None:
        self.load()

    @work(exclusive=True, group="files")
    async def load(self) -> None:
        self.info(" files: loading…")
        try:
            listing = await self.dash.source.outputs(self.job_id)
        except MlsmError as exc:
            self.info(fmt.plain(f" files: {exc.message}", "red"))
            return
        now = self.dash.now()
        self.entries = {e.path: e for e in listing.entries}
        self.query_one("#output-files", LabTable).sync(
            [
                (
                    e.path,
                    [
                        visible(e.path) + ("/" if e.kind == "d" else ""),
                        "" if e.kind == "d" else fmt.human_bytes(e.size),
                        fmt.ago(e.mtime, now),
                        KIND_LABEL[e.kind],
                    ],
                )
                for e in listing.entries
            ]
        )
        more = " (first entries only)" if listing.truncated else ""
        self.info(
            f" {len(listing.entries)} entries on {visible(listing.node)}{more}"
            "  enter: view  d: download here  D: download to…  r: reload"
        )

    def _current(self) -> OutputEntry | None:
        key = self.query_one("#output-files", LabTable).current_key
        return self.entries.get(key) if key is not None else None

    # ---------------------------------------------------------------- viewing
    @on(DataTable.RowSelected, "#output-files")
    def _open(self, event: DataTable.RowSelected) -> None:
        entry = self.entries.get(str(event.row_key.value))
        if entry is None or entry.kind != "f":
            return
        self.viewing = entry.path
        view = self.query_one("#file-view", LogView)
        view.lines.clear()
        view.append("")
        self.add_class("-viewing")
        self.follow_file(entry.path)

    @work(exclusive=True, group="file-view")
    async def follow_file(self, path: str) -> None:
        """The file's tail, then its new bytes while the view follows it."""
        view = self.query_one("#file-view", LogView)
        source = self.dash.source
        try:
            got = await source.read_output(self.job_id, path, None)
            text = got.data.decode("utf-8", "replace")
            if got.start:  # a tail begins mid-line: drop the part line
                text = text.split("\n", 1)[1] if "\n" in text else ""
            view.append(text)
            offset = got.start + len(got.data)
            while self.viewing == path:
                await asyncio.sleep(FOLLOW_S)
                if not view.follow:
                    continue
                got = await source.read_output(self.job_id, path, offset)
                if got.data:
                    view.append(got.data.decode("utf-8", "replace"))
                    offset += len(got.data)
        except MlsmError as exc:
            view.append(f"\n[{path}: {exc.message}]\n")

    # ---------------------------------------------------------------- downloading
    def action_download(self) -> None:
        self._download(self.downloads_dir)

    def action_download_to(self) -> None:
        from tui.widgets.forms import Field, FormModal

        async def chosen(values: dict[str, str]) -> str:
            return values["dir"].strip() or "."

        def done(dest: str | None) -> None:
            if dest is not None:
                self.downloads_dir = Path(dest).expanduser()
                self._download(self.downloads_dir)

        self.app.push_screen(
            FormModal(
                f"Download from job {self.job_id} to",
                [Field("dir", "Directory", value=str(self.downloads_dir))],
                chosen,
                ok="Download",
            ),
            done,
        )

    def _download(self, dest: Path) -> None:
        entry = self._current()
        paths = [entry.path] if entry is not None and entry.kind in ("f", "d") else []
        self.download(paths, dest)

    @work(group="download")
    async def download(self, paths: list[str], dest: Path) -> None:
        what = ", ".join(paths) if paths else "all outputs"
        self.app.notify(f"downloading {visible(what)} of job {self.job_id}…")
        try:
            got = await self.dash.source.download_outputs(self.job_id, paths, dest)
        except MlsmError as exc:
            self.app.notify(exc.message, title="download failed", severity="error")
            return
        note = f" ({got.changed} changed while fetched)" if got.changed else ""
        self.app.notify(
            f"job {self.job_id}: {got.files} files, {fmt.human_bytes(got.bytes)} in "
            f"{visible(got.dest)}{note}",
            title="downloaded",
        )
