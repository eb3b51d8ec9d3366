"""A running agent imports only its own side of the house.

The agent process runs on every GPU server: it must not load the master (and with it
Litestar, SQLAlchemy's models, the routes) or the dashboard, which it has no use for
(the import rules of docs/architecture.md). The test starts a real ``mlsm agent`` with
Python's import profiler on (``PYTHONPROFILEIMPORTTIME``: one ``import time:`` line per
module it loads, on stderr), lets it join, run a job to its end and scan a dataset root,
stops it, and reads every module it imported from its own output.
"""

from __future__ import annotations

import signal
from pathlib import Path

from tests.integration.lab import Lab

#: Top-level packages and package prefixes an agent process must never import.
FORBIDDEN = ("litestar", "mlsm.master", "mlsm.cli.master", "tui")
PROFILE_PREFIX = "import time:"


def imported_modules(output: str) -> set[str]:
    """Modules named by the profiler's lines ``import time: self | cumulative | name``."""
    names = set()
    for line in output.splitlines():
        if line.startswith(PROFILE_PREFIX) and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def test_a_running_agent_imports_no_master_litestar_or_dashboard(tmp_path: Path) -> None:
    with Lab(tmp_path) as lab:
        lab.start_master()
        root = tmp_path / "datasets"
        (root / "mnist").mkdir(parents=True)
        (root / "mnist" / "train.bin").write_bytes(b"0" * 64)
        agent = lab.start_agent("lean", env={"PYTHONPROFILEIMPORTTIME": "1"}, dataset_roots=[root])
        job = lab.submit("--node", "lean", "--", "echo", "hello")
        assert lab.wait_job(job).state == "succeeded"
        assert lab.stop_agent("lean", signal.SIGTERM) == 0
        modules = imported_modules(agent.output())
    # The profile is really there, covering the agent, its runtimes and its dataset code.
    assert {"agent.main", "agent.runtimes.process", "agent.datasets.scan"} <= modules
    assert sorted(m for m in modules if _forbidden(m)) == []
