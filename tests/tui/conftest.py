"""Fixtures of the dashboard tests: a fake lab (test double) and a real master process
(:class:`tests.support.master.MasterProcess`); helpers to build the app and read its screen.

Imported by name where a test needs a helper: ``from tests.tui.conftest import make_app``.
Waits go through :func:`tests.support.wait.pilot_until`."""

from __future__ import annotations

import io
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from mlsm.termsafe import is_unsafe
from tests.support.master import MasterProcess
from tests.tui.fakes import NOW, FakeSource
from tui.app import MlsmApp

ADMIN = "admin"
ADMIN_PASSWORD = "admin-password-1"

#: Textual's own sequences in a frame (cursor moves, colours): CSI ... final byte.
_CSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def frame(app: MlsmApp) -> tuple[str, str]:
    """The bytes the dashboard would write to the terminal for the whole screen now (as
    ``App.export_screenshot`` renders them), and their text without Textual's own CSI
    sequences: ``(raw, text)``."""
    console = Console(
        width=app.size.width,
        height=app.size.height,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
        legacy_windows=False,
        safe_box=False,
    )
    console.print(
        app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    )
    raw = console.file.getvalue()  # type: ignore[attr-defined]
    return raw, _CSI.sub("", raw)


def assert_screen_safe(app: MlsmApp) -> str:
    """Nothing but Textual's own CSI sequences reaches the terminal: no OSC (a title), no
    other escape, control, C1 or bidi character from the data. Returns the screen text."""
    _, text = frame(app)
    leaked = sorted({hex(ord(ch)) for ch in text if is_unsafe(ch) and ch not in "\r\n"})
    assert not leaked, f"{leaked} reached the terminal on {type(app.screen).__name__}"
    return text


def make_app(source: FakeSource | None = None, **kwargs: object) -> MlsmApp:
    """The real app over the fake source, with a frozen clock and no polling between steps."""
    kwargs.setdefault("clock", lambda: NOW)
    kwargs.setdefault("poll_s", 3600.0)
    return MlsmApp(source or FakeSource(), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def fake() -> FakeSource:
    return FakeSource()


@dataclass
class RealMaster:
    url: str
    token: str
    data_dir: Path
    proc: subprocess.Popen[bytes]


@pytest.fixture
def real_master(tmp_path: Path) -> Iterator[RealMaster]:
    """``mlsm master`` on a free loopback port with superadmin ``admin``, logged in."""
    master = MasterProcess(
        tmp_path / "master",
        log_path=tmp_path / "master.log",
        home=tmp_path,
        admin=ADMIN,
        password=ADMIN_PASSWORD,
    )
    try:
        master.start()
        assert master.proc is not None
        token = master.session_token()
        yield RealMaster(url=master.url, token=token, data_dir=master.data_dir, proc=master.proc)
    finally:
        master.stop()
