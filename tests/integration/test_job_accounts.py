"""Who a job runs as on an agent that runs as root (as the packaged service does), and a
hostile member's job against that agent: a real master, a real root agent, real Unix
accounts made with useradd, real processes and signals.

Rule: a member's job runs as the account the admin mapped, else the same-named regular
account, else it waits with a reason; uid 0 is never used for a member. The agent never
follows a link its job planted, whatever it does to the job (cancel, retry, restart)."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.lab import AgentProc, Lab, kill
from tests.support.ci import require
from tests.support.wait import wait_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="an agent that runs jobs as other accounts runs as root"
)
NODE = "acct"
SECRET_TEXT = "root-only secret\n"


def _useradd(name: str) -> pwd.struct_passwd:
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True)
    return pwd.getpwnam(name)


@pytest.fixture(scope="module")
def account() -> Iterator[pwd.struct_passwd]:
    """A regular Unix account that also names a lab member (the same-named rule)."""
    require(shutil.which("useradd") is not None, "useradd is not installed")
    pw = _useradd("mlsmu" + secrets.token_hex(3))
    try:
        yield pw
    finally:
        subprocess.run(["userdel", pw.pw_name], check=False)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, account: pwd.struct_passwd) -> Iterator[Lab]:
    # The agent's data dir is where the account can pass through (pytest's tmp root is 0700).
    base = Path(tempfile.mkdtemp(prefix="mlsm-acct-"))
    base.chmod(0o755)
    with Lab(tmp_path_factory.mktemp("accounts")) as lab:
        lab.start_master()
        lab.start_agent(NODE, gpus="", data_dir=base / "agent", env={"MLSM_SINGLE_USER": "0"})
        yield lab
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def secret() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="mlsm-secret-"))
    p = d / "secret"
    p.write_text(SECRET_TEXT)
    p.chmod(0o600)
    try:
        yield p
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _member(lab: Lab, name: str) -> str:
    return lab.add_user(name)


def _mapped_member(lab: Lab, prefix: str, account: pwd.struct_passwd) -> str:
    """A new member mapped to ``account``; returns their token."""
    name = prefix + secrets.token_hex(3)
    token = lab.add_user(name)
    res = lab.cli("user", "set", name, "--unix-user", account.pw_name)
    assert res.returncode == 0, res.stderr
    return token


def _untouched(p: Path, before: os.stat_result) -> None:
    st = p.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600)
    assert (st.st_size, st.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert p.read_text() == SECRET_TEXT


def _shim_pid(agent: AgentProc, job_id: int) -> int:
    state = json.loads((agent.data_dir / "state.json").read_text())
    (rec,) = [r for r in state["jobs"] if r["job_id"] == job_id]
    return int(rec["pid"])


# ---------------------------------------------------------------- the account rule
def test_a_member_runs_as_the_same_named_account(lab: Lab, account: pwd.struct_passwd) -> None:
    token = _member(lab, account.pw_name)
    job_id = lab.submit("--", "id", "-un", token=token)
    assert lab.wait_job(job_id).state == "succeeded"
    out = lab.log(job_id)
    assert out.endswith(account.pw_name.encode() + b"\n"), out
    assert f" as {account.pw_name}".encode() in out.splitlines()[0]


def test_a_member_without_an_account_waits_until_an_admin_maps_one(
    lab: Lab, account: pwd.struct_passwd
) -> None:
    name = "m" + secrets.token_hex(3)
    token = _member(lab, name)
    job_id = lab.submit("--", "id", "-un", token=token)
    job = wait_until(
        lambda: (j := lab.job(job_id)).reason.startswith("no Unix account") and j,
        what="the job to say why it waits",
    )
    assert job.state == "queued"
    assert job.reason == (
        f"no Unix account for {name} on any online node: an admin maps one "
        f"(`mlsm user set {name} --unix-user ACCOUNT`) or creates account {name} there"
    )
    refused = lab.cli("user", "set", name, "--unix-user", "root")
    assert refused.returncode != 0 and refused.stdout == ""
    assert "jobs never run as root" in refused.stderr and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    mapped = lab.cli("user", "set", name, "--unix-user", account.pw_name)
    assert mapped.returncode == 0, mapped.stderr
    assert lab.wait_job(job_id).state == "succeeded"
    assert lab.log(job_id).endswith(account.pw_name.encode() + b"\n")


def test_the_node_says_who_jobs_run_as(lab: Lab) -> None:
    shown = lab.cli("node", "show", NODE)
    assert shown.returncode == 0, shown.stderr
    assert "run as    each user's own Unix account; members without one wait" in shown.stdout
    assert "jobs of admins with no Unix account there run as root" in shown.stdout
    listed = lab.cli("nodes")
    assert f"warning: node {NODE}: jobs of admins with no Unix account" in listed.stderr


def test_a_single_user_node_is_warned_about(lab: Lab, tmp_path: Path) -> None:
    lab.start_agent("solo", gpus="", data_dir=tmp_path / "solo")
    try:
        listed = lab.cli("nodes")
        assert (
            "warning: node solo: every job runs as the agent's own account root (uid 0)"
            in listed.stderr
        )
        assert "WARNING: every job runs as the agent's own account root" in (
            lab.cli("node", "show", "solo").stdout
        )
    finally:
        kill(lab.agents["solo"].proc, signal.SIGKILL)
        lab.cli("node", "remove", "solo", "--force", "--yes")


# ---------------------------------------------------------------- a hostile member's job
PLANT = (
    'if [ "$MLSM_ATTEMPT" = 0 ]; then ln -sf {secret} "$MLSM_OUTPUT_DIR/output.log"; '
    'touch "$MLSM_OUTPUT_DIR/planted"; echo planted >&2; sleep 120; fi; echo attempt $MLSM_ATTEMPT'
)


def test_a_planted_log_link_survives_restart_shim_kill_and_retry_without_leaking(
    lab: Lab, account: pwd.struct_passwd, secret: Path
) -> None:
    member = _mapped_member(lab, "h", account)
    before = secret.stat()
    job_id = lab.submit(
        "--retries", "1", "--", "sh", "-c", PLANT.format(secret=secret), token=member
    )
    agent = lab.agents[NODE]
    job_dir = agent.data_dir / "jobs" / str(job_id)
    wait_until(lambda: (job_dir / "planted").exists(), what="the job to plant its link")
    # The agent dies and comes back: re-adopting reads and writes nothing through the link.
    kill(agent.proc, signal.SIGKILL)
    lab.start_agent(NODE, gpus="", env={"MLSM_SINGLE_USER": "0"})
    lab.wait_job(job_id, "running")
    # The job's supervisor dies (root kills it here; the job cannot): the retry prepares the
    # job's files again, and must not chown or truncate what the link points at.
    os.kill(_shim_pid(lab.agents[NODE], job_id), signal.SIGKILL)
    job = lab.wait_job(job_id, timeout=90)
    assert (job.state, job.attempt) == ("succeeded", 1), job
    shown = lab.cli("logs", str(job_id), token=member)
    assert shown.returncode == 0, shown.stderr
    assert "secret" not in shown.stdout and "attempt 1" in shown.stdout
    _untouched(secret, before)


def test_a_cancel_writes_its_marker_through_no_planted_link(
    lab: Lab, account: pwd.struct_passwd, secret: Path
) -> None:
    member = _mapped_member(lab, "c", account)
    before = secret.stat()
    job_id = lab.submit("--", "sh", "-c", PLANT.format(secret=secret), token=member)
    job_dir = lab.agents[NODE].data_dir / "jobs" / str(job_id)
    wait_until(lambda: (job_dir / "planted").exists(), what="the job to plant its link")
    assert lab.cli("cancel", str(job_id), token=member).returncode == 0
    assert lab.wait_job(job_id).state == "cancelled"
    assert "secret" not in lab.cli("logs", str(job_id)).stdout
    _untouched(secret, before)


def test_a_fifo_log_of_one_job_stalls_no_other_job(lab: Lab, account: pwd.struct_passwd) -> None:
    member = _mapped_member(lab, "f", account)
    fifo = 'rm "$MLSM_OUTPUT_DIR/output.log"; mkfifo "$MLSM_OUTPUT_DIR/output.log"; sleep 60'
    stuck = lab.submit("--", "sh", "-c", fifo, token=member)
    lab.wait_job(stuck, "running")
    other = lab.submit("--", "echo", "still moving")
    assert lab.wait_job(other).state == "succeeded"
    assert lab.log(other).endswith(b"still moving\n")
    assert lab.cli("cancel", str(stuck)).returncode == 0
    assert lab.wait_job(stuck).state == "cancelled"
