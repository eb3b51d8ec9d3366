"""What people see of a copy in progress: ``mlsm dataset copy --wait`` on a terminal and the
dashboard's transfers view, against a real master and real agents.

The copy is held half way (the source agent stopped with SIGSTOP once the target holds a
third of the file), so the running state is seen on a machine of any speed; then the
source goes on and the copy ends. Both views must name the path the bytes take.
"""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlsm.wire import api
from tests.integration.lab import MLSM, Lab
from tests.support.wait import pilot_until, wait_until
from tui.app import MlsmApp
from tui.source import MasterSource
from tui.widgets.table import LabTable

DEADLINE_S = 120.0
BIG = 64 << 20
HELD_AT = 0.3


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("progress")) as lab:
        lab.start_master()
        for name in ("shown-cli", "shown-tui"):
            p = lab.root / "roots" / "pga" / name / "big.bin"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(os.urandom(BIG))
        for node in ("pga", "pgb"):
            lab.start_agent(node, gpus="", dataset_roots=[lab.root / "roots" / node])
        wait_until(
            lambda: len(lab.admin.call("GET", "/api/v1/datasets", type=list[api.Dataset])) == 2,
            DEADLINE_S,
            "both datasets in the catalog",
        )
        yield lab


def work_file(lab: Lab, name: str) -> Path | None:
    for p in (lab.root / "roots" / "pgb").glob(f".mlsm-bulk-{name}-*/tree/big.bin"):
        return p
    return None


def hold_source(lab: Lab, name: str) -> None:
    def far() -> bool:
        p = work_file(lab, name)
        try:
            return p is not None and p.stat().st_size >= BIG * HELD_AT
        except FileNotFoundError:
            return False

    wait_until(far, DEADLINE_S, f"{name} a third received", poll_s=0.005)
    os.kill(lab.agents["pga"].proc.pid, signal.SIGSTOP)


def release_source(lab: Lab) -> None:
    os.kill(lab.agents["pga"].proc.pid, signal.SIGCONT)


def test_wait_shows_the_path_while_the_copy_runs(lab: Lab) -> None:
    """On a terminal, ``--wait`` keeps a status line with the bytes and the path."""
    leader, follower = pty.openpty()
    env = lab.env(MLSM_URL=lab.url, MLSM_TOKEN=lab.token)
    proc = subprocess.Popen(
        [MLSM, "dataset", "copy", "shown-cli", "--from", "pga", "--to", "pgb", "--wait"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    seen = bytearray()

    def drain() -> None:
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:
                return
            if not data:
                return
            seen.extend(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        hold_source(lab, "shown-cli")
        try:
            wait_until(
                lambda: b"running" in seen and b"direct: " in seen,
                DEADLINE_S,
                "a running status line naming the path",
            )
        finally:
            release_source(lab)
        out, _ = proc.communicate(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(5)
        os.close(leader)
    assert proc.returncode == 0, bytes(seen).decode(errors="replace")
    assert b"MiB" in seen  # bytes so far, of the total
    final = out.decode()
    assert "succeeded" in final and "direct" in final, final


def cell(app: MlsmApp, row: str, column: str) -> str:
    table = app.screen.query_one("#transfers", LabTable)
    return str(table.get_cell(row, column))


def has_row(app: MlsmApp, row: str) -> bool:
    found = app.screen.query("#transfers")
    return bool(found) and row in {str(r.key.value) for r in found.first(LabTable).ordered_rows}


async def test_the_dashboard_shows_a_copy_and_its_path(lab: Lab) -> None:
    app = MlsmApp(MasterSource(lab.url, lab.token), poll_s=0.3)
    body = api.DatasetTransfer(name="shown-tui", src="pga", dst="pgb")
    async with app.run_test(size=(200, 40)) as pilot:
        await pilot.press("3")
        # Started once the view is up, and held from the target's own disk, so even a
        # slow start of the app cannot miss the copy running.
        t = lab.admin.call("POST", "/api/v1/datasets/transfer", json=body, type=api.Transfer)
        row = str(t.id)
        hold_source(lab, "shown-tui")
        try:
            await pilot_until(
                pilot,
                lambda: has_row(app, row) and "direct: " in cell(app, row, "msg"),
                "the running copy with its path",
                DEADLINE_S,
            )
            assert cell(app, row, "state") == "running"
            assert "%" in cell(app, row, "prog")
        finally:
            release_source(lab)
        await pilot_until(
            pilot,
            lambda: cell(app, row, "state") == "succeeded",
            "the copy to end in the view",
            DEADLINE_S,
        )
        assert "direct" in cell(app, row, "msg")
