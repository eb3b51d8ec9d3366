"""``s`` on a running job: its shell, in the dashboard's own terminal.

The dashboard suspends itself (Textual's ``App.suspend``: the terminal goes back to its
normal mode, the app stops reading keys and drawing) and runs ``mlsm shell JOB`` as a
child process in that terminal, as the same user: the child gets the dashboard's master
URL and token in its environment (never on its command line, which other accounts can
read). When the shell exits, the dashboard takes the terminal back and redraws. Where the
app cannot lend its terminal (the dashboard served in a browser by ``mlsm web``), it says
to run ``mlsm shell JOB`` in a terminal instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from textual.app import App, SuspendNotSupported

#: Runs the shell command in the (suspended) terminal; returns its exit status.
Runner = Callable[[list[str], dict[str, str]], int]


def _run(argv: list[str], env: dict[str, str]) -> int:
    return subprocess.run(argv, env=env, check=False).returncode


def shell_argv(job_id: int) -> list[str]:
    return [sys.executable, "-m", "mlsm", "shell", str(job_id)]


def open_shell(app: App[object], job_id: int, env: dict[str, str], runner: Runner = _run) -> str:
    """Run job ``job_id``'s shell in the app's terminal; returns what to tell the user."""
    child_env = {**os.environ, **env}
    try:
        with app.suspend():
            code = runner(shell_argv(job_id), child_env)
    except SuspendNotSupported:
        return f"no terminal to lend here: run `mlsm shell {job_id}` in a terminal"
    return f"shell in job {job_id} ended (exit status {code})"
