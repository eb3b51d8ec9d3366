"""What the first screen waits for: only its own modules, and one round trip to the master
for the user and the lab together (fake lab, a test double; a real interpreter for the
imports)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from mlsm.wire import api
from tests.support.wait import pilot_until
from tests.tui.conftest import make_app
from tests.tui.fakes import FakeSource
from tui.source import Overview

#: Modules of other screens (their charts, the log view, output downloads).
NOT_FOR_THE_FIRST_SCREEN = (
    "plotext",
    "textual_plotext",
    "tui.screens.usage",
    "tui.screens.job",
    "tui.screens.admin",
    "tui.widgets.logview",
    "tui.outputs",
)


def test_the_dashboard_loads_without_the_other_screens_modules() -> None:
    code = (
        "import sys\n"
        "from tui.app import MlsmApp\n"
        "from tui.source import MasterSource\n"
        f"print(*sorted(m for m in {NOT_FOR_THE_FIRST_SCREEN!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == []


class OneTrip(FakeSource):
    """Answers who the user is only once the lab was asked for too: a dashboard that asks
    one after the other never gets its first data."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()

    async def me(self) -> api.Me:
        await self.asked.wait()
        return await super().me()

    async def overview(self) -> Overview:
        self.asked.set()
        return await super().overview()


async def test_the_user_and_the_first_screen_s_data_are_asked_for_together() -> None:
    app = make_app(OneTrip())
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot_until(pilot, lambda: app.first_data_at is not None, "first data")
        assert app.conn.user == "admin"
