"""Sessions and port forwards, end to end: the real ``mlsm session`` and ``mlsm forward``
against a real master and agent. A session waits in the queue behind a job that holds
the GPUs, opens its shell once placed, and ends when the shell leaves (unless --keep); a
forward carries an HTTP server's reply over several connections at once, is listed on
the job, and ends when the job ends."""

from __future__ import annotations

import concurrent.futures
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pexpect
import pytest

from tests.integration.lab import Lab
from tests.integration.test_shell import EXPECT_S, prompt, run, spawn
from tests.support.procs import free_port
from tests.support.wait import wait_until

NODE = "se1"
SESSION_LIMIT_S = 1234.0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("sessions")) as lab:
        lab.start_master(MLSM_SESSION_TIME_LIMIT=str(SESSION_LIMIT_S))
        lab.start_agent(NODE)  # two simulated GPUs
        yield lab


@pytest.fixture(autouse=True)
def _cancel_jobs(lab: Lab) -> Iterator[None]:
    yield
    ids = [j.id for j in lab.admin.jobs.list().jobs]
    if ids:
        lab.admin.jobs.cancel(ids)
        for i in ids:
            lab.wait_job(i)


def test_a_session_waits_in_the_queue_then_opens_and_ends_with_its_shell(lab: Lab) -> None:
    blocker = lab.submit("--gpus", "2", "--", "sleep", "600")
    lab.wait_job(blocker, "running")
    child = spawn(lab, "session", "--gpus", "1")
    child.expect(r"session (\d+) queued")
    session_id = int(child.match.group(1))
    child.expect(f"session {session_id} is queued: ")  # the scheduler's reason, said once
    assert lab.job(session_id).kind == "session"
    lab.admin.jobs.cancel([blocker])
    child.expect(f"session {session_id} runs on {NODE}")
    prompt(child)
    out = run(child, "echo cuda=$CUDA_VISIBLE_DEVICES")
    job = lab.job(session_id)
    assert f"cuda={job.gpu_indices[0]}" in out
    assert job.timeout_s == SESSION_LIMIT_S  # the lab's default limit for a session
    child.sendline("exit 4")
    child.expect(f"session {session_id} ended")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 4
    ended = lab.wait_job(session_id)
    assert ended.state == "cancelled" and "last shell left" in ended.reason


def test_a_kept_session_outlives_its_shell(lab: Lab) -> None:
    child = spawn(lab, "session", "--gpus", "0", "--keep", "--time", "10m")
    child.expect(r"session (\d+) queued")
    session_id = int(child.match.group(1))
    prompt(child)
    child.sendline("exit")
    child.expect(f"session {session_id} keeps running")
    child.expect(pexpect.EOF)
    job = lab.job(session_id)
    assert job.state == "running" and job.session_keep and job.timeout_s == 600


def _http_job(lab: Lab, tmp: Path, port: int) -> int:
    site = tmp / "site"
    site.mkdir(exist_ok=True)
    (site / "hello.txt").write_text("hello through the master\n")
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    job_id = lab.submit("--gpus", "0", "--workdir", str(site), "--no-code", "--", *argv)
    lab.wait_job(job_id, "running")

    def listening() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/hello.txt").status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(listening, EXPECT_S, "the job's HTTP server")
    return job_id


def test_a_forward_carries_an_http_servers_reply_and_ends_with_the_job(
    lab: Lab, tmp_path: Path
) -> None:
    job_port, local_port = free_port(), free_port()
    job_id = _http_job(lab, tmp_path, job_port)
    fwd = lab.cli_popen("forward", str(job_id), str(job_port), str(local_port))
    assert fwd.stderr is not None
    line = fwd.stderr.readline().decode()
    assert f"forwarding 127.0.0.1:{local_port} -> port {job_port} of job {job_id}" in line

    def fetch(_: int) -> str:
        return httpx.get(f"http://127.0.0.1:{local_port}/hello.txt", timeout=EXPECT_S).text

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(fetch, range(8)))
    assert replies == ["hello through the master\n"] * 8

    listed = lab.admin.jobs.forwards(job_id)
    assert [(f.port, f.local, f.user) for f in listed] == [
        (job_port, f"127.0.0.1:{local_port}", "root")
    ]
    lab.admin.jobs.cancel([job_id])
    _out, err = fwd.communicate(timeout=EXPECT_S)
    assert fwd.returncode == 1
    assert f"job {job_id} ended" in err.decode()
    assert err.decode().count("\n") == 1  # one error line after the "forwarding" one
    assert lab.admin.jobs.forwards(job_id) == []
    rows = lab.admin.audit.list(action="job.forward.close")
    assert any(r.target == f"job:{job_id}" for r in rows)


def test_a_forward_to_a_port_nothing_listens_on_says_so(lab: Lab, tmp_path: Path) -> None:
    job_port, local_port = free_port(), free_port()
    job_id = _http_job(lab, tmp_path, job_port)
    dead = free_port()
    fwd = lab.cli_popen("forward", str(job_id), str(dead), str(local_port))
    assert fwd.stderr is not None
    fwd.stderr.readline()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{local_port}/", timeout=EXPECT_S)
    line = fwd.stderr.readline().decode()
    assert f"nothing of the job's listens on port {dead}" in line
    fwd.terminate()
    fwd.wait(timeout=EXPECT_S)


def test_forwards_of_another_members_job_are_refused(lab: Lab) -> None:
    alice = lab.add_user("alice-fw")
    bob = lab.add_user("bob-fw")
    job_id = lab.submit("--gpus", "0", "--", "sleep", "600", token=alice)
    lab.wait_job(job_id, "running")
    res = lab.cli("forward", str(job_id), "8000", str(free_port()), token=bob)
    assert res.returncode == 1 and "belongs to alice-fw" in res.stderr
    assert res.stderr.count("\n") == 1
    with pytest.raises(Exception, match="belongs to alice-fw"):
        lab.client(bob).jobs.forwards(job_id)


def test_a_jupyter_session_prints_a_url_that_works_through_the_forward(
    lab: Lab, tmp_path: Path
) -> None:
    """--jupyter runs `jupyter lab` from the session's environment (here a venv whose
    `jupyter` is a stand-in HTTP server that checks the token) and prints the forward
    command and the URL; the URL answers through `mlsm forward`."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    fake = venv / "bin" / "jupyter"
    fake.write_text(JUPYTER_STAND_IN.replace("PYTHON", sys.executable))
    fake.chmod(0o755)
    jport = free_port()
    child = spawn(
        lab, "session", "--gpus", "0", "--venv", str(venv), "--jupyter",
        "--jupyter-port", str(jport),
    )  # fmt: skip
    child.expect(r"open (http://127\.0\.0\.1:\d+/lab\?token=([0-9a-f]+))")
    url, token = child.match.group(1), child.match.group(2)
    prompt(child)
    assert f"tok={token}" in run(child, "echo tok=$JUPYTER_TOKEN")
    session_id = max(j.id for j in lab.admin.jobs.list().jobs if j.kind == "session")
    fwd = lab.cli_popen("forward", str(session_id), str(jport))
    assert fwd.stderr is not None
    fwd.stderr.readline()
    body = wait_until(lambda: _get(url), EXPECT_S, "JupyterLab through the forward")
    assert body == "jupyter ok\n"
    fwd.terminate()
    fwd.wait(timeout=EXPECT_S)
    child.sendline("exit")
    child.expect(pexpect.EOF)


def _get(url: str) -> str | None:
    try:
        resp = httpx.get(url, timeout=EXPECT_S)
    except httpx.HTTPError:
        return None
    return resp.text if resp.status_code == 200 else None


#: `jupyter lab --no-browser --ip=127.0.0.1 --port=N ...`: answers /lab?token=<JUPYTER_TOKEN>.
JUPYTER_STAND_IN = """#!PYTHON
import http.server, os, sys
port = int(next(a for a in sys.argv if a.startswith("--port=")).split("=")[1])
token = os.environ["JUPYTER_TOKEN"]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == f"/lab?token={token}"
        self.send_response(200 if ok else 403)
        self.end_headers()
        self.wfile.write(b"jupyter ok\\n" if ok else b"no\\n")
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""
