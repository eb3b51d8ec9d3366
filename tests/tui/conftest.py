"""Fixtures of the dashboard tests: a fake lab (test double) and a real master process."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from rich.console import Console
from textual.pilot import Pilot

sys.path.insert(0, str(Path(__file__).parent))

from fakes import NOW, FakeSource

from mlsm.termsafe import is_unsafe
from tests.conftest import free_port
from tui.app import MlsmApp

MASTER_START_TIMEOUT_S = 30.0
ADMIN_PASSWORD = "admin-password-1"
MLSM = str(Path(sys.executable).parent / "mlsm")


#: Pauses the app gets to take in a poll or open a screen.
MAX_PAUSES = 100
#: Textual's own sequences in a frame (cursor moves, colours): CSI ... final byte.
_CSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


async def until(pilot: Pilot[None], condition: Callable[[], object], what: str) -> None:
    """Let the app run until ``condition()`` holds; fail after ``MAX_PAUSES`` pauses."""
    for _ in range(MAX_PAUSES):
        if condition():
            return
        await pilot.pause()
    raise AssertionError(f"never happened: {what}")


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
    from mlsm.client import Client

    port = free_port()
    data_dir = tmp_path / "master"
    env = {**os.environ, "MLSM_PASSWORD": ADMIN_PASSWORD, "HOME": str(tmp_path)}
    log = (tmp_path / "master.log").open("wb")
    proc = subprocess.Popen(
        [MLSM, "master", "--data-dir", str(data_dir), "--port", str(port), "--init-admin", "admin"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + MASTER_START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"master exited: {(tmp_path / 'master.log').read_text()[-2000:]}")
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("master did not answer /healthz in time")
            time.sleep(
                0.1
            )  # polling a subprocess with a deadline, not waiting for a condition blindly
        with Client(url) as client:
            token = client.login("admin", ADMIN_PASSWORD).token
        yield RealMaster(url=url, token=token, data_dir=data_dir, proc=proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
