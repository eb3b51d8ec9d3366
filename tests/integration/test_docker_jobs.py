"""Container jobs end to end: the real CLI submits to a real master, a real agent (two
simulated GPUs, a dataset root) runs them on the real Docker engine with the offline test
image, and the tests inspect the containers the engine holds.

Without an engine these tests skip with the reason; under ``CI=true`` they fail instead
(the ``docker_engine``/``docker_test_image`` fixtures, tests/support/fixtures.py). Node names carry
this run's pid and a random tag, and the containers the agent names after master job ids
are told apart by their ``mlsm.node`` label, so parallel runs on one engine do not clash.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from agent.runtimes.docker import VANISHED_WHILE_DOWN
from mlsm.master.services.jobs import KILL_GRACE_S
from mlsm.wire import api
from tests.integration.lab import (
    MLSM,
    PASSWORD,
    START_DEADLINE_S,
    AgentProc,
    CliResult,
    Lab,
)
from tests.integration.test_docker_runtime import _EngineProxy
from tests.support.ci import require
from tests.support.wait import wait_until

pytestmark = pytest.mark.docker

TAG = f"{os.getpid()}x{secrets.token_hex(3)}"
#: The node lease of this module's lab (the lab's own is 5 s).
RESTART_LEASE_S = 30.0
NODE = f"dk{TAG}"
DATASET = f"ds{TAG}"
GPUS = "2xA100-80GB"
JOB_DEADLINE_S = 60.0
NO_DOCKER = "unix:///nonexistent-mlsm-test.sock"
ENGINE_NOTICE_S = 20.0  # the node reports its engine gone (or back) within this


# ---------------------------------------------------------------- lab
def start_agent(
    lab: Lab, name: str, *args: str, env: dict[str, str] | None = None, wait: bool = True
) -> AgentProc:
    """Like :meth:`Lab.start_agent`, with extra agent arguments and environment.

    A restart of a known agent reuses its data dir (and so its node secret and jobs).
    """
    old = lab.agents.get(name)
    data_dir = old.data_dir if old else lab.root / "agents" / name
    argv = [MLSM, "agent", "--master", lab.url, "--name", name, "--data-dir", str(data_dir)]
    if not (data_dir / "node-secret").exists():
        argv += ["--join-token", lab.join_token()]
    argv += ["--simulate-gpus", GPUS, *args]
    log_name = f"agent-{name}.log"
    # As the packaged service runs it: as root, each user's jobs as their own account.
    env = {"MLSM_SINGLE_USER": "0", **(env or {})}
    proc = lab._spawn(argv, log_name, lab.env(**env))
    agent = AgentProc(name, data_dir, proc, lab.root / "logs" / log_name, GPUS)
    lab.agents[name] = agent
    if wait:
        lab.wait_node_state(name, "online", START_DEADLINE_S)
    return agent


def remove_containers(engine: docker.DockerClient, node: str) -> None:
    for c in engine.containers.list(all=True, filters={"label": f"mlsm.node={node}"}):
        try:
            c.remove(force=True)
        except docker.errors.NotFound:
            pass


@pytest.fixture(scope="module")
def engine(docker_engine: docker.DockerClient, docker_test_image: str) -> docker.DockerClient:
    return docker_engine


@pytest.fixture(scope="module")
def image(docker_test_image: str) -> str:
    return docker_test_image


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dataset-root")
    ds = root / DATASET
    ds.mkdir()
    (ds / "hello.txt").write_text("hello from the dataset\n")
    ds.chmod(0o777)  # only the read-only mount may stop a write
    return root


@pytest.fixture(scope="module")
def lab(
    tmp_path_factory: pytest.TempPathFactory, engine: docker.DockerClient, dataset_root: Path
) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("docker-jobs")) as lab:
        try:
            # Tests here stop an agent and start it again, and expect it back before the
            # master gives its node up: a node lease that a loaded machine's restart fits in.
            lab.start_master(MLSM_NODE_LEASE=str(RESTART_LEASE_S))
            start_agent(lab, NODE, "--dataset-root", str(dataset_root))
            yield lab
        finally:
            remove_containers(engine, NODE)


@pytest.fixture(scope="module")
def member(lab: Lab) -> tuple[str, str]:
    """(name, token) of a member whose jobs run as the Unix account ``nobody``."""
    name = f"stud{secrets.token_hex(2)}"
    lab.admin.call(
        "POST",
        "/api/v1/users",
        json=api.UserCreate(username=name, password=PASSWORD, role="member", unix_user="nobody"),
    )
    # Set again through an update: the master learns a user's Unix account when a user
    # changes, not when one is created (see the report on UserService.create).
    lab.admin.call("PATCH", f"/api/v1/users/{name}", json=api.UserUpdate(unix_user="nobody"))
    return name, lab.login(name, PASSWORD)


@pytest.fixture(autouse=True)
def _no_leftovers(lab: Lab) -> Iterator[None]:
    """Each test leaves the lab idle and its policies open; the agent is running."""
    yield
    if lab.agents[NODE].proc.poll() is not None:
        start_agent(lab, NODE)
    lab.cli("settings", "set", "--any-image", "--no-mounts")
    ids = [j.id for j in lab.admin.call("GET", "/api/v1/jobs", type=api.JobList).jobs]
    if ids:
        lab.admin.call("POST", "/api/v1/jobs/cancel", json=api.CancelRequest(ids=ids))
        for jid in ids:
            lab.wait_job(jid, timeout=JOB_DEADLINE_S)


# ---------------------------------------------------------------- helpers
def submit(lab: Lab, image: str, *args: str, token: str | None = None) -> int:
    """``mlsm submit --env docker --image IMAGE ARGS`` (ARGS end with ``-- CMD ...``)."""
    return lab.submit("--env", "docker", "--image", image, *args, token=token)


def submit_cli(lab: Lab, image: str, *args: str, token: str | None = None) -> CliResult:
    return lab.cli("submit", "--env", "docker", "--image", image, *args, token=token)


def finished(lab: Lab, job_id: int) -> api.Job:
    return lab.wait_job(job_id, timeout=JOB_DEADLINE_S)


def container_of(engine: docker.DockerClient, job_id: int) -> Any:
    """The container of ``job_id`` on this lab's node, or None."""
    found = engine.containers.list(
        all=True, filters={"label": [f"mlsm.node={NODE}", f"mlsm.job={job_id}"]}
    )
    return found[0] if found else None


def body(log: bytes) -> bytes:
    """The job's own output: its log without mlsm's header line."""
    first, _, rest = log.partition(b"\n")
    assert first.startswith(b"[mlsm] job "), log
    return rest


def env_of(attrs: dict[str, Any]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in attrs["Config"]["Env"])


def one_line_error(res: CliResult) -> str:
    assert res.returncode != 0, res
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def node_log_contains(lab: Lab, job_id: int, text: bytes) -> bool:
    path = lab.agents[NODE].data_dir / "jobs" / str(job_id) / "output.log"
    return path.exists() and text in path.read_bytes()


def agent_recorded(lab: Lab, job_id: int) -> bool:
    """Whether the agent's state file (what a restarted agent re-adopts from) holds the job:
    an agent killed before it wrote the job there knows nothing of it when it comes back."""
    path = lab.agents[NODE].data_dir / "state.json"
    try:
        jobs = json.loads(path.read_bytes()).get("jobs", [])
    except (OSError, ValueError):
        return False
    return any(j.get("job_id") == job_id for j in jobs)


# ---------------------------------------------------------------- run
def test_gpu_job_container_has_labels_env_user_and_no_device_request_on_simulated_gpus(
    lab: Lab, engine: docker.DockerClient, image: str, member: tuple[str, str]
) -> None:
    name, token = member
    jid = submit(
        lab,
        image,
        "--gpus",
        "2",
        "--keep-container",
        "--",
        "sh",
        "-c",
        "echo $CUDA_VISIBLE_DEVICES; id -u",
        token=token,
    )
    job = finished(lab, jid)
    assert (job.state, job.exit_code, job.node) == ("succeeded", 0, NODE), job.reason
    assert len(job.gpu_indices) == 2
    gpus = ",".join(map(str, job.gpu_indices))

    attrs = container_of(engine, jid).attrs
    labels = attrs["Config"]["Labels"]
    assert labels["mlsm.job"] == str(jid)
    assert labels["mlsm.gpus"] == gpus
    assert labels["mlsm.node"] == NODE
    assert labels["mlsm.user"] == name
    assert not attrs["HostConfig"].get("DeviceRequests")  # simulated GPUs: no NVIDIA runtime
    env = env_of(attrs)
    assert env["CUDA_VISIBLE_DEVICES"] == env["NVIDIA_VISIBLE_DEVICES"] == gpus
    assert env["MLSM_JOB_ID"] == str(jid)
    assert attrs["Config"]["User"] == "65534:65534"  # the member's Unix account, nobody
    assert attrs["HostConfig"]["NetworkMode"] == "none"
    assert f"job {jid}: simulated GPUs, no device request" in lab.agents[NODE].output()

    log = lab.log(jid)
    assert body(log) == f"{gpus}\n65534\n".encode()
    assert log == lab.agents[NODE].job_log(jid)


def test_dataset_is_mounted_read_only_and_the_output_dir_writable(
    lab: Lab, engine: docker.DockerClient, image: str, dataset_root: Path
) -> None:
    def on_node() -> bool:
        ds = lab.admin.call("GET", f"/api/v1/datasets/{DATASET}", type=api.Dataset)
        return any(c.node == NODE for c in ds.copies)

    wait_until(on_node, START_DEADLINE_S, f"dataset {DATASET} reported by {NODE}")
    script = (
        f"exec 2>&1; cat /datasets/{DATASET}/hello.txt; pwd; "
        f"if touch /datasets/{DATASET}/new; then echo wrote; else echo refused; fi; "
        "echo result > /mlsm/output/result.txt"
    )
    jid = submit(lab, image, "--dataset", DATASET, "--keep-container", "--", "sh", "-c", script)
    job = finished(lab, jid)
    assert job.state == "succeeded", job.reason

    log = body(lab.log(jid)).decode()
    assert log.startswith("hello from the dataset\n/mlsm/output/code\n"), log  # the shipped copy
    assert log.endswith(f"/{DATASET}/new: Read-only file system\nrefused\n"), log
    assert not (dataset_root / DATASET / "new").exists()
    job_dir = lab.agents[NODE].data_dir / "jobs" / str(jid)
    assert (job_dir / "result.txt").read_text() == "result\n"
    mounts = {m["Destination"]: m for m in container_of(engine, jid).attrs["Mounts"]}
    assert mounts[f"/datasets/{DATASET}"]["RW"] is False
    assert mounts[f"/datasets/{DATASET}"]["Source"] == str(dataset_root / DATASET)
    assert mounts["/mlsm/output"]["RW"] is True
    assert mounts["/mlsm/output"]["Source"] == str(job_dir)


# ---------------------------------------------------------------- policies
def test_a_forbidden_host_mount_is_refused_for_a_member_until_allowed(
    lab: Lab, image: str, member: tuple[str, str]
) -> None:
    _, token = member
    share = lab.root / f"share-{TAG}"
    share.mkdir(mode=0o755)
    (share / "f.txt").write_text("shared\n")
    (share / "f.txt").chmod(0o644)
    cmd = ("--mount", f"{share}:/share:ro", "--", "cat", "/share/f.txt")

    line = one_line_error(submit_cli(lab, image, *cmd, token=token))
    assert f"host path {share} may not be mounted" in line, line
    assert "mlsm settings set --mount-allow" in line, line
    etc = one_line_error(submit_cli(lab, image, "--mount", "/etc:/x", "--", "true", token=token))
    assert "host path /etc may not be mounted" in etc, etc

    admin_job = submit(lab, image, *cmd)  # admins may mount any absolute path
    assert finished(lab, admin_job).state == "succeeded"
    assert body(lab.log(admin_job)) == b"shared\n"

    res = lab.cli("settings", "set", "--mount-allow", str(lab.root))
    assert res.returncode == 0, res.stderr
    member_job = submit(lab, image, *cmd, token=token)
    job = finished(lab, member_job)
    assert job.state == "succeeded", job.reason
    assert body(lab.log(member_job)) == b"shared\n"
    # ".." cannot climb out of an allowed root
    line = one_line_error(
        submit_cli(lab, image, "--mount", f"{lab.root}/../..:/x", "--", "true", token=token)
    )
    assert "may not be mounted" in line, line


def test_a_forbidden_image_is_refused_for_a_member_until_allowed(
    lab: Lab, image: str, member: tuple[str, str]
) -> None:
    _, token = member
    res = lab.cli("settings", "set", "--image-pattern", "registry.example/lab/*")
    assert res.returncode == 0, res.stderr

    line = one_line_error(submit_cli(lab, image, "--", "echo", "hi", token=token))
    assert f"image {image} is not allowed for members" in line, line
    assert "registry.example/lab/*" in line, line

    admin_job = submit(lab, image, "--", "echo", "hi")  # admins may run any image
    assert finished(lab, admin_job).state == "succeeded"

    res = lab.cli("settings", "set", "--image-pattern", "mlsm-test/*")
    assert res.returncode == 0, res.stderr
    member_job = submit(lab, image, "--", "echo", "hi", token=token)
    job = finished(lab, member_job)
    assert job.state == "succeeded", job.reason
    assert body(lab.log(member_job)) == b"hi\n"


def test_refusals_are_structured_4xx_errors(lab: Lab, image: str, member: tuple[str, str]) -> None:
    _, token = member
    lab.cli("settings", "set", "--image-pattern", "registry.example/lab/*")
    for extra in ({}, {"image": "registry.example/lab/x:1", "mounts": ["/etc:/x"]}):
        spec = {"argv": ["true"], "env_kind": "docker", "image": image, **extra}
        resp = httpx.post(
            f"{lab.url}/api/v1/jobs",
            json=spec,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert resp.status_code == 403, resp.text
        assert resp.json()["error"]["code"] == "forbidden"


# ---------------------------------------------------------------- ends
def test_cancel_stops_the_container_with_grace_then_kills_it(
    lab: Lab, engine: docker.DockerClient, image: str
) -> None:
    script = "trap '' TERM; echo ready; while true; do sleep 1; done"
    jid = submit(lab, image, "--keep-container", "--", "sh", "-c", script)
    wait_until(lambda: node_log_contains(lab, jid, b"ready\n"), JOB_DEADLINE_S, "the job to start")
    asked = time.monotonic()
    res = lab.cli("cancel", str(jid))
    assert res.returncode == 0, res.stderr
    job = finished(lab, jid)
    took = time.monotonic() - asked
    assert job.state == "cancelled", job.reason
    assert took >= KILL_GRACE_S - 1.0, took  # SIGTERM was ignored: it waited out the grace
    state = container_of(engine, jid).attrs["State"]
    assert state["Status"] == "exited"
    assert state["ExitCode"] == 137  # then SIGKILL
    assert f"[mlsm] job {jid} cancelled".encode() in lab.log(jid)


def test_timeout_stops_the_container_and_removes_it(
    lab: Lab, engine: docker.DockerClient, image: str
) -> None:
    jid = submit(lab, image, "--timeout", "2s", "--", "sleep", "300")
    job = finished(lab, jid)
    assert job.state == "failed"
    assert "time limit 2s reached" in job.reason, job.reason
    assert job.ended_at is not None and job.started_at is not None
    assert job.ended_at - job.started_at < KILL_GRACE_S  # sleep takes SIGTERM at once
    assert container_of(engine, jid) is None  # removed: the job did not ask to keep it


def test_out_of_memory_is_recorded_as_failed_naming_it(lab: Lab, image: str) -> None:
    script = "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived ${#x}"
    jid = submit(lab, image, "--mem", "0.02", "--", "sh", "-c", script)
    job = finished(lab, jid)
    log = lab.log(jid)
    require(b"survived" not in log, f"this engine does not enforce memory limits: {log!r}")
    assert job.state == "failed"
    assert "out of memory" in job.reason, job.reason
    assert job.exit_code == 137


def test_missing_image_fails_naming_image_and_node(lab: Lab) -> None:
    absent = f"mlsm-test/absent-{TAG}:1"
    jid = submit(lab, absent, "--", "true")
    job = finished(lab, jid)
    assert job.state == "failed"
    assert job.reason == f"image {absent} not present on node {NODE}"


# ---------------------------------------------------------------- re-attach
_CHATTY = (
    "i=0; while [ ! -e /mlsm/output/go ]; do i=$((i+1)); "
    'echo "out $i $(head -c 200 /dev/zero | tr "\\0" x)"; echo "err $i" >&2; sleep 0.02; '
    "done; echo done; exit 3"
)


def test_agent_kill9_keeps_the_container_and_the_restart_resumes_the_log_byte_exact(
    lab: Lab, engine: docker.DockerClient, image: str
) -> None:
    jid = submit(lab, image, "--", "sh", "-c", _CHATTY)
    wait_until(lambda: node_log_contains(lab, jid, b"out 20 "), JOB_DEADLINE_S, "output")
    wait_until(lambda: agent_recorded(lab, jid), JOB_DEADLINE_S, "the agent to record the job")
    lab.stop_agent(NODE, signal.SIGKILL)
    container = container_of(engine, jid)
    container.reload()
    assert container.status == "running"
    seen = lab.agents[NODE].job_log(jid).count(b"\nout ")
    # The container keeps writing while nobody follows it.
    wait_until(
        lambda: container.logs(stderr=False).count(b"\nout ") > seen + 20,
        JOB_DEADLINE_S,
        "output while the agent is down",
    )

    agent = start_agent(lab, NODE)
    assert lab.job(jid).state == "running"
    wait_until(lambda: node_log_contains(lab, jid, b"out %d " % (seen + 40)), JOB_DEADLINE_S, "")
    (agent.data_dir / "jobs" / str(jid) / "go").touch()
    job = finished(lab, jid)
    assert (job.state, job.exit_code) == ("failed", 3), job.reason

    node_log = agent.job_log(jid)
    assert lab.log(jid) == node_log  # shipped byte for byte
    lines = body(node_log).decode().splitlines()
    outs = [int(ln.split()[1]) for ln in lines if ln.startswith("out ")]
    errs = [int(ln.split()[1]) for ln in lines if ln.startswith("err ")]
    assert outs == list(range(1, len(outs) + 1))  # nothing lost, nothing twice
    assert errs == list(range(1, len(errs) + 1))
    assert len(outs) >= seen + 40 and "done" in lines  # waited for line seen + 40 above
    assert container_of(engine, jid) is None


def test_a_container_removed_while_the_agent_was_down_interrupts_the_job(
    lab: Lab, engine: docker.DockerClient, image: str
) -> None:
    jid = submit(lab, image, "--", "sh", "-c", "echo up; sleep 300")
    wait_until(lambda: node_log_contains(lab, jid, b"up\n"), JOB_DEADLINE_S, "the job to start")
    wait_until(lambda: agent_recorded(lab, jid), JOB_DEADLINE_S, "the agent to record the job")
    lab.stop_agent(NODE, signal.SIGKILL)
    container_of(engine, jid).remove(force=True)
    start_agent(lab, NODE)
    job = finished(lab, jid)
    assert job.state == "interrupted"
    assert job.reason == VANISHED_WHILE_DOWN
    assert f"[mlsm] job {jid} lost: {VANISHED_WHILE_DOWN}".encode() in lab.log(jid)


# ---------------------------------------------------------------- networks
def test_the_admin_chooses_the_network_of_a_node(
    lab: Lab, engine: docker.DockerClient, image: str, member: tuple[str, str]
) -> None:
    _, token = member
    line = one_line_error(lab.cli("node", "set", NODE, "--docker-network", "host", token=token))
    assert "403" in line or "admin" in line or "permission" in line.lower(), line
    bad = one_line_error(lab.cli("node", "set", NODE, "--docker-network", "container:abc"))
    assert "docker network 'container:abc'" in bad, bad

    try:
        res = lab.cli("node", "set", NODE, "--docker-network", "host")
        assert res.returncode == 0, res.stderr
        assert "network host" in res.stdout
        jid = submit(lab, image, "--keep-container", "--", "true")
        assert finished(lab, jid).state == "succeeded"
        assert container_of(engine, jid).attrs["HostConfig"]["NetworkMode"] == "host"
    finally:
        res = lab.cli("node", "set", NODE, "--docker-network", "none")
        assert res.returncode == 0, res.stderr
    jid = submit(lab, image, "--keep-container", "--", "true")
    assert finished(lab, jid).state == "succeeded"
    assert container_of(engine, jid).attrs["HostConfig"]["NetworkMode"] == "none"


# ---------------------------------------------------------------- engine unavailable
def test_a_node_without_an_engine_reports_it_and_gets_no_container_jobs(
    tmp_path: Path, engine: docker.DockerClient, image: str
) -> None:
    name = f"nodock{TAG}"
    with Lab(tmp_path) as lab:
        lab.start_master()
        start_agent(lab, name, env={"DOCKER_HOST": NO_DOCKER})

        shown = lab.cli("node", "show", name)
        assert shown.returncode == 0, shown.stderr
        assert "docker: no" in shown.stdout
        assert "docker    unavailable: " in shown.stdout
        info = lab.node(name).info
        assert info.docker_available is False
        assert "unavailable" in info.docker_error
        assert "docker" not in info.runtimes

        jid = submit(lab, image, "--", "true")
        want = "no online node can run docker jobs (Docker unavailable)"
        job = wait_until(
            lambda: (j := lab.job(jid)).reason == want and j, JOB_DEADLINE_S, "the reason"
        )
        assert job.state == "queued" and job.node is None
        process_job = lab.submit("--", "true")  # the node itself is fine
        assert lab.wait_job(process_job, timeout=JOB_DEADLINE_S).state == "succeeded"


# ---------------------------------------------------------------- a shared engine
def test_a_container_name_held_by_another_lab_is_qualified_with_the_node(
    lab: Lab, engine: docker.DockerClient, image: str
) -> None:
    # Job ids are per master: another lab on this engine may hold the plain name already.
    last = submit(lab, image, "--", "true")
    finished(lab, last)
    taken = f"mlsm-job-{last + 1}-0"
    foreign = engine.containers.create(image, ["true"], name=taken, labels={"test": TAG})
    try:
        jid = submit(lab, image, "--keep-container", "--", "echo", "ok")
        assert jid == last + 1
        job = finished(lab, jid)
        assert job.state == "succeeded", job.reason
        assert container_of(engine, jid).name == f"{taken}.{NODE}"
        assert body(lab.log(jid)) == b"ok\n"
    finally:
        foreign.remove(force=True)


# ---------------------------------------------------------------- the engine going away
class _Proxy(_EngineProxy):
    """The engine proxy of test_docker_runtime.py, safe to cut or restore twice."""

    is_up = False

    def up(self) -> None:
        if not self.is_up:
            super().up()
            self.is_up = True

    def down(self) -> None:
        if self.is_up:
            super().down()
            self.is_up = False


@pytest.fixture
def proxy(tmp_path: Path, engine: docker.DockerClient) -> Iterator[_Proxy]:
    """A cut-and-restore UNIX socket in front of the engine, up at first."""
    p = _Proxy(tmp_path / "e.sock")
    p.up()
    try:
        yield p
    finally:
        p.down()


def start_proxied_agent(lab: Lab, name: str, proxy: _Proxy, check_s: float) -> AgentProc:
    """An agent whose engine is reached through ``proxy``, re-checked every ``check_s``."""
    env = {"DOCKER_HOST": f"unix://{proxy.path}", "MLSM_DOCKER_CHECK_INTERVAL": str(check_s)}
    agent = start_agent(lab, name, env=env)
    assert lab.node(name).info.docker_available, lab.node(name).info.docker_error
    return agent


def waiting_for_docker(lab: Lab, job_id: int, node: str) -> api.Job:
    """The job once it waits for ``node``'s engine; fails soon if it ends instead."""
    want = f"node {node} cannot run docker jobs (Docker unavailable)"

    def check() -> api.Job | None:
        job = lab.job(job_id)
        if job.state not in ("queued", "assigned", "running"):
            pytest.fail(f"job {job_id} ended {job.state}: {job.reason}")
        return job if job.reason == want else None

    job = wait_until(check, JOB_DEADLINE_S, f"job {job_id} to wait for the engine")
    assert job is not None
    return job


def test_an_engine_lost_while_the_node_is_online_is_reported_and_its_return_noticed(
    tmp_path: Path, engine: docker.DockerClient, image: str, proxy: _Proxy
) -> None:
    name = f"cut{TAG}"
    with Lab(tmp_path / "lab") as lab:
        try:
            lab.start_master()
            start_proxied_agent(lab, name, proxy, check_s=1.0)

            proxy.down()

            def gone() -> api.NodeInfo | None:
                info = lab.node(name).info
                return info if info.docker_available is False else None

            info = wait_until(gone, ENGINE_NOTICE_S, "the node to report Docker unavailable")
            assert info is not None
            assert info.docker_error.startswith("Docker engine unavailable: "), info
            assert "docker" not in info.runtimes
            shown = lab.cli("node", "show", name)
            assert shown.returncode == 0, shown.stderr
            assert "docker: no" in shown.stdout
            assert "docker    unavailable: Docker engine unavailable" in shown.stdout

            jid = submit(lab, image, "--node", name, "--", "echo", "back")
            job = waiting_for_docker(lab, jid, name)
            assert (job.state, job.node, job.attempt) == ("queued", None, 0)

            proxy.up()
            job = lab.wait_job(jid, timeout=ENGINE_NOTICE_S + JOB_DEADLINE_S)
            assert (job.state, job.node, job.attempt) == ("succeeded", name, 0), job.reason
            assert body(lab.log(jid)) == b"back\n"
            info = lab.node(name).info
            assert info.docker_available and not info.docker_error
            assert "docker" in info.runtimes
        finally:
            remove_containers(engine, name)


def test_a_start_the_engine_cannot_take_interrupts_the_job_and_the_node_stops_taking_containers(
    tmp_path: Path, engine: docker.DockerClient, image: str, proxy: _Proxy
) -> None:
    name = f"gone{TAG}"
    with Lab(tmp_path / "lab") as lab:
        try:
            lab.start_master()
            # The re-check never comes during the test: the failed start alone must tell.
            start_proxied_agent(lab, name, proxy, check_s=3600.0)
            proxy.down()

            jid = submit(lab, image, "--node", name, "--retries", "1", "--", "true")
            job = waiting_for_docker(lab, jid, name)
            # Attempt 0 was interrupted (the engine's fault, not the job's) and requeued;
            # attempt 1 waits instead of being sent back to the same node.
            assert (job.state, job.attempt, job.exit_code) == ("queued", 1, None)
            ends = [e for e in job.history if e.state in ("interrupted", "failed")]
            assert [e.state for e in ends] == ["interrupted"], job.history
            assert ends[0].message.startswith("Docker engine unavailable: "), ends[0]
            info = lab.node(name).info
            assert info.docker_available is False
            assert info.docker_error == ends[0].message
            assert "Docker engine unavailable" in lab.agents[name].output()
        finally:
            remove_containers(engine, name)


# ---------------------------------------------------------------- mounts, resolved on the node
def test_a_members_mount_through_a_symlink_is_checked_on_the_node_and_an_admins_is_not(
    lab: Lab, image: str, member: tuple[str, str]
) -> None:
    _, token = member
    root = lab.root / f"allowed-{TAG}"
    root.mkdir()
    (root / "link").symlink_to("/etc")
    res = lab.cli("settings", "set", "--mount-allow", str(root))
    assert res.returncode == 0, res.stderr
    cmd = ("--mount", f"{root}/link:/x:ro", "--", "head", "-c", "5", "/x/passwd")

    member_job = submit(lab, image, *cmd, token=token)  # passes the master's lexical check
    job = finished(lab, member_job)
    assert job.state == "failed"
    assert job.reason == (
        f"mount {root}/link (-> /etc) is outside the allowed roots on node {NODE} (allowed: {root})"
    ), job.reason

    admin_job = submit(lab, image, *cmd)  # admins may mount any host path, links included
    job = finished(lab, admin_job)
    assert job.state == "succeeded", job.reason
    assert body(lab.log(admin_job)) == b"root:"
