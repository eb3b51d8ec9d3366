"""The process runtime with real subprocesses, real signals and a real shim (no mocks)."""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agent.logship import _read_chunk
from agent.runtimes.base import LOG_NAME, AdoptRecord, RuntimeContext, RuntimeStartError
from agent.runtimes.process import ProcessHandle, ProcessRuntime
from mlsm.wire.agent import JobReport, JobSpec
from tests.support.wait import wait_until

PY = sys.executable
REPO = Path(__file__).resolve().parents[3]
DEADLINE_S = 15.0
POLL_S = 0.01
#: A grace far longer than any test waits (a stop that waited it out would time the test out).
LONG_GRACE_S = 3600.0


# ----------------------------------------------------------------------------- helpers
def wait_report(handle: ProcessHandle, timeout: float = DEADLINE_S) -> JobReport:
    report = wait_until(handle.poll, timeout, f"job {handle.record.job_id} to end", poll_s=POLL_S)
    assert isinstance(report, JobReport)
    return report


def session_alive(sid: int) -> list[int]:
    """Live (non-zombie) processes of session ``sid``, leader included."""
    out = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getsid(p.pid) == sid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except OSError:
            continue
    return out


@pytest.fixture
def agent_data(tmp_path: Path) -> Path:
    return tmp_path / "agent"


@pytest.fixture
def runtime(agent_data: Path) -> ProcessRuntime:
    return ProcessRuntime(RuntimeContext(node_name="node1", agent_data=agent_data))


_ids = iter(range(1, 10_000))


def spec(argv: list[str], **kw: object) -> JobSpec:
    return JobSpec(job_id=kw.pop("job_id", next(_ids)), argv=argv, **kw)  # type: ignore[arg-type]


def start(rt: ProcessRuntime, s: JobSpec) -> ProcessHandle:
    return rt.start(s, rt.ctx.agent_data / "jobs" / str(s.job_id))


def log_text(handle: ProcessHandle) -> str:
    return (handle.job_dir / LOG_NAME).read_text()


# ----------------------------------------------------------------------------- environment
def test_job_sees_allocated_gpus_and_mlsm_variables(
    runtime: ProcessRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_ONLY_SECRET", "must-not-leak")
    code = "import json,os; json.dump(dict(os.environ), open('env.json','w'))"
    s = spec(
        [PY, "-c", code],
        gpus=[1, 3],
        env={"FOO": "bar", "CUDA_VISIBLE_DEVICES": "0,1,2,3"},
        array_index=4,
        attempt=2,
        datasets={"imagenet-1k": "/data/imagenet", "coco": "/data/coco"},
    )
    h = start(runtime, s)
    assert wait_report(h).exit_code == 0
    env = json.loads((h.job_dir / "env.json").read_text())
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "1,3"
    assert env["MLSM_JOB_ID"] == str(s.job_id)
    assert env["MLSM_NODE"] == "node1"
    assert env["MLSM_OUTPUT_DIR"] == str(h.job_dir)
    assert env["MLSM_ARRAY_INDEX"] == "4"
    assert env["MLSM_ATTEMPT"] == "2"
    assert env["MLSM_DATASET_IMAGENET_1K"] == "/data/imagenet"
    assert env["MLSM_DATASET_COCO"] == "/data/coco"
    assert env["FOO"] == "bar"
    assert "AGENT_ONLY_SECRET" not in env
    assert {"PATH", "HOME", "USER", "LANG"} <= env.keys()


def test_no_gpus_means_none_visible(runtime: ProcessRuntime) -> None:
    code = (
        "import os; e = os.environ\n"
        "print(repr(e['CUDA_VISIBLE_DEVICES']), e['NVIDIA_VISIBLE_DEVICES'])"
    )
    h = start(runtime, spec([PY, "-c", code]))
    wait_report(h)
    assert "'' void" in log_text(h)


def test_argv_is_passed_verbatim_without_a_shell(runtime: ProcessRuntime) -> None:
    args = ["a b", "'single'", '"double"', "$(echo pwned)", "`id`", "*", "", "x;y|z", "$HOME"]
    code = "import json,sys; json.dump(sys.argv[1:], open('argv.json','w'))"
    h = start(runtime, spec([PY, "-c", code, *args]))
    assert wait_report(h).exit_code == 0
    assert json.loads((h.job_dir / "argv.json").read_text()) == args


def test_workdir_is_the_job_dir_by_default_and_spec_workdir_otherwise(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    h = start(runtime, spec(["pwd"]))
    wait_report(h)
    assert str(h.job_dir) in log_text(h).splitlines()[1]
    h = start(runtime, spec(["pwd"], workdir=str(tmp_path)))
    wait_report(h)
    assert log_text(h).splitlines()[1] == str(tmp_path)


# ----------------------------------------------------------------------------- outcomes
@pytest.mark.parametrize("code", [0, 3])
def test_exit_code_is_recorded(runtime: ProcessRuntime, code: int) -> None:
    h = start(runtime, spec([PY, "-c", f"raise SystemExit({code})"]))
    r = wait_report(h)
    assert (r.state, r.exit_code, r.signal, r.end_kind) == ("exited", code, None, "exit")
    assert r.reason == f"exit code {code}"
    assert r.ended_at is not None and r.started_at is not None and r.ended_at >= r.started_at


def test_death_by_signal_is_recorded(runtime: ProcessRuntime) -> None:
    h = start(runtime, spec([PY, "-c", "import os; os.kill(os.getpid(), 9)"]))
    r = wait_report(h)
    assert (r.exit_code, r.signal) == (None, 9)
    assert r.reason.startswith("killed by signal 9")


def test_output_log_has_header_then_output(runtime: ProcessRuntime) -> None:
    h = start(runtime, spec([PY, "-c", "import sys; print('out'); print('err', file=sys.stderr)"]))
    r = wait_report(h)
    lines = log_text(h).splitlines()
    assert lines[0].startswith(f"[mlsm] job {h.record.job_id} attempt 0 on node1 started ")
    assert lines[0].endswith(f" as {pwd.getpwuid(os.geteuid()).pw_name}")
    assert sorted(lines[1:]) == ["err", "out"]
    assert r.log_size == (h.job_dir / LOG_NAME).stat().st_size


def test_job_dir_is_private_to_owner_and_group(runtime: ProcessRuntime) -> None:
    h = start(runtime, spec(["true"]))
    wait_report(h)
    assert h.job_dir.stat().st_mode & 0o777 == 0o750


def test_unexecutable_file_fails_to_start(runtime: ProcessRuntime, tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00\x01not a program")
    junk.chmod(0o755)
    r = wait_report(start(runtime, spec([str(junk)])))
    assert (r.state, r.end_kind) == ("failed_to_start", "error")
    assert "could not execute" in r.reason


# ----------------------------------------------------------------------------- stopping
GRANDCHILDREN = """
import os, signal, subprocess, sys, time
ignore = "import os,signal as s,time; s.signal(s.SIGTERM, s.SIG_IGN); {extra} time.sleep(120)"
subprocess.Popen([sys.executable, "-c", ignore.format(extra="")])
subprocess.Popen([sys.executable, "-c", ignore.format(extra="os.setpgrp();")])
time.sleep(120)
"""


def test_cancel_leaves_no_process_of_the_session(runtime: ProcessRuntime) -> None:
    h = start(runtime, spec([PY, "-c", GRANDCHILDREN]))
    sid = h.session_id
    wait_until(
        lambda: len(session_alive(sid)) >= 4,
        DEADLINE_S,
        "shim, job and two grandchildren",
        poll_s=POLL_S,
    )
    h.stop("cancelled by alice: wrong data", "cancelled", grace_s=0.5)
    r = wait_report(h)
    assert (r.state, r.end_kind, r.reason) == (
        "exited",
        "cancelled",
        "cancelled by alice: wrong data",
    )
    wait_until(
        lambda: not session_alive(sid),
        DEADLINE_S,
        "every process of the job's session to be gone",
        poll_s=POLL_S,
    )
    assert (
        log_text(h).splitlines()[-1]
        == f"[mlsm] job {h.record.job_id} cancelled by alice: wrong data"
    )


def test_stop_sends_sigterm_then_sigkill_after_grace(runtime: ProcessRuntime) -> None:
    code = (
        "import signal,time\n"
        "signal.signal(signal.SIGTERM, lambda *a: open('got_term','w').close())\n"
        "open('ready','w').close()\n"
        "while True: time.sleep(1)\n"
    )
    h = start(runtime, spec([PY, "-c", code]))
    wait_until(
        lambda: (h.job_dir / "ready").exists(),
        DEADLINE_S,
        "the job to install its handler",
        poll_s=POLL_S,
    )
    t0 = time.monotonic()
    h.stop("too slow", "cancelled", grace_s=0.5)
    wait_until(
        lambda: (h.job_dir / "got_term").exists(),
        DEADLINE_S,
        "SIGTERM to reach the job",
        poll_s=POLL_S,
    )
    r = wait_report(h)
    assert time.monotonic() - t0 >= 0.5
    assert (r.signal, r.end_kind, r.reason) == (9, "cancelled", "cancelled: too slow")


def test_stop_returns_while_the_job_runs_out_its_grace(runtime: ProcessRuntime) -> None:
    """stop() only asks: it returns while a job that keeps running after SIGTERM still has
    its grace (a grace no load can use up, so no clock is read); a second stop brings the
    kill forward. How long the call takes is a figure of tests/bench/bench_job_start.py."""
    code = (
        "import signal,time\n"
        "signal.signal(signal.SIGTERM, lambda *a: open('got_term','w').close())\n"
        "open('ready','w').close()\n"
        "while True: time.sleep(1)\n"
    )
    h = start(runtime, spec([PY, "-c", code]))
    wait_until(
        lambda: (h.job_dir / "ready").exists(),
        DEADLINE_S,
        "the job to install its handler",
        poll_s=POLL_S,
    )
    h.stop("too slow", "cancelled", grace_s=LONG_GRACE_S)
    assert h.poll() is None, "stop() returned only after the job had ended"
    h.stop("too slow", "cancelled", grace_s=0)
    r = wait_report(h)
    assert (r.signal, r.end_kind, r.reason) == (9, "cancelled", "cancelled: too slow")


def test_job_that_exits_on_sigterm_reports_its_exit(runtime: ProcessRuntime) -> None:
    code = (
        "import signal,sys,time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        "open('ready','w').close()\n"
        "time.sleep(120)\n"
    )
    h = start(runtime, spec([PY, "-c", code]))
    wait_until(
        lambda: (h.job_dir / "ready").exists(),
        DEADLINE_S,
        "the job to install its handler",
        poll_s=POLL_S,
    )
    h.stop("cancelled by bob", "cancelled", grace_s=30)
    r = wait_report(h, timeout=10)
    assert (r.exit_code, r.signal, r.end_kind) == (0, None, "cancelled")


def test_leftovers_of_a_finished_job_are_killed(runtime: ProcessRuntime) -> None:
    h = start(runtime, spec(["sh", "-c", "sleep 120 & echo started"]))
    sid = h.session_id
    r = wait_report(h)
    assert r.exit_code == 0
    wait_until(
        lambda: not session_alive(sid),
        DEADLINE_S,
        "the background sleep to be killed",
        poll_s=POLL_S,
    )


def test_timeout_ends_the_job(runtime: ProcessRuntime) -> None:
    h = start(runtime, spec(["sleep", "120"], timeout_s=0.3, kill_grace_s=2))
    r = wait_report(h)
    assert (r.state, r.end_kind, r.signal) == ("exited", "timeout", signal.SIGTERM)
    assert r.reason == "timeout after 0.3s"
    assert log_text(h).splitlines()[-1] == f"[mlsm] job {h.record.job_id} timed out after 0.3s"


def test_stop_after_end_is_harmless(runtime: ProcessRuntime) -> None:
    h = start(runtime, spec(["true"]))
    r = wait_report(h)
    h.stop("late", "cancelled", grace_s=0)
    assert h.poll() is r and r.end_kind == "exit"


# ----------------------------------------------------------------------------- adopt
AGENT_SCRIPT = """
import dataclasses, json, sys, time
from pathlib import Path
from agent.runtimes.base import RuntimeContext
from agent.runtimes.process import ProcessRuntime
from mlsm.wire.agent import JobSpec
data = Path(sys.argv[1])
rt = ProcessRuntime(RuntimeContext(node_name="node1", agent_data=data))
spec = JobSpec(job_id=77, argv=sys.argv[2:])
h = rt.start(spec, data / "jobs" / "77")
print(json.dumps(dataclasses.asdict(h.record)), flush=True)
time.sleep(600)
"""


def run_agent_then_kill_it(agent_data: Path, argv: list[str]) -> AdoptRecord:
    """Start a job from a separate agent process, then kill -9 that agent."""
    agent = subprocess.Popen(
        [PY, "-c", AGENT_SCRIPT, str(agent_data), *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert agent.stdout is not None
        record = AdoptRecord(**json.loads(agent.stdout.readline()))
    finally:
        agent.kill()
        agent.wait()
    return record


def test_adopt_after_agent_kill_reports_the_exit_code(
    runtime: ProcessRuntime, agent_data: Path
) -> None:
    go = agent_data / "go"
    code = f"import os,time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.01)\nexit(7)"
    record = run_agent_then_kill_it(agent_data, [PY, "-c", code])
    handle = runtime.adopt(record)  # a fresh runtime, as after an agent restart
    assert isinstance(handle, ProcessHandle)
    assert handle.poll() is None
    go.touch()
    r = wait_report(handle)
    assert (r.job_id, r.state, r.exit_code, r.end_kind) == (77, "exited", 7, "exit")


def test_adopted_job_can_still_be_cancelled(runtime: ProcessRuntime, agent_data: Path) -> None:
    record = run_agent_then_kill_it(agent_data, ["sleep", "120"])
    handle = runtime.adopt(record)
    assert isinstance(handle, ProcessHandle)
    handle.stop("cancelled by alice", "cancelled", grace_s=1)
    r = wait_report(handle)
    assert (r.end_kind, r.signal) == ("cancelled", signal.SIGTERM)
    wait_until(
        lambda: not session_alive(record.pid or 0),
        DEADLINE_S,
        "the session to be empty",
        poll_s=POLL_S,
    )


def test_adopt_of_a_job_that_ended_meanwhile_gives_its_final_report(
    runtime: ProcessRuntime, agent_data: Path
) -> None:
    first = start(runtime, spec([PY, "-c", "raise SystemExit(5)"], job_id=500))
    wait_report(first)
    record = dataclasses.replace(first.record)
    fresh = ProcessRuntime(RuntimeContext(node_name="node1", agent_data=agent_data))
    r = fresh.adopt(record)
    assert isinstance(r, JobReport)
    assert (r.job_id, r.state, r.exit_code, r.end_kind) == (500, "exited", 5, "exit")


def test_adopt_of_a_reused_pid_is_lost(runtime: ProcessRuntime, agent_data: Path) -> None:
    job_dir = agent_data / "jobs" / "600"
    job_dir.mkdir(parents=True)
    me = psutil.Process()
    record = AdoptRecord(
        job_id=600,
        attempt=0,
        runtime="process",
        job_dir=str(job_dir),
        started_at=time.time() - 100,
        pid=me.pid,  # alive, but started at another time: not the job's shim
        pid_start=me.create_time() - 100,
    )
    r = runtime.adopt(record)
    assert isinstance(r, JobReport)
    assert (r.state, r.end_kind) == ("lost", "lost")
    assert r.reason == "process vanished while the agent was down"
    assert psutil.pid_exists(me.pid)


def test_adopt_of_a_vanished_process_is_lost(runtime: ProcessRuntime, agent_data: Path) -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    record = AdoptRecord(
        job_id=601, attempt=0, runtime="process", job_dir=str(agent_data / "jobs" / "601"),
        started_at=time.time(), pid=p.pid, pid_start=time.time(),
    )  # fmt: skip
    r = runtime.adopt(record)
    assert isinstance(r, JobReport) and r.state == "lost"


# ----------------------------------------------------------------------------- venv / conda
def test_venv_job_runs_with_the_venvs_python(runtime: ProcessRuntime, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([PY, "-m", "venv", "--without-pip", str(venv)], check=True)
    code = "import os,sys; print(sys.prefix); print(os.environ['VIRTUAL_ENV'])"
    h = start(runtime, spec(["python", "-c", code], env_kind="venv", venv=str(venv)))
    assert wait_report(h).exit_code == 0
    assert log_text(h).splitlines()[1:] == [str(venv), str(venv)]


def test_missing_venv_is_refused(runtime: ProcessRuntime, tmp_path: Path) -> None:
    with pytest.raises(RuntimeStartError, match=r"venv .*nope not found on this node"):
        start(runtime, spec(["python"], env_kind="venv", venv=str(tmp_path / "nope")))


def test_missing_command_is_refused(runtime: ProcessRuntime) -> None:
    s = spec(["no-such-command-mlsm", "x"])
    with pytest.raises(RuntimeStartError, match="command not found: no-such-command-mlsm"):
        start(runtime, s)
    assert (
        "could not start: command not found"
        in (runtime.ctx.agent_data / "jobs" / str(s.job_id) / LOG_NAME).read_text()
    )


def test_missing_workdir_is_refused(runtime: ProcessRuntime, tmp_path: Path) -> None:
    with pytest.raises(RuntimeStartError, match=r"workdir .* does not exist"):
        start(runtime, spec(["true"], workdir=str(tmp_path / "missing")))


def test_conda_absent_is_refused(runtime: ProcessRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONDA_EXE", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    if shutil.which("conda") or os.access("/opt/conda/bin/conda", os.X_OK):
        pytest.skip("conda is installed here")
    with pytest.raises(RuntimeStartError, match="conda is not installed on this node"):
        start(runtime, spec(["python"], env_kind="conda", conda="torch"))


def test_conda_env_is_activated(agent_data: Path, tmp_path: Path) -> None:
    # Test double: a stand-in `conda` executable answering `conda env list --json`.
    prefix = tmp_path / "envs" / "torch"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "conda-meta").mkdir()
    (prefix / "bin" / "python").symlink_to(PY)
    fake = tmp_path / "conda"
    fake.write_text(f"#!/bin/sh\necho '{json.dumps({'envs': [str(prefix)]})}'\n")
    fake.chmod(0o755)
    rt = ProcessRuntime(
        RuntimeContext(node_name="node1", agent_data=agent_data), conda_exe=str(fake)
    )
    code = (
        "import os,shutil; e = os.environ\n"
        "print(e['CONDA_PREFIX'], e['CONDA_DEFAULT_ENV'], shutil.which('python'))"
    )
    h = start(rt, spec(["python", "-c", code], env_kind="conda", conda="torch"))
    assert wait_report(h).exit_code == 0
    assert log_text(h).splitlines()[1] == f"{prefix} torch {prefix / 'bin' / 'python'}"
    with pytest.raises(RuntimeStartError, match="conda environment other not found"):
        start(rt, spec(["python"], env_kind="conda", conda="other"))


# ----------------------------------------------------------------------------- Unix accounts
@pytest.fixture
def unix_user() -> Iterator[pwd.struct_passwd]:
    if os.geteuid() != 0:
        pytest.skip("run-as-user needs the tests to run as root")
    if not shutil.which("useradd"):
        pytest.skip("useradd is not installed")
    name = "mlsmt" + secrets.token_hex(3)
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture
def root_agent_data() -> Iterator[Path]:
    # pytest's tmp dirs are 0700 under root; an agent data dir lives somewhere traversable.
    d = Path(tempfile.mkdtemp(prefix="mlsm-agent-", dir="/tmp"))
    d.chmod(0o711)
    try:
        yield d / "agent"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_job_runs_as_the_mapped_unix_user(
    unix_user: pwd.struct_passwd, root_agent_data: Path
) -> None:
    rt = ProcessRuntime(
        RuntimeContext(node_name="node1", agent_data=root_agent_data, runs_as_root=True)
    )
    h = start(rt, spec(["sh", "-c", "id -u; echo $USER $HOME"], unix_user=unix_user.pw_name))
    r = wait_report(h)
    assert r.exit_code == 0, log_text(h)
    lines = log_text(h).splitlines()
    assert lines[0].endswith(f" as {unix_user.pw_name}")
    assert lines[1:] == [str(unix_user.pw_uid), f"{unix_user.pw_name} {unix_user.pw_dir}"]
    assert (h.job_dir / LOG_NAME).stat().st_uid == unix_user.pw_uid
    assert h.job_dir.stat().st_uid == unix_user.pw_uid


def test_default_unix_user_applies_when_the_job_names_none(
    unix_user: pwd.struct_passwd, root_agent_data: Path
) -> None:
    ctx = RuntimeContext(
        node_name="node1", agent_data=root_agent_data, runs_as_root=True,
        default_unix_user=unix_user.pw_name,
    )  # fmt: skip
    h = start(ProcessRuntime(ctx), spec(["id", "-u"]))
    assert wait_report(h).exit_code == 0
    assert log_text(h).splitlines()[1] == str(unix_user.pw_uid)


def test_missing_unix_user_is_refused(agent_data: Path) -> None:
    rt = ProcessRuntime(RuntimeContext(node_name="node1", agent_data=agent_data, runs_as_root=True))
    with pytest.raises(
        RuntimeStartError, match="Unix user nosuchuser-mlsm does not exist on this node"
    ):
        start(rt, spec(["true"], unix_user="nosuchuser-mlsm"))


def test_uid_0_is_never_used_through_a_mapping(agent_data: Path) -> None:
    rt = ProcessRuntime(RuntimeContext(node_name="node1", agent_data=agent_data, runs_as_root=True))
    with pytest.raises(RuntimeStartError, match="uid 0"):
        start(rt, spec(["true"], unix_user="root"))


# ----------------------------------------------------------------------------- a hostile job
@pytest.fixture
def root_secret() -> Iterator[Path]:
    """A root-only file outside any job's reach, to aim links at."""
    d = Path(tempfile.mkdtemp(prefix="mlsm-secret-", dir="/tmp"))
    p = d / "secret"
    p.write_text("root-only secret\n")
    p.chmod(0o600)
    try:
        yield p
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _untouched(p: Path, before: os.stat_result) -> None:
    st = p.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600)
    assert (st.st_size, st.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert p.read_text() == "root-only secret\n"


def test_a_job_that_swaps_its_log_for_a_link_steers_no_root_file_operation(
    unix_user: pwd.struct_passwd, root_agent_data: Path, root_secret: Path
) -> None:
    """Cancel marker, retry, agent restart and log shipping once followed a link the job
    put in place of output.log, as root: each of them now leaves the target alone."""
    rt = ProcessRuntime(
        RuntimeContext(node_name="node1", agent_data=root_agent_data, runs_as_root=True)
    )
    before = root_secret.stat()
    plant = f'ln -sf {root_secret} "$MLSM_OUTPUT_DIR/output.log"; touch ready; sleep 60'
    s = spec(["sh", "-c", plant], unix_user=unix_user.pw_name)
    h = start(rt, s)
    wait_until(
        lambda: (h.job_dir / "ready").exists(),
        DEADLINE_S,
        "the job to plant its link",
        poll_s=POLL_S,
    )
    assert (h.job_dir / LOG_NAME).is_symlink()
    with pytest.raises(OSError):  # the shipper reads nothing through it
        _read_chunk(h.job_dir / LOG_NAME, 0, 1 << 20, h.record.uid)
    readopted = rt.adopt(dataclasses.replace(h.record))  # an agent restart
    assert isinstance(readopted, ProcessHandle)
    readopted.stop("cancelled by alice", "cancelled", grace_s=1)  # writes stop.json, marker
    r = wait_report(readopted)
    assert r.end_kind == "cancelled"
    # The retry starts a fresh log of the job's own instead of following the link.
    h2 = start(
        rt, spec(["echo", "attempt 2"], job_id=s.job_id, attempt=1, unix_user=unix_user.pw_name)
    )
    assert wait_report(h2).exit_code == 0
    log = h2.job_dir / LOG_NAME
    assert not log.is_symlink() and log.stat().st_uid == unix_user.pw_uid
    assert "attempt 2" in log.read_text() and "secret" not in log.read_text()
    _untouched(root_secret, before)


def test_a_job_cannot_write_where_the_agent_keeps_its_bookkeeping(
    unix_user: pwd.struct_passwd, root_agent_data: Path, root_secret: Path
) -> None:
    rt = ProcessRuntime(
        RuntimeContext(node_name="node1", agent_data=root_agent_data, runs_as_root=True)
    )
    control = root_agent_data / "control" / "4242"
    plant = f"ln -s {root_secret} {control}/stop.json.tmp && echo planted; echo tried"
    h = start(rt, spec(["sh", "-c", plant], job_id=4242, unix_user=unix_user.pw_name))
    wait_report(h)
    assert "tried" in log_text(h) and "planted" not in log_text(h)
    assert not (control / "stop.json.tmp").is_symlink()
    assert stat.S_IMODE(control.stat().st_mode) == 0o700 and control.stat().st_uid == 0


def test_a_fifo_in_place_of_the_log_stalls_nothing(
    unix_user: pwd.struct_passwd, root_agent_data: Path
) -> None:
    rt = ProcessRuntime(
        RuntimeContext(node_name="node1", agent_data=root_agent_data, runs_as_root=True)
    )
    fifo = 'rm "$MLSM_OUTPUT_DIR/output.log"; mkfifo "$MLSM_OUTPUT_DIR/output.log"; touch ready; sleep 60'
    h = start(rt, spec(["sh", "-c", fifo], unix_user=unix_user.pw_name))
    wait_until(
        lambda: (h.job_dir / "ready").exists(),
        DEADLINE_S,
        "the job to make its FIFO",
        poll_s=POLL_S,
    )
    t0 = time.monotonic()
    with pytest.raises(OSError):
        _read_chunk(h.job_dir / LOG_NAME, 0, 4096, h.record.uid)
    h.stop("cancelled", "cancelled", grace_s=1)  # appends its marker: must not block either
    wait_report(h)
    assert time.monotonic() - t0 < DEADLINE_S


def test_a_private_data_dir_is_not_widened_for_a_job_of_another_account(
    unix_user: pwd.struct_passwd, root_agent_data: Path
) -> None:
    root_agent_data.mkdir(mode=0o700)
    rt = ProcessRuntime(
        RuntimeContext(node_name="node1", agent_data=root_agent_data, runs_as_root=True)
    )
    with pytest.raises(RuntimeStartError, match=r"not reachable by Unix user .*0711"):
        start(rt, spec(["true"], unix_user=unix_user.pw_name))
    assert stat.S_IMODE(root_agent_data.stat().st_mode) == 0o700


def test_a_job_of_another_account_gets_a_traversable_new_data_dir_and_a_private_tree(
    unix_user: pwd.struct_passwd, root_agent_data: Path
) -> None:
    rt = ProcessRuntime(
        RuntimeContext(node_name="node1", agent_data=root_agent_data, runs_as_root=True)
    )
    h = start(rt, spec(["true"], unix_user=unix_user.pw_name))
    assert wait_report(h).exit_code == 0
    assert stat.S_IMODE(root_agent_data.stat().st_mode) == 0o711
    assert stat.S_IMODE(h.job_dir.stat().st_mode) == 0o750
    assert stat.S_IMODE(h.control_dir.stat().st_mode) == 0o700


def test_the_shim_stays_the_agents_and_only_the_job_drops_to_its_account(
    unix_user: pwd.struct_passwd, root_agent_data: Path
) -> None:
    rt = ProcessRuntime(
        RuntimeContext(node_name="node1", agent_data=root_agent_data, runs_as_root=True)
    )
    h = start(rt, spec(["sh", "-c", "touch ready; sleep 60"], unix_user=unix_user.pw_name))
    wait_until(
        lambda: (h.job_dir / "ready").exists(), DEADLINE_S, "the job to start", poll_s=POLL_S
    )
    assert psutil.Process(h.session_id).uids().real == 0  # the job cannot kill or trace it
    pids = h.session_pids()
    assert pids and all(psutil.Process(p).uids() == (unix_user.pw_uid,) * 3 for p in pids)
    h.stop("cancelled", "cancelled", grace_s=1)
    wait_report(h)


@pytest.mark.parametrize(
    ("what", "refusal"),
    [
        ({"workdir": "/root"}, "workdir /root does not exist or is not accessible to Unix user"),
        ({"workdir": "/root/no-such"}, "workdir /root/no-such does not exist or is not accessible"),
        (
            {"env_kind": "venv", "venv": "/root/venv"},
            "venv /root/venv does not exist or is not usable",
        ),
    ],
)
def test_what_the_jobs_account_cannot_reach_is_refused_alike_whether_it_exists_or_not(
    unix_user: pwd.struct_passwd, root_agent_data: Path, what: dict[str, str], refusal: str
) -> None:
    rt = ProcessRuntime(
        RuntimeContext(node_name="node1", agent_data=root_agent_data, runs_as_root=True)
    )
    r = wait_report(start(rt, spec(["true"], unix_user=unix_user.pw_name, **what)))
    assert (r.state, r.end_kind) == ("failed_to_start", "error")
    assert refusal in r.reason


# ----------------------------------------------------------------------------- the account rule
def test_a_members_job_runs_as_the_same_named_account_else_does_not_start(
    unix_user: pwd.struct_passwd, root_agent_data: Path
) -> None:
    rt = ProcessRuntime(
        RuntimeContext(node_name="node1", agent_data=root_agent_data, runs_as_root=True)
    )
    h = start(rt, spec(["id", "-u"], user=unix_user.pw_name))
    assert wait_report(h).exit_code == 0
    assert log_text(h).splitlines()[1] == str(unix_user.pw_uid)
    with pytest.raises(RuntimeStartError, match="no Unix account for nobody-here on node node1"):
        start(rt, spec(["id", "-u"], user="nobody-here"))
    # A lab user named like a system account does not become it.
    with pytest.raises(RuntimeStartError, match="no Unix account for daemon"):
        start(rt, spec(["id", "-u"], user="daemon"))


def test_an_admins_job_without_an_account_runs_as_the_agent_and_says_so(
    root_agent_data: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("an agent that switches accounts runs as root")
    rt = ProcessRuntime(
        RuntimeContext(node_name="node1", agent_data=root_agent_data, runs_as_root=True)
    )
    h = start(rt, spec(["id", "-u"], user="lab-admin-x", admin=True))
    assert wait_report(h).exit_code == 0
    header, uid = log_text(h).splitlines()[:2]
    assert uid == "0"
    assert header.endswith(
        "as root (the agent's own account: admin lab-admin-x has no Unix account here)"
    )


def test_uid_0_is_never_used_through_the_default_account(agent_data: Path) -> None:
    rt = ProcessRuntime(
        RuntimeContext(
            node_name="node1", agent_data=agent_data, runs_as_root=True, default_unix_user="root"
        )
    )
    with pytest.raises(RuntimeStartError, match="uid 0"):
        start(rt, spec(["true"], user="someone"))
