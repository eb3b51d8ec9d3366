"""The master's log lines: plain text for a person on a terminal, JSON for programs
(a file, journald), and either one on demand (``--log-format`` / ``MLSM_LOG_FORMAT``)."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
from pathlib import Path

import pytest

from tests.integration.lab import free_port
from tests.support.env import isolated_env
from tests.support.master import MLSM, START_TIMEOUT_S
from tests.support.wait import wait_until

READ_CHUNK = 65536


def _master_lines_on_a_terminal(tmp_path: Path, *extra: str, **env: str) -> list[str]:
    """Start ``mlsm master`` with stderr on a pseudo-terminal; its lines up to "listening"."""
    fd, term = pty.openpty()
    proc = subprocess.Popen(
        [MLSM, "master", "--port", str(free_port()), "--data-dir", str(tmp_path / "d"), *extra],
        stdin=subprocess.DEVNULL,
        stdout=term,
        stderr=term,
        env=isolated_env(tmp_path, **env),
    )
    os.close(term)
    got = bytearray()

    def listening() -> bool:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                got.extend(os.read(fd, READ_CHUNK))
            except OSError:
                pass
        return b"listening on" in got

    try:
        wait_until(listening, START_TIMEOUT_S, "the master's 'listening on' line on the terminal")
    finally:
        proc.terminate()
        proc.wait(timeout=START_TIMEOUT_S)
        os.close(fd)
    return [ln for ln in got.decode(errors="replace").splitlines() if ln.strip()]


def test_on_a_terminal_the_master_writes_plain_lines(tmp_path: Path) -> None:
    lines = _master_lines_on_a_terminal(tmp_path)
    listening = next(ln for ln in lines if "listening on" in ln)
    assert not listening.lstrip().startswith("{"), listening
    assert " info " in listening and "mlsm.master" in listening, listening


@pytest.mark.parametrize("how", ["flag", "env"])
def test_json_on_a_terminal_when_asked(tmp_path: Path, how: str) -> None:
    if how == "flag":
        lines = _master_lines_on_a_terminal(tmp_path, "--log-format", "json")
    else:
        lines = _master_lines_on_a_terminal(tmp_path, MLSM_LOG_FORMAT="json")
    listening = next(ln for ln in lines if "listening on" in ln)
    record = json.loads(listening)
    assert record["level"] == "info" and "listening on" in record["msg"]
