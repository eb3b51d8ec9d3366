"""Shells and forwards into container jobs: the real ``mlsm shell`` under a PTY, a real
master, a root agent running the job in the offline busybox image on the real Docker
engine as a member's account (``nobody``). The shell is a ``docker exec`` with a TTY (the
container's user, its environment; resize; exit status); a forward reaches a port inside
the container's own network namespace."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import docker
import httpx
import pexpect
import pytest

from mlsm.wire import api
from tests.integration.lab import PASSWORD, Lab
from tests.integration.test_docker_jobs import remove_containers, start_agent
from tests.integration.test_shell import EXPECT_S, prompt, run, spawn
from tests.support.procs import free_port
from tests.support.wait import wait_until

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(os.geteuid() != 0, reason="a root agent runs members' containers"),
]

TAG = f"{os.getpid()}x{secrets.token_hex(3)}"
NODE = f"dsh{TAG}"
JOB_DEADLINE_S = 60.0
HTTP_PORT = 8080


@pytest.fixture(scope="module")
def lab(
    tmp_path_factory: pytest.TempPathFactory,
    docker_engine: docker.DockerClient,
    docker_test_image: str,
) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("shell-docker")) as lab:
        try:
            lab.start_master()
            start_agent(lab, NODE)
            yield lab
        finally:
            remove_containers(docker_engine, NODE)


@pytest.fixture(scope="module")
def member(lab: Lab) -> str:
    """A session token of a member whose jobs run as the Unix account ``nobody``."""
    name = f"dsh{secrets.token_hex(2)}"
    lab.admin.call(
        "POST",
        "/api/v1/users",
        json=api.UserCreate(username=name, password=PASSWORD, role="member", unix_user="nobody"),
    )
    lab.admin.call("PATCH", f"/api/v1/users/{name}", json=api.UserUpdate(unix_user="nobody"))
    return lab.login(name, PASSWORD)


def container_job(lab: Lab, token: str, *argv: str) -> int:
    job_id = lab.submit(
        "--env", "docker", "--image", "mlsm-test/busybox:latest", "--no-code", "--gpus", "1",
        "--", *argv, token=token,
    )  # fmt: skip
    lab.wait_job(job_id, "running", timeout=JOB_DEADLINE_S)
    return job_id


def test_shell_into_a_container_job(lab: Lab, member: str) -> None:
    job_id = container_job(lab, member, "sleep", "600")
    child = spawn(lab, "shell", str(job_id), token=member, rows=25, cols=90)
    prompt(child)
    out = run(child, "echo uid=$(id -u) gpus=$NVIDIA_VISIBLE_DEVICES; stty size")
    job = lab.job(job_id)
    assert "uid=65534" in out  # the container's user: the member's account, never root
    assert f"gpus={job.gpu_indices[0]}" in out
    assert "25 90" in out
    child.setwinsize(33, 120)
    wait_until(lambda: "33 120" in run(child, "stty size"), EXPECT_S, "the resize")
    child.sendline("exit 5")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 5
    assert lab.job(job_id).state == "running"
    lab.admin.jobs.cancel([job_id])


def test_forward_into_a_containers_own_network(lab: Lab, member: str) -> None:
    serve = (
        "mkdir -p /tmp/w && echo hello-from-the-container > /tmp/w/x.txt && "
        f"exec httpd -f -p 127.0.0.1:{HTTP_PORT} -h /tmp/w"
    )
    job_id = container_job(lab, member, "sh", "-c", serve)
    local = free_port()
    fwd = lab.cli_popen("forward", str(job_id), str(HTTP_PORT), str(local), token=member)
    assert fwd.stderr is not None
    assert "forwarding" in fwd.stderr.readline().decode()

    def fetch() -> str | None:
        try:
            resp = httpx.get(f"http://127.0.0.1:{local}/x.txt", timeout=EXPECT_S)
        except httpx.HTTPError:
            return None
        return resp.text if resp.status_code == 200 else None

    body = wait_until(fetch, JOB_DEADLINE_S, "the container's httpd through the forward")
    assert body == "hello-from-the-container\n"
    lab.admin.jobs.cancel([job_id])
    fwd.wait(timeout=JOB_DEADLINE_S)
    assert fwd.returncode == 1
