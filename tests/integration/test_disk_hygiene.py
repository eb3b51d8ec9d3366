"""Disk hygiene with a real master and a real agent: the node's disk report, ``mlsm job
purge`` (owner, other member, admin, a running job), links a job planted, retention of job
directories and shipped logs (never one in use), the disk threshold, and the audit rows of
every removal. SQLite, or PostgreSQL when the suite runs with ``MLSM_TEST_DATABASE``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlsm import errors
from mlsm.wire import api
from mlsm.wire import outputs as wo
from tests.integration.lab import Lab
from tests.support.wait import wait_until

NODE = "disk-a"
MIB = 1 << 20
DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("disk")) as lab:
        lab.start_master(MLSM_RETENTION_SWEEP_INTERVAL="1")
        lab.start_agent(NODE, env={"MLSM_DISK_REPORT_INTERVAL": "1"})
        yield lab


@pytest.fixture(scope="module")
def alice(lab: Lab) -> str:
    return lab.add_user("alice")


@pytest.fixture(scope="module")
def bob(lab: Lab) -> str:
    return lab.add_user("bob")


def job_dir(lab: Lab, job_id: int) -> Path:
    return lab.agents[NODE].data_dir / "jobs" / str(job_id)


def run_job(lab: Lab, token: str, script: str, *, wait: bool = True) -> int:
    jid = lab.submit("--node", NODE, "--", "sh", "-c", script, token=token)
    if wait:
        job = lab.wait_job(jid, timeout=DEADLINE_S)
        assert job.state == "succeeded", (job.reason, lab.agents[NODE].output()[-2000:])
    return jid


def audit_rows(lab: Lab, action: str) -> list[api.AuditEntry]:
    return lab.admin.call(
        "GET", "/api/v1/audit", params={"action": action, "limit": 1000}, type=list[api.AuditEntry]
    )


WRITE_1MIB = 'head -c 1048576 /dev/urandom > "$MLSM_OUTPUT_DIR/data.bin"'


def test_node_show_reports_what_mlsm_keeps_on_the_disk(lab: Lab, alice: str) -> None:
    jid = run_job(lab, alice, WRITE_1MIB)
    disk = wait_until(
        lambda: (d := lab.node(NODE).info.disk) is not None and d.jobs_bytes >= MIB and d,
        DEADLINE_S,
        "the node to report its job directories",
    )
    assert disk.data_dir == str(lab.agents[NODE].data_dir)
    assert disk.fs_total > 0 and 0 < disk.fs_free <= disk.fs_total
    shown = lab.cli("node", "show", NODE)
    assert shown.returncode == 0, shown.stderr
    assert "mlsm disk jobs" in shown.stdout and "code cache" in shown.stdout
    job = lab.cli("job", "show", "--json", str(jid), token=alice).json()
    assert job["node"] == NODE
    assert job["output_dir"] == str(job_dir(lab, jid))
    assert (Path(job["output_dir"]) / "data.bin").stat().st_size == MIB


def test_owner_purges_a_finished_job_and_the_node_audits_it(lab: Lab, alice: str) -> None:
    jid = run_job(lab, alice, WRITE_1MIB)
    res = lab.cli("job", "purge", "--json", str(jid), token=alice)
    assert res.returncode == 0, res.stderr
    out = res.json()
    assert out["state"] == "removed" and out["node"] == NODE and out["bytes"] >= MIB
    assert not job_dir(lab, jid).exists()
    job = lab.job(jid)
    assert job.outputs_removed_at is not None and job.outputs_removed_why == "purged by alice"
    rows = [r for r in audit_rows(lab, "job.outputs.remove") if r.target == f"job:{jid}"]
    assert len(rows) == 1
    assert rows[0].actor == f"node:{NODE}" and rows[0].details["reason"] == "purge"
    # The node's report sent again (its answer was lost): nothing is recorded twice.
    resent = wo.JobDirsRemoved(
        command_id=0,
        removed=[wo.RemovedDir(job_id=jid, reason="purge", bytes=MIB, files=1, by="alice")],
    )
    assert lab.agent_call("outputs/removed", resent, lab.agents[NODE].secret).status_code == 200
    assert [r for r in audit_rows(lab, "job.outputs.remove") if r.target == f"job:{jid}"] == rows
    assert lab.job(jid).outputs_removed_at == job.outputs_removed_at
    assert [r for r in audit_rows(lab, "job.purge") if r.target == f"job:{jid}"]
    again = lab.cli("job", "purge", str(jid), token=alice)
    assert again.returncode == 0 and "nothing to remove" in again.stdout
    assert "removed" in lab.cli("job", "show", str(jid), token=alice).stdout


def test_another_member_may_not_purge_and_an_admin_may(lab: Lab, alice: str, bob: str) -> None:
    jid = run_job(lab, alice, WRITE_1MIB)
    refused = lab.cli("job", "purge", str(jid), token=bob)
    assert refused.returncode != 0
    assert "not yours" in refused.stderr and "Traceback" not in refused.stderr
    with pytest.raises(errors.PermissionDenied):
        lab.client(bob).jobs.purge(jid)
    assert job_dir(lab, jid).is_dir()
    assert lab.admin.jobs.purge(jid).state == "removed"
    assert not job_dir(lab, jid).exists()


def test_a_running_job_is_never_purged(lab: Lab, alice: str) -> None:
    jid = run_job(lab, alice, "sleep 600", wait=False)
    lab.wait_job(jid, "running", DEADLINE_S)
    res = lab.cli("job", "purge", str(jid), token=alice)
    assert res.returncode != 0 and "running" in res.stderr
    assert job_dir(lab, jid).is_dir()
    lab.cli("cancel", str(jid), token=alice)
    lab.wait_job(jid, timeout=DEADLINE_S)


def test_purge_removes_planted_links_never_their_targets(lab: Lab, alice: str) -> None:
    victim_dir = lab.root / "victim"
    victim_dir.mkdir()
    (victim_dir / "keep.txt").write_text("precious")
    script = (
        f'ln -s {victim_dir} "$MLSM_OUTPUT_DIR/dir-link" && '
        f'ln -s {victim_dir}/keep.txt "$MLSM_OUTPUT_DIR/file-link" && '
        'mkdir -p "$MLSM_OUTPUT_DIR/a/b" && ln -s ../../.. "$MLSM_OUTPUT_DIR/a/b/up"'
    )
    jid = run_job(lab, alice, script)
    assert lab.client(alice).jobs.purge(jid).state == "removed"
    assert not job_dir(lab, jid).exists()
    assert (victim_dir / "keep.txt").read_text() == "precious"
    assert lab.agents[NODE].data_dir.is_dir()


def test_offline_node_gives_one_clear_line(lab: Lab, alice: str) -> None:
    jid = run_job(lab, alice, "true")
    lab.stop_agent(NODE)
    try:
        lab.wait_node_state(NODE, "offline", DEADLINE_S)
        res = lab.cli("job", "purge", str(jid), token=alice)
        assert res.returncode != 0
        line = res.stderr.strip()
        assert f"outputs of job {jid} live on {NODE}, which is offline since" in line
        assert len(line.splitlines()) == 1
    finally:
        lab.start_agent(NODE, env={"MLSM_DISK_REPORT_INTERVAL": "1"})
    assert job_dir(lab, jid).is_dir()


def test_retention_removes_only_finished_jobs_and_their_logs(lab: Lab, alice: str) -> None:
    """Runs last: it changes the lab's retention (and the threshold) for good."""
    done = run_job(lab, alice, WRITE_1MIB + " && echo finished")
    running = run_job(lab, alice, 'echo started; touch "$MLSM_OUTPUT_DIR/x"; sleep 600', wait=False)
    lab.wait_job(running, "running", DEADLINE_S)
    wait_until(lambda: job_dir(lab, running).is_dir(), DEADLINE_S, "the running job's dir")
    assert b"finished" in lab.log(done)
    # A retention of about a second: every finished job is past it at the next sweep.
    res = lab.cli("settings", "set", "--job-retention-days", "0.00001")
    assert res.returncode == 0, res.stderr
    wait_until(lambda: not job_dir(lab, done).exists(), DEADLINE_S, "retention to remove it")
    job = wait_until(
        lambda: (j := lab.job(done)).outputs_removed_at is not None and j.log_removed_at and j,
        DEADLINE_S,
        "the master to mark the job's directory and log removed",
    )
    assert job.outputs_removed_why == "retention"
    assert lab.log(done) == b""
    rows = [r for r in audit_rows(lab, "job.outputs.remove") if r.target == f"job:{done}"]
    assert len(rows) == 1 and rows[0].details["reason"] == "retention"
    assert [r for r in audit_rows(lab, "job.log.remove") if r.target == f"job:{done}"]
    # The running job is never a candidate, however the settings are.
    assert job_dir(lab, running).is_dir() and (job_dir(lab, running) / "x").exists()
    assert lab.job(running).outputs_removed_at is None
    # A threshold below what the disk holds: finished jobs go without waiting for
    # retention (which is now off), the running one stays.
    res = lab.cli("settings", "set", "--job-retention-days", "0", "--node-disk-high-pct", "0.001")
    assert res.returncode == 0, res.stderr
    third = run_job(lab, alice, WRITE_1MIB)
    wait_until(lambda: not job_dir(lab, third).exists(), DEADLINE_S, "the threshold to remove it")
    why = wait_until(
        lambda: lab.job(third).outputs_removed_why, DEADLINE_S, "the master to mark it removed"
    )
    assert why == "node disk above threshold"
    assert job_dir(lab, running).is_dir()
    assert os.path.isdir(lab.agents[NODE].data_dir / "jobs")
    lab.cli("cancel", str(running), token=alice)


def test_an_earlier_attempts_directory_on_another_node_is_removed_too(
    tmp_path: Path,
) -> None:
    """A job preempted on one node and finished on another leaves its first attempt's
    directory on the first node: retention removes it there as well, audited."""
    with Lab(tmp_path / "lab") as lab:
        lab.start_master(MLSM_RETENTION_SWEEP_INTERVAL="1")
        first = lab.start_agent("first", gpus="1xA100-80GB")
        second = lab.start_agent("second", gpus="1xA100-80GB")
        blocker = lab.submit("--no-code", "--gpus", "1", "--node", "second", "--", "sleep", "600")
        lab.wait_job(blocker, "running", DEADLINE_S)
        moved = lab.submit(
            "--no-code", "--gpus", "1", "--preemptible", "--preempt-grace", "1s", "--",
            "sh", "-c", 'echo here > "$MLSM_OUTPUT_DIR/mark"; exec sleep 600',
        )  # fmt: skip
        assert lab.wait_job(moved, "running", DEADLINE_S).node == "first"
        left = first.data_dir / "jobs" / str(moved)
        wait_until(lambda: (left / "mark").exists(), DEADLINE_S, "the first attempt's file")
        preemptor = lab.submit("--no-code", "--gpus", "1", "--node", "first", "--", "sleep", "600")
        lab.wait_job(preemptor, "running", DEADLINE_S)
        assert lab.job(moved).preemptions == 1
        assert lab.cli("cancel", str(blocker)).returncode == 0
        wait_until(
            lambda: (j := lab.job(moved)).state == "running" and j.node == "second",
            DEADLINE_S,
            "the requeued job to run on the other node",
        )
        assert lab.cli("cancel", str(moved), str(preemptor)).returncode == 0
        lab.wait_job(moved, "cancelled", DEADLINE_S)
        assert left.is_dir()  # kept until retention says otherwise

        res = lab.cli("settings", "set", "--job-retention-days", "0.00001")
        assert res.returncode == 0, res.stderr
        wait_until(lambda: not left.exists(), DEADLINE_S, "retention to remove the first dir")
        here = second.data_dir / "jobs" / str(moved)
        wait_until(lambda: not here.exists(), DEADLINE_S, "retention to remove the last dir")

        def removals() -> list[api.AuditEntry] | None:
            rows = [r for r in audit_rows(lab, "job.outputs.remove") if r.target == f"job:{moved}"]
            return rows if {r.details["node"] for r in rows} == {"first", "second"} else None

        rows = wait_until(removals, DEADLINE_S, "an audit row for each node's removal")
        assert any("earlier attempt" in str(r.details["why"]) for r in rows)
        assert lab.job(moved).outputs_removed_why == "retention"
