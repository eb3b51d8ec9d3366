"""What the real ``mlsm`` CLI puts on a terminal when lab data is hostile.

A real master and agent hold jobs, tokens and audit rows whose names carry an OSC title
sequence, a CSI sequence, a bidi override and a C1 control; a job writes the same into its
log. Listings and ``show`` views print them with their controls visible, ``--json`` stays
exact JSON, ``mlsm logs`` to a pseudo-terminal shows them as text (``--raw`` and pipes get
the exact bytes), and an error line from a hostile server (JSON message or HTTP reason
phrase) is one visible line.
"""

from __future__ import annotations

import contextlib
import os
import pty
import select
import socket
import subprocess
import threading
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlsm.termsafe import SGR_RESET, visible
from tests.integration.lab import CLI_TIMEOUT_S, MLSM, Lab
from tests.support.env import isolated_env

OSC_TITLE = "\x1b]0;PWNED\x07"
HOSTILE = f"evil{OSC_TITLE}\x1b[2J\u202eexe.txt\x9b"
SHOWN = "evil\\x1b]0;PWNED\\x07\\x1b[2J\\u202eexe.txt\\x9b"
#: Characters that must never reach the terminal from data (Textual and the CLI's own
#: styling are not in play here: stdout is captured, so no bold header is written).
RAW = ("\x1b", "\x07", "\u202e", "\x9b")
#: What the job writes: a progress bar redrawn with \r, a colour, then the hostile bytes.
LOG = (
    "step 1\tloss 0.5\n\r 10%|#   |\r 20%|##  |\n\x1b[32mgreen\x1b[0m\n"
    f"name {OSC_TITLE} clear\x1b[2J rlo\u202e bell\x07 end\n"
)
LOG_SHOWN = (
    "step 1\tloss 0.5\n\r 10%|#   |\r 20%|##  |\n\x1b[32mgreen\x1b[0m\n"
    "name \\x1b]0;PWNED\\x07 clear\\x1b[2J rlo\\u202e bell\\x07 end\n"
)
PTY_READ_CHUNK = 65536


def _printf_arg(text: str) -> str:
    """``text`` as a printf(1) format: every byte outside printable ASCII as octal."""
    out = []
    for b in text.encode():
        if b == ord("%"):
            out.append("%%")
        elif b == ord("\\"):
            out.append("\\\\")
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append(f"\\{b:03o}")
    return "".join(out)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("terminal")) as lab:
        lab.start_master()
        lab.start_agent("t1")
        yield lab


@pytest.fixture(scope="module")
def hostile_job(lab: Lab) -> int:
    """A finished job with a hostile name and command (an unused ``$0``) that wrote ``LOG``."""
    script = f"printf '{_printf_arg(LOG)}'"
    assert "'" not in _printf_arg(LOG)
    job_id = lab.submit("--name", HOSTILE, "--", "sh", "-c", script, HOSTILE)
    job = lab.wait_job(job_id)
    assert job.state == "succeeded", job
    return job_id


@pytest.fixture(scope="module")
def job_log(lab: Lab, hostile_job: int) -> bytes:
    """The job's whole log: the agent's plain header lines around what the job wrote."""
    log = lab.log(hostile_job)
    assert log.count(LOG.encode()) == 1, log
    assert visible(log.decode().replace(LOG, ""), "\n") == log.decode().replace(LOG, "")
    return log


def _assert_safe(text: str) -> None:
    leaked = [hex(ord(ch)) for ch in RAW if ch in text]
    assert not leaked, f"raw {leaked} reached the terminal: {text!r}"


# ------------------------------------------------------------------ listings and views
def test_jobs_list_shows_a_hostile_name_visibly(lab: Lab, hostile_job: int) -> None:
    res = lab.cli("jobs", "--all")
    assert res.returncode == 0, res.stderr
    _assert_safe(res.stdout)
    row = next(line for line in res.stdout.splitlines() if line.startswith(f"{hostile_job} "))
    assert visible(HOSTILE[:24]) in row


def test_job_show_shows_name_and_command_visibly(lab: Lab, hostile_job: int) -> None:
    res = lab.cli("job", "show", str(hostile_job))
    assert res.returncode == 0, res.stderr
    _assert_safe(res.stdout)
    assert f"job        {hostile_job} {SHOWN}\n" in res.stdout
    command = res.stdout.split("\ncommand", 1)[1].splitlines()[0]
    assert command.endswith(f"'{SHOWN}'")


def test_json_stays_exact(lab: Lab, hostile_job: int) -> None:
    res = lab.cli("job", "show", str(hostile_job), "--json")
    assert res.returncode == 0, res.stderr
    _assert_safe(res.stdout)
    assert res.json()["name"] == HOSTILE


def test_token_list_shows_a_hostile_token_name_visibly(lab: Lab) -> None:
    made = lab.cli("token", "create", HOSTILE)
    assert made.returncode == 0, made.stderr
    _assert_safe(made.stderr)
    assert SHOWN in made.stderr
    res = lab.cli("token", "list")
    assert res.returncode == 0, res.stderr
    _assert_safe(res.stdout)
    assert SHOWN in res.stdout


def test_audit_shows_hostile_targets_and_paths_visibly(lab: Lab) -> None:
    lab.cli("token", "create", f"audit-{HOSTILE}")
    # a refused mutation on a path that carries the escape: the row's target is the path
    with contextlib.suppress(Exception):
        lab.admin.call("PATCH", "/api/v1/users/x%1b]0;PATH%07", json={"disabled": True})
    rows = lab.cli("audit", "--json").json()
    fields = [str(v) for r in rows for v in (r["actor"], r["action"], r["target"], r["client"])]
    assert any(visible(f) != f for f in fields), "no hostile audit row to show"
    res = lab.cli("audit")
    assert res.returncode == 0, res.stderr
    _assert_safe(res.stdout)
    for field in fields:
        assert visible(field) in res.stdout


# ------------------------------------------------------------------ logs
def _run_on_pty(lab: Lab, *args: str) -> tuple[int, bytes, str]:
    """Run ``mlsm`` with stdout on a pseudo-terminal in raw mode (no newline translation);
    returns (exit code, what the terminal received, stderr)."""
    master_fd, slave_fd = pty.openpty()
    tty.setraw(slave_fd)
    env = lab.env(MLSM_URL=lab.url, MLSM_TOKEN=lab.token)
    proc = subprocess.Popen(
        [MLSM, *args],
        stdin=subprocess.DEVNULL,
        stdout=slave_fd,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(slave_fd)
    got = bytearray()
    try:
        while True:
            ready, _, _ = select.select([master_fd], [], [], CLI_TIMEOUT_S)
            assert ready, f"no output from mlsm {' '.join(args)} within {CLI_TIMEOUT_S} s"
            try:
                chunk = os.read(master_fd, PTY_READ_CHUNK)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not chunk:
                break
            got += chunk
        rc = proc.wait(timeout=CLI_TIMEOUT_S)
        assert proc.stderr is not None
        return rc, bytes(got), proc.stderr.read().decode(errors="replace")
    finally:
        os.close(master_fd)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_logs_to_a_terminal_show_escape_sequences_as_text(
    lab: Lab, hostile_job: int, job_log: bytes
) -> None:
    rc, got, err = _run_on_pty(lab, "logs", str(hostile_job))
    assert rc == 0, err
    assert got.decode() == job_log.decode().replace(LOG, LOG_SHOWN) + SGR_RESET


def test_logs_raw_to_a_terminal_pass_every_byte(lab: Lab, hostile_job: int, job_log: bytes) -> None:
    rc, got, err = _run_on_pty(lab, "logs", "--raw", str(hostile_job))
    assert rc == 0, err
    assert got == job_log


def test_logs_into_a_pipe_are_exact(lab: Lab, hostile_job: int, job_log: bytes) -> None:
    res = lab.cli("logs", str(hostile_job))
    assert res.returncode == 0, res.stderr
    assert res.stdout_bytes == job_log


def test_logs_follow_to_a_terminal_show_escape_sequences_as_text(
    lab: Lab, hostile_job: int
) -> None:
    rc, got, err = _run_on_pty(lab, "logs", "-f", str(hostile_job))
    assert rc == 0, err
    text = got.decode()
    _assert_safe(text.replace("\x1b[32m", "").replace("\x1b[0m", ""))
    assert "name \\x1b]0;PWNED\\x07 clear\\x1b[2J rlo\\u202e bell\\x07 end" in text
    assert "\x1b[32mgreen\x1b[0m" in text and text.endswith(SGR_RESET)


# ------------------------------------------------------------------ error lines
class _OneShotServer:
    """Answers every connection on a loopback port with ``response`` (raw bytes)."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(self.response)

    def close(self) -> None:
        self.sock.close()
        self._thread.join(timeout=CLI_TIMEOUT_S)


def _cli_against(
    server: _OneShotServer, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[bytes]:
    env = isolated_env(tmp_path, MLSM_URL=server.url, MLSM_TOKEN="t")
    return subprocess.run(
        [MLSM, *args], capture_output=True, env=env, timeout=CLI_TIMEOUT_S, stdin=subprocess.DEVNULL
    )


def _http(status_line: bytes, content_type: str, body: bytes) -> bytes:
    return (
        status_line
        + f"\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n".encode()
        + b"Connection: close\r\n\r\n"
        + body
    )


HOSTILE_JSON = (
    '{"error": {"code": "not_found", "message": "no job \\u001b]0;PWNED\\u0007\\u202egpj.exe",'
    ' "details": {}}}'
)


@pytest.mark.parametrize(
    ("response", "line"),
    [
        (
            _http(b"HTTP/1.1 502 Bad" + OSC_TITLE.encode() + b"Gateway", "text/html", b"<h1>"),
            "mlsm: error: master error (HTTP 502 Bad\\x1b]0;PWNED\\x07Gateway)\n",
        ),
        (
            _http(b"HTTP/1.1 404 Not Found", "application/json", HOSTILE_JSON.encode()),
            "mlsm: error: no job \\x1b]0;PWNED\\x07\\u202egpj.exe\n",
        ),
    ],
    ids=["reason-phrase", "json-message"],
)
def test_an_error_line_from_a_hostile_server_is_one_visible_line(
    tmp_path: Path, response: bytes, line: str
) -> None:
    server = _OneShotServer(response)
    try:
        res = _cli_against(server, tmp_path, "jobs")
    finally:
        server.close()
    assert res.returncode == 1
    assert res.stdout == b""
    assert res.stderr.decode() == line
