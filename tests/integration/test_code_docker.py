"""Shipped code in a container job: real Docker (image ``mlsm-test/busybox:latest``), an
agent running as root that runs a member's jobs as that member's Unix account.

The copy of the shipped tree is written for the job's account (``nobody`` here), and the
container runs with it as its working directory; outputs go to ``$MLSM_OUTPUT_DIR``.
"""

from __future__ import annotations

import os
import pwd
import secrets
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from mlsm.wire import api
from tests.integration.lab import PASSWORD, Lab
from tests.integration.test_docker_jobs import remove_containers, start_agent

pytestmark = pytest.mark.docker

NODE = f"cd{os.getpid()}x{secrets.token_hex(3)}"
JOB_DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def lab(
    tmp_path_factory: pytest.TempPathFactory,
    docker_engine: docker.DockerClient,
    docker_test_image: str,
) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("code-docker")) as lab:
        try:
            lab.start_master()
            start_agent(lab, NODE)
            lab.cli("settings", "set", "--any-image", "--no-mounts")
            yield lab
        finally:
            remove_containers(docker_engine, NODE)


def test_a_container_job_runs_in_the_shipped_tree_as_its_account(
    lab: Lab, docker_test_image: str, tmp_path: Path
) -> None:
    name = f"m{secrets.token_hex(2)}"
    lab.admin.call(
        "POST",
        "/api/v1/users",
        json=api.UserCreate(username=name, password=PASSWORD, role="member", unix_user="nobody"),
    )
    lab.admin.call("PATCH", f"/api/v1/users/{name}", json=api.UserUpdate(unix_user="nobody"))
    token = lab.login(name, PASSWORD)
    proj = tmp_path / "proj"
    (proj / "conf").mkdir(parents=True)
    (proj / "train.sh").write_text(
        'echo "cwd=$(pwd)"; cat conf/lr.txt; echo done > "$MLSM_OUTPUT_DIR/result.txt"\n'
    )
    (proj / "conf" / "lr.txt").write_text("lr=0.1\n")
    (proj / "cache.pyc").write_text("junk")
    (proj / ".mlsmignore").write_text("*.pyc\n")
    res = lab.cli(
        "submit", "--json", "--env", "docker", "--image", docker_test_image, "--",
        "sh", "train.sh", token=token, cwd=proj,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    jid = int(res.json()["job"]["id"])
    job = lab.wait_job(jid, timeout=JOB_DEADLINE_S)
    log = lab.log(jid).decode()
    assert job.state == "succeeded", log
    assert "cwd=/mlsm/output/code" in log and "lr=0.1" in log
    job_dir = lab.agents[NODE].data_dir / "jobs" / str(jid)
    assert (job_dir / "result.txt").read_text() == "done\n"
    code = job_dir / "code"
    nobody = pwd.getpwnam("nobody").pw_uid
    assert {p.stat().st_uid for p in [code, *code.rglob("*")]} == {nobody}
    assert not (code / "cache.pyc").exists()
