"""The docker runtime against a real Docker engine and the offline image mlsm-test/busybox.

Without a reachable engine these tests skip with the reason; with ``CI=true`` they fail
instead, so CI cannot pass by skipping them. The image is built by tests/docker_image.sh.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import select
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from agent.runtimes.base import LOG_NAME, AdoptRecord, RuntimeContext, RuntimeStartError
from agent.runtimes.docker import DockerJobHandle, DockerRuntime
from agent.runtimes.docker import logs as docker_logs
from mlsm.wire.agent import JobReport, JobSpec, Mount
from tests.support.ci import require
from tests.support.fixtures import DOCKER_TEST_IMAGE
from tests.support.wait import wait_until

pytestmark = pytest.mark.docker

IMAGE = DOCKER_TEST_IMAGE
NODE = f"pytest-{os.getpid()}"
DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def engine(
    docker_engine: docker.DockerClient, docker_test_image: str
) -> Iterator[docker.DockerClient]:
    """The local engine with the test image present; this module's containers are removed
    at its end."""
    yield docker_engine
    for c in docker_engine.containers.list(all=True, filters={"label": f"mlsm.node={NODE}"}):
        c.remove(force=True)


@pytest.fixture
def ctx(tmp_path: Path) -> RuntimeContext:
    # A one-person node: jobs run as the agent's own account (the account rule has its own
    # tests below, with an agent that switches accounts).
    return RuntimeContext(
        node_name=NODE,
        agent_data=tmp_path / "agent",
        runs_as_root=os.geteuid() == 0,
        single_user=True,
        simulated_gpus=True,
    )


@pytest.fixture
def runtime(engine, ctx) -> DockerRuntime:
    return DockerRuntime(ctx)


# Container names carry the job id: keep them apart from any other test run on this engine.
_first_id = random.randrange(1 << 20, 1 << 30)
_next_id = iter(range(_first_id, _first_id + 10_000))


def make_spec(argv: list[str], **kw: Any) -> JobSpec:
    kw.setdefault("job_id", next(_next_id))
    kw.setdefault("image", IMAGE)
    return JobSpec(argv=argv, env_kind="docker", **kw)


def job_dir(ctx: RuntimeContext, spec: JobSpec) -> Path:
    return ctx.agent_data / "jobs" / str(spec.job_id)


def wait_report(handle: DockerJobHandle, deadline_s: float = DEADLINE_S) -> JobReport:
    return wait_until(handle.poll, deadline_s, f"job {handle.record.job_id} to end")


def log_text(path: Path) -> str:
    return (path / LOG_NAME).read_text()


def run_to_end(runtime: DockerRuntime, ctx: RuntimeContext, spec: JobSpec) -> tuple[JobReport, str]:
    d = job_dir(ctx, spec)
    report = wait_report(runtime.start(spec, d))
    return report, log_text(d)


def body(log: str) -> str:
    """output.log without the mlsm header line."""
    first, _, rest = log.partition("\n")
    assert first.startswith("[mlsm] job "), first
    return rest


# ---------------------------------------------------------------- command, env, output
def test_argv_is_passed_verbatim_without_a_shell(runtime, ctx, engine):
    argv = ["sh", "-c", 'for a in "$@"; do echo "[$a]"; done', "argv0", "a b", "$HOME", "'q'"]
    spec = make_spec(argv, keep_container=True)
    report, log = run_to_end(runtime, ctx, spec)
    assert body(log) == "[a b]\n[$HOME]\n['q']\n"
    assert engine.containers.get(report.container_id).attrs["Config"]["Cmd"] == argv


def test_output_lands_in_output_log_with_a_header_and_the_exit_code(runtime, ctx):
    spec = make_spec(["sh", "-c", "echo to-out; echo to-err >&2; exit 3"])
    report, log = run_to_end(runtime, ctx, spec)
    header = log.splitlines()[0]
    assert header.startswith(f"[mlsm] job {spec.job_id} attempt 0 on {NODE} started ")
    assert f"in image {IMAGE}" in header
    assert "to-out\n" in log and "to-err\n" in log
    assert (report.state, report.exit_code, report.end_kind) == ("exited", 3, "exit")
    assert report.reason == "exit code 3"
    assert report.log_size == len(log.encode())


def test_env_names_gpus_job_and_datasets(runtime, ctx, engine, tmp_path, caplog):
    ds = tmp_path / "ds"
    ds.mkdir()
    spec = make_spec(
        ["env"],
        gpus=[1, 3],
        env={"FOO": "bar baz", "CUDA_VISIBLE_DEVICES": "0,1,2,3"},
        datasets={"imagenet-1k": str(ds)},
        array_index=7,
        keep_container=True,
    )
    with caplog.at_level(logging.INFO, logger="mlsm.agent.docker"):
        handle = runtime.start(spec, job_dir(ctx, spec))
    report = wait_report(handle)
    env = dict(line.split("=", 1) for line in body(log_text(job_dir(ctx, spec))).splitlines())
    assert env["FOO"] == "bar baz"
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3"  # the job cannot widen its allocation
    assert env["NVIDIA_VISIBLE_DEVICES"] == "1,3"
    assert env["MLSM_JOB_ID"] == str(spec.job_id)
    assert env["MLSM_NODE"] == NODE
    assert env["MLSM_OUTPUT_DIR"] == "/mlsm/output"
    assert env["MLSM_ARRAY_INDEX"] == "7"
    assert env["MLSM_DATASET_IMAGENET_1K"] == "/datasets/imagenet-1k"
    assert handle.device_request_ids == [1, 3]
    container = engine.containers.get(report.container_id)
    assert container.labels["mlsm.gpus"] == "1,3"
    assert not container.attrs["HostConfig"].get("DeviceRequests")
    assert "simulated GPUs, no device request" in caplog.text


def test_real_gpus_become_a_device_request_for_exactly_those_ids(engine, tmp_path):
    ctx = RuntimeContext(node_name=NODE, agent_data=tmp_path, simulated_gpus=False)
    spec = make_spec(["true"], gpus=[1, 3])
    d = job_dir(ctx, spec)
    d.mkdir(parents=True)
    kwargs = DockerRuntime(ctx)._container_kwargs(spec, d)
    container = engine.containers.create(**kwargs)  # create only: no NVIDIA runtime here
    try:
        (request,) = container.attrs["HostConfig"]["DeviceRequests"]
        assert request["DeviceIDs"] == ["1", "3"]
        assert request["Capabilities"] == [["gpu"]]
        assert request["Driver"] == "nvidia"
        env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
        # inside, the container sees only its two GPUs, numbered from 0
        assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
        assert env["NVIDIA_VISIBLE_DEVICES"] == "1,3"
    finally:
        container.remove(force=True)


def test_no_gpus_hide_every_gpu(runtime, ctx, tmp_path):
    env = runtime._container_kwargs(make_spec(["true"]), tmp_path)["environment"]
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"


def test_limits_labels_name_network_and_workdir(runtime, ctx, engine):
    spec = make_spec(
        ["pwd"], cpus=0.5, mem_bytes=64 << 20, workdir="/tmp", attempt=2, keep_container=True
    )
    report, log = run_to_end(runtime, ctx, spec)
    assert body(log) == "/tmp\n"
    attrs = engine.containers.get(report.container_id).attrs
    host = attrs["HostConfig"]
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == host["MemorySwap"] == 64 << 20
    assert host["NetworkMode"] == "none"
    assert attrs["Name"] == f"/mlsm-job-{spec.job_id}-2"
    labels = attrs["Config"]["Labels"]
    assert labels["mlsm.job"] == str(spec.job_id)
    assert labels["mlsm.attempt"] == "2"
    assert labels["mlsm.node"] == NODE
    assert labels["mlsm.managed"] == "1"


def test_a_network_the_node_does_not_allow_is_refused(runtime, ctx):
    spec = make_spec(["true"], network="host")
    with pytest.raises(RuntimeStartError, match=f"network host is not allowed on node {NODE}"):
        runtime.start(spec, job_dir(ctx, spec))


@pytest.fixture
def root_ctx(tmp_path: Path) -> RuntimeContext:
    """An agent running as root that switches accounts, as the packaged service does."""
    require(os.geteuid() == 0, "an agent that switches accounts runs as root")
    return RuntimeContext(
        node_name=NODE, agent_data=tmp_path / "agent", runs_as_root=True, simulated_gpus=True
    )


def test_a_container_runs_as_the_jobs_account_never_the_images_root(engine, root_ctx):
    runtime = DockerRuntime(root_ctx)
    spec = make_spec(
        ["sh", "-c", "id -u; id -g; touch /mlsm/output/mine && echo wrote"],
        user="alice",
        unix_user="nobody",
        keep_container=True,
    )
    report, log = run_to_end(runtime, root_ctx, spec)
    assert body(log) == "65534\n65534\nwrote\n"
    attrs = engine.containers.get(report.container_id).attrs
    assert attrs["Config"]["User"] == "65534:65534"
    assert "no-new-privileges" in attrs["HostConfig"]["SecurityOpt"]
    assert attrs["HostConfig"]["CapDrop"] == ["ALL"]
    assert (job_dir(root_ctx, spec) / "mine").stat().st_uid == 65534


@pytest.mark.parametrize(
    ("mapping", "refusal"),
    [
        ("root", "refusing to run a job as Unix user root: it is uid 0"),
        ("no-such-user-here", "Unix user no-such-user-here does not exist on this node"),
        ("", "no Unix account for mlsm-nobody-here on node"),
    ],
)
def test_a_container_job_with_no_usable_account_does_not_start(engine, root_ctx, mapping, refusal):
    spec = make_spec(["id", "-u"], user="mlsm-nobody-here", unix_user=mapping)
    with pytest.raises(RuntimeStartError, match=refusal):
        DockerRuntime(root_ctx).start(spec, job_dir(root_ctx, spec))
    assert not engine.containers.list(all=True, filters={"label": f"mlsm.job={spec.job_id}"})


def test_a_container_cannot_leave_a_setuid_root_file_for_other_accounts(engine, root_ctx):
    """Root in a container once left a setuid-root binary in the job dir and the agent's
    data dir became traversable: the job's account cannot make one, and no mode widens."""
    script = (
        "cp /bin/busybox /mlsm/output/sh; chown 0:0 /mlsm/output/sh; "
        "chmod 4755 /mlsm/output/sh; ls -ln /mlsm/output/sh"
    )
    spec = make_spec(["sh", "-c", script], user="alice", unix_user="nobody")
    root_ctx.agent_data.mkdir(parents=True, mode=0o700)
    run_to_end(DockerRuntime(root_ctx), root_ctx, spec)
    planted = job_dir(root_ctx, spec) / "sh"
    st = planted.lstat()
    assert st.st_uid == 65534  # the chown to root failed
    assert not (st.st_uid == 0 and st.st_mode & 0o4000)
    assert root_ctx.agent_data.stat().st_mode & 0o777 == 0o700  # never widened
    assert job_dir(root_ctx, spec).stat().st_mode & 0o007 == 0  # others cannot reach it


def test_a_job_without_a_unix_user_runs_as_the_nodes_default_account(engine, tmp_path):
    ctx = RuntimeContext(
        node_name=NODE, agent_data=tmp_path, runs_as_root=True, default_unix_user="nobody"
    )
    spec = make_spec(["id", "-u"])
    _, log = run_to_end(DockerRuntime(ctx), ctx, spec)
    assert body(log) == "65534\n"
    assert " as nobody " in log.splitlines()[0]


# ---------------------------------------------------------------- mounts
def test_job_dir_is_writable_datasets_and_ro_mounts_are_not(runtime, ctx, tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "data.txt").write_text("sample\n")
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    script = (
        "cat /datasets/x/data.txt; "
        "echo out > /mlsm/output/result.txt && echo output-ok; "
        "echo no 2>/dev/null >/datasets/x/new || echo dataset-ro; "
        "echo no 2>/dev/null >/ro/new || echo mount-ro; "
        "echo yes > /rw/new && echo mount-rw"
    )
    spec = make_spec(
        ["sh", "-c", script],
        datasets={"x": str(ds)},
        mounts=[
            Mount(source=str(ro), target="/ro", read_only=True),
            Mount(source=str(rw), target="/rw", read_only=False),
        ],
    )
    report, log = run_to_end(runtime, ctx, spec)
    assert body(log) == "sample\noutput-ok\ndataset-ro\nmount-ro\nmount-rw\n"
    assert (job_dir(ctx, spec) / "result.txt").read_text() == "out\n"
    assert not (ds / "new").exists() and not (ro / "new").exists()
    assert (rw / "new").read_text() == "yes\n"
    assert report.exit_code == 0


def test_a_mount_outside_the_nodes_roots_is_refused(engine, ctx, tmp_path):
    runtime = DockerRuntime(ctx, mount_roots=[str(tmp_path / "allowed")])
    spec = make_spec(["true"], mounts=[Mount(source="/etc", target="/host-etc")])
    with pytest.raises(RuntimeStartError, match="mount /etc is outside the allowed roots"):
        runtime.start(spec, job_dir(ctx, spec))


# ---------------------------------------------------------------- ending
def test_container_is_removed_at_the_end_unless_kept(runtime, ctx, engine):
    gone, _ = run_to_end(runtime, ctx, make_spec(["true"]))
    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(gone.container_id)
    kept, _ = run_to_end(runtime, ctx, make_spec(["true"], keep_container=True))
    assert engine.containers.get(kept.container_id).status == "exited"


def test_cancel_sends_sigterm_then_kills_after_the_grace(runtime, ctx):
    spec = make_spec(["sh", "-c", "trap '' TERM; echo ready; while true; do sleep 1; done"])
    d = job_dir(ctx, spec)
    handle = runtime.start(spec, d)
    wait_until(lambda: "ready" in log_text(d), DEADLINE_S, "the job to be ready")
    t0 = time.monotonic()
    handle.stop("cancelled by alice", "cancelled", grace_s=2)
    returned_after = time.monotonic() - t0
    report = wait_report(handle)
    ended_after = time.monotonic() - t0
    assert returned_after < 1.0  # stop() does not wait for the container
    assert ended_after >= 2.0  # SIGTERM was ignored, so it took the grace and a SIGKILL
    assert (report.end_kind, report.reason) == ("cancelled", "cancelled by alice")
    assert (report.exit_code, report.signal) == (137, 9)
    assert log_text(d).endswith(f"[mlsm] job {spec.job_id} cancelled: cancelled by alice\n")


def test_cancel_of_a_job_that_honours_sigterm_ends_it_before_the_grace(runtime, ctx):
    spec = make_spec(["sh", "-c", "echo ready; sleep 600"])
    d = job_dir(ctx, spec)
    handle = runtime.start(spec, d)
    wait_until(lambda: "ready" in log_text(d), DEADLINE_S, "the job to be ready")
    handle.stop("cancelled by bob", "cancelled", grace_s=60)
    report = wait_report(handle, deadline_s=30)  # well inside the 60 s grace
    assert (report.end_kind, report.exit_code, report.signal) == ("cancelled", 143, 15)


def test_timeout_stops_the_job(runtime, ctx):
    spec = make_spec(["sleep", "600"], timeout_s=1, kill_grace_s=1)
    d = job_dir(ctx, spec)
    report = wait_report(runtime.start(spec, d))
    assert (report.end_kind, report.reason) == ("timeout", "time limit 1s reached")
    assert f"[mlsm] job {spec.job_id} timed out: time limit 1s reached\n" in log_text(d)


def test_out_of_memory_is_reported_as_oom(runtime, ctx):
    # ~100 MB through a shell variable in a 16 MiB container without swap
    script = "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived ${#x}"
    spec = make_spec(["sh", "-c", script], mem_bytes=16 << 20)
    report, log = run_to_end(runtime, ctx, spec)
    require("survived" not in log, f"this engine does not enforce memory limits: {log.strip()}")
    assert (report.end_kind, report.reason) == ("oom", "killed: out of memory (limit 16 MiB)")
    assert report.exit_code == 137
    assert log.endswith(f"[mlsm] job {spec.job_id} killed: out of memory (limit 16 MiB)\n")


# ---------------------------------------------------------------- start errors
def test_missing_image_names_image_and_node(runtime, ctx):
    spec = make_spec(["true"], image="mlsm-test/absent:1")
    with pytest.raises(RuntimeStartError) as err:
        runtime.start(spec, job_dir(ctx, spec))
    assert str(err.value) == f"image mlsm-test/absent:1 not present on node {NODE}"


def test_a_command_missing_in_the_image_ends_with_127_and_says_why(runtime, ctx, engine):
    spec = make_spec(["/no/such/binary"])
    report, log = run_to_end(runtime, ctx, spec)
    assert (report.exit_code, report.end_kind) == (127, "exit")
    assert "/no/such/binary" in body(log)


def test_engine_unavailable_is_reported_not_raised(ctx):
    def dead() -> docker.DockerClient:
        return docker.DockerClient(base_url="unix:///nonexistent.sock")

    ok, why = DockerRuntime(ctx, client_factory=dead).available()
    assert not ok
    assert why.startswith("Docker engine unavailable: ")
    spec = make_spec(["true"])
    with pytest.raises(RuntimeStartError, match="Docker engine unavailable"):
        DockerRuntime(ctx, client_factory=dead).start(spec, job_dir(ctx, spec))


def test_engine_available(runtime):
    assert runtime.available() == (True, "")


# ---------------------------------------------------------------- agent restart
CHATTY = (
    'i=0; while [ $i -lt 300 ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); done; '
    "echo half-line-without-newline | tr -d '\\n'; echo ' finished'; "
    "while [ ! -e /mlsm/output/go ]; do sleep 0.1; done; "
    "head -c 40000 /dev/zero | tr '\\0' x; echo; printf 'last, no newline'"
)


def _restart_mid_run(engine, ctx, *, save: bool) -> None:
    spec = make_spec(["sh", "-c", CHATTY], keep_container=True)
    d = job_dir(ctx, spec)
    handle = DockerRuntime(ctx).start(spec, d)
    wait_until(lambda: "finished" in log_text(d), DEADLINE_S, "the first burst of output")
    handle.detach(save=save)  # the agent goes away; the container keeps running
    record = AdoptRecord(
        **{f: getattr(handle.record, f) for f in handle.record.__dataclass_fields__}
    )

    adopted = DockerRuntime(ctx).adopt(record)
    assert isinstance(adopted, DockerJobHandle)
    (job_dir(ctx, spec) / "go").touch()
    report = wait_report(adopted)
    assert (report.exit_code, report.end_kind) == (0, "exit")
    full = engine.containers.get(report.container_id).logs(stdout=True, stderr=True)
    assert body(log_text(d)).encode() == full
    assert full.endswith(b"x\nlast, no newline")


def test_adopt_after_a_clean_agent_stop_resumes_the_log_byte_exact(engine, ctx):
    _restart_mid_run(engine, ctx, save=True)


def test_adopt_after_an_agent_crash_resumes_the_log_byte_exact(engine, ctx, monkeypatch):
    # No cursor save after the header: everything written since is re-fetched, none doubled.
    monkeypatch.setattr(docker_logs, "CURSOR_SAVE_INTERVAL_S", 3600.0)
    _restart_mid_run(engine, ctx, save=False)


def test_adopt_of_a_container_that_ended_meanwhile_reports_its_exit(engine, ctx):
    script = "echo before; while [ ! -e /mlsm/output/go ]; do sleep 0.1; done; echo after; exit 5"
    spec = make_spec(["sh", "-c", script])
    d = job_dir(ctx, spec)
    handle = DockerRuntime(ctx).start(spec, d)
    wait_until(lambda: "before" in log_text(d), DEADLINE_S, "the job to start")
    handle.detach()
    (job_dir(ctx, spec) / "go").touch()
    container = engine.containers.get(handle.container_id)
    wait_until(
        lambda: container.reload() or container.status == "exited",
        DEADLINE_S,
        "the container to exit",
    )

    report = DockerRuntime(ctx).adopt(handle.record)
    assert isinstance(report, JobReport)
    assert (report.state, report.exit_code, report.reason) == ("exited", 5, "exit code 5")
    assert body(log_text(d)) == "before\nafter\n"
    with pytest.raises(docker.errors.NotFound):
        container.reload()


def test_adopt_finds_the_container_by_labels_without_an_id(engine, ctx):
    spec = make_spec(["sh", "-c", "echo up; sleep 600"])
    d = job_dir(ctx, spec)
    handle = DockerRuntime(ctx).start(spec, d)
    wait_until(lambda: "up" in log_text(d), DEADLINE_S, "the job to start")
    handle.detach()
    handle.record.container_id = None
    adopted = DockerRuntime(ctx).adopt(handle.record)
    assert isinstance(adopted, DockerJobHandle)
    assert adopted.container_id == handle._container.id
    adopted.stop("cancelled by carol", "cancelled", grace_s=0)
    assert wait_report(adopted).end_kind == "cancelled"
    assert body(log_text(d)).count("up\n") == 1


def test_a_container_that_vanished_while_the_agent_was_down_is_lost(engine, ctx):
    spec = make_spec(["sleep", "600"])
    handle = DockerRuntime(ctx).start(spec, job_dir(ctx, spec))
    handle.detach()
    engine.containers.get(handle.container_id).remove(force=True)
    report = DockerRuntime(ctx).adopt(handle.record)
    assert report == JobReport(
        job_id=spec.job_id,
        attempt=0,
        state="lost",
        container_id=handle.container_id,
        started_at=handle.record.started_at,
        ended_at=report.ended_at,
        reason="container vanished while the agent was down",
        end_kind="lost",
        log_size=report.log_size,
    )


# ---------------------------------------------------------------- the engine going away
class _EngineProxy:
    """A UNIX socket in front of the engine that the test can cut and restore."""

    def __init__(self, path: Path) -> None:
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        require(
            host.startswith("unix://"), f"the engine proxy needs a UNIX socket engine, not {host}"
        )
        self.path = path
        self.engine_sock = host.removeprefix("unix://")
        self._conns: list[socket.socket] = []
        self._server: socketserver.ThreadingUnixStreamServer | None = None

    def up(self) -> None:
        proxy = self

        class Pipe(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                upstream = socket.socket(socket.AF_UNIX)
                upstream.connect(proxy.engine_sock)
                proxy._conns += [self.request, upstream]
                pair = {self.request: upstream, upstream: self.request}
                with contextlib.suppress(OSError, ValueError):
                    while True:
                        readable, _, _ = select.select(list(pair), [], [])
                        for s in readable:
                            data = s.recv(65536)
                            if not data:
                                return
                            pair[s].sendall(data)

        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = socketserver.ThreadingUnixStreamServer(str(self.path), Pipe)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._conns.clear()


def test_the_log_survives_the_engine_going_away_and_coming_back(engine, ctx, tmp_path):
    proxy = _EngineProxy(tmp_path / "engine.sock")
    proxy.up()
    runtime = DockerRuntime(
        ctx, client_factory=lambda: docker.DockerClient(base_url=f"unix://{proxy.path}")
    )
    script = (
        "echo one; while [ ! -e /mlsm/output/go ]; do sleep 0.1; done; "
        'i=0; while [ $i -lt 100 ]; do echo "two $i"; i=$((i+1)); done; '
        "while [ ! -e /mlsm/output/end ]; do sleep 0.1; done; echo three"
    )
    spec = make_spec(["sh", "-c", script], keep_container=True)
    d = job_dir(ctx, spec)
    handle = runtime.start(spec, d)
    wait_until(lambda: "one" in log_text(d), DEADLINE_S, "the first line")
    proxy.down()
    assert handle.poll() is None  # cannot tell while the engine is away: not lost, not ended
    (job_dir(ctx, spec) / "go").touch()
    container = engine.containers.get(handle.container_id)
    wait_until(
        lambda: b"two 99" in container.logs(),
        DEADLINE_S,
        "output written while the engine was away",
    )
    assert "two" not in log_text(d)
    proxy.up()
    wait_until(
        lambda: "two 99" in log_text(d), DEADLINE_S, "the follower to reconnect and catch up"
    )
    (job_dir(ctx, spec) / "end").touch()
    report = wait_report(handle)
    assert report.exit_code == 0
    assert body(log_text(d)).encode() == container.logs()


def test_adopt_while_the_engine_is_away_attaches_once_it_is_back(engine, ctx, tmp_path):
    proxy = _EngineProxy(tmp_path / "engine.sock")
    proxy.up()
    spec = make_spec(["sh", "-c", "echo up; while [ ! -e /mlsm/output/go ]; do sleep 0.1; done"])
    d = job_dir(ctx, spec)
    handle = DockerRuntime(ctx).start(spec, d)
    wait_until(lambda: "up" in log_text(d), DEADLINE_S, "the job to start")
    handle.detach()
    proxy.down()
    runtime = DockerRuntime(
        ctx, client_factory=lambda: docker.DockerClient(base_url=f"unix://{proxy.path}")
    )
    adopted = runtime.adopt(handle.record)
    assert isinstance(adopted, DockerJobHandle)
    assert adopted.poll() is None
    proxy.up()
    (job_dir(ctx, spec) / "go").touch()
    report = wait_report(adopted)
    assert (report.state, report.exit_code) == ("exited", 0)
    assert body(log_text(d)) == "up\n"
