"""Five minutes of faults with nothing lost: ``tests/bench/soak.py --minutes 5`` must pass
every check (marked ``soak``: ``pytest -m soak tests/soak``, .ci/run's soak phase).

The soak runs as its own process, as an operator runs it: a real master, 4 real agents,
kill -9 of agents and the master, a cut connection and a full node disk (a tmpfs: as root).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ci import require

SOAK = Path(__file__).resolve().parents[1] / "bench" / "soak.py"
CI_MINUTES = 5
FAULTS = ("agent_kill", "master_kill", "cut", "disk_full")  # each happens in every run
#: The run, the settling (at most SETTLE_S there) and the checks, with room for a slow box.
TIMEOUT_S = CI_MINUTES * 60 + 600

pytestmark = [pytest.mark.soak, pytest.mark.timeout(TIMEOUT_S)]


def test_five_minutes_of_faults_lose_nothing(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "the full-disk fault mounts a tmpfs, which needs root")
    report = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(SOAK), "--minutes", str(CI_MINUTES), "--report", str(report)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    print(proc.stdout[-20000:])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    figures = json.loads(report.read_text())
    assert figures["skipped"] == {}, figures["skipped"]
    assert set(figures["faults"]) == set(FAULTS), figures["faults"]
    assert all(c["ok"] for c in figures["checks"].values()), figures["checks"]
