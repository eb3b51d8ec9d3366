"""Shells into running jobs, end to end: the real ``mlsm shell`` under a real PTY (pexpect),
a real master, a real agent running the job as a process, and the bytes relayed over
WebSockets both ways. Typing and output, the job's environment and directory, the exit
status, a window resize seen by ``stty size``, Ctrl-C, a refused shell for another
member's job (and its audit rows), and the master restarted under an open shell."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator

import pexpect
import pytest

from tests.integration.lab import Lab
from tests.support.master import MLSM
from tests.support.wait import wait_until

NODE = "sh1"
EXPECT_S = 20.0
PROMPT = "MLSM-PROMPT>"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("shell")) as lab:
        lab.start_master()
        lab.start_agent(NODE)
        yield lab


@pytest.fixture(autouse=True)
def _cancel_jobs(lab: Lab) -> Iterator[None]:
    """Each test's jobs end with it (they hold the node's two GPUs otherwise)."""
    yield
    ids = [j.id for j in lab.admin.jobs.list().jobs]
    if ids:
        lab.admin.jobs.cancel(ids)


def running_job(lab: Lab, *args: str, token: str | None = None, gpus: int = 1) -> int:
    job_id = lab.submit("--gpus", str(gpus), *args, "--", "sleep", "600", token=token)
    lab.wait_job(job_id, "running")
    return job_id


def spawn(lab: Lab, *args: str, token: str | None = None, rows: int = 24, cols: int = 80):
    env = lab.env(MLSM_URL=lab.url, MLSM_TOKEN=lab.token if token is None else token)
    env["TERM"] = "xterm"
    child = pexpect.spawn(
        MLSM,
        list(args),
        env=env,
        cwd=str(lab.root),
        dimensions=(rows, cols),
        timeout=EXPECT_S,
        encoding="utf-8",
        codec_errors="replace",
    )
    child.logfile_read = open(lab.root / "logs" / f"pexpect-{os.getpid()}.log", "a")
    return child


def prompt(child: pexpect.spawn) -> None:
    """A fixed prompt, so each command's output is found between two of them."""
    child.sendline(f"PS1='{PROMPT[:5]}''{PROMPT[5:]} '")
    child.expect_exact(PROMPT)


def run(child: pexpect.spawn, command: str) -> str:
    """``command``'s echo and output, up to the next prompt."""
    child.sendline(command)
    child.expect_exact(PROMPT)
    return child.before


def test_shell_types_reads_and_exits_with_the_shells_status(lab: Lab) -> None:
    job_id = running_job(lab)
    child = spawn(lab, "shell", str(job_id))
    prompt(child)
    out = run(child, "echo gpu=$CUDA_VISIBLE_DEVICES job=$MLSM_JOB_ID; pwd")
    job = lab.job(job_id)
    assert f"gpu={','.join(map(str, job.gpu_indices))} job={job_id}" in out
    assert job.output_dir in out  # its working directory: the job's own tree
    child.sendline("exit 7")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 7
    assert lab.job(job_id).state == "running"  # the job does not end with its shell


def test_window_resize_reaches_the_shell(lab: Lab) -> None:
    job_id = running_job(lab)
    child = spawn(lab, "shell", str(job_id), rows=30, cols=100)
    prompt(child)
    assert "30 100" in run(child, "stty size")
    child.setwinsize(40, 132)  # the CLI gets SIGWINCH and sends a resize
    wait_until(
        lambda: "40 132" in run(child, "stty size"), EXPECT_S, "the new size to reach the shell"
    )
    child.sendline("exit")
    child.expect(pexpect.EOF)


def test_ctrl_c_interrupts_the_remote_command_not_the_cli(lab: Lab) -> None:
    job_id = running_job(lab)
    child = spawn(lab, "shell", str(job_id))
    prompt(child)
    child.sendline("sleep 300; echo slept")
    child.sendintr()  # the terminal is raw: ^C is a byte for the remote PTY
    child.expect_exact(PROMPT)
    out = run(child, "echo still-here")
    assert "still-here" in out and "slept" not in out
    child.sendline("exit 0")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_another_members_job_is_refused_and_audited(lab: Lab) -> None:
    alice = lab.add_user("alice-sh")
    bob = lab.add_user("bob-sh")
    job_id = running_job(lab, token=alice)
    res = lab.cli("shell", str(job_id), token=bob)
    assert res.returncode != 0
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert "belongs to alice-sh" in res.stderr
    rows = lab.admin.audit.list(action="job.shell.open")
    assert any(r.actor == "bob-sh" and r.outcome == "denied" for r in rows)


def test_opening_and_closing_a_shell_is_audited(lab: Lab) -> None:
    job_id = running_job(lab)
    child = spawn(lab, "shell", str(job_id))
    prompt(child)
    child.sendline("exit 3")
    child.expect(pexpect.EOF)

    def rows() -> list:
        found = [
            r for r in lab.admin.audit.list(action="job.shell.close") if r.target == f"job:{job_id}"
        ]
        assert found, "no close row yet"
        return found

    closed = wait_until(rows, EXPECT_S, "the shell's close row")
    assert closed[0].details.get("exit_code") == 3
    opened = lab.admin.audit.list(action="job.shell.open")
    assert any(r.target == f"job:{job_id}" and r.outcome == "ok" for r in opened)


def test_a_job_that_is_not_running_is_refused_in_one_line(lab: Lab) -> None:
    job_id = lab.submit("--hold", "--", "true")
    res = lab.cli("shell", str(job_id))
    assert res.returncode == 1
    assert re.search(rf"job {job_id} is held, not running", res.stderr)
    assert res.stderr.count("\n") == 1


def test_master_restart_under_an_open_shell(lab: Lab) -> None:
    """The shell ends with a clear line and a non-zero status, the terminal is given back
    in its normal mode (echo and line editing on), and the job keeps running."""
    job_id = running_job(lab, gpus=0)
    env = lab.env(MLSM_URL=lab.url, MLSM_TOKEN=lab.token)
    env["TERM"] = "xterm"
    child = pexpect.spawn(
        "/bin/sh",
        ["-c", f"{MLSM} shell {job_id}; echo rc=$?; stty -a"],
        env=env,
        timeout=EXPECT_S,
        encoding="utf-8",
    )
    prompt(child)
    lab.stop_master(signal.SIGKILL)
    child.expect(r"connection to the master was lost[^\r\n]*")
    line = child.after
    child.expect(r"rc=(\d+)")
    assert child.match.group(1) != "0"
    child.expect(pexpect.EOF)
    modes = child.before.split()
    assert "echo" in modes and "icanon" in modes and "isig" in modes  # not "-echo" ...
    assert f"job {job_id} keeps running" in line
    lab.start_master()
    assert lab.job(job_id).state == "running"


def test_the_dashboard_lends_its_terminal_to_a_jobs_shell(lab: Lab) -> None:
    """``s`` on a running job's screen in the real dashboard, under a real PTY: the app
    suspends, the job's shell runs in the terminal, and the app comes back after it."""
    job_id = running_job(lab, gpus=0)
    child = spawn(lab, "ui", rows=40, cols=140)
    child.expect("GPU use now")  # the overview has loaded the lab
    child.send("2")  # the jobs view
    child.expect("sleep 600")
    child.send("\r")  # the (only) job's screen
    child.expect(f"Job {job_id}")
    child.expect("Command")  # its details have loaded: the app knows it runs
    child.send("s")
    child.expect(r"[#$] ")  # the shell's own prompt, in the terminal the app lent
    child.sendline("echo MARK-$((40 + 2))-$MLSM_JOB_ID")
    child.expect(f"MARK-42-{job_id}")
    child.sendline("exit 3")
    child.expect("exit status 3")  # the dashboard is back, and says how the shell ended
    child.send("q")
    child.expect(pexpect.EOF)


def test_an_agent_too_old_for_shells_is_named_in_the_refusal(lab: Lab) -> None:
    """A node whose agent speaks protocol 3 (before OpenChannel) runs a job; a shell into
    it is refused with one line that says so, and nothing is sent to that agent."""
    import threading

    from mlsm.wire import agent as w

    old = 3
    reply = lab.agent_call(
        "register",
        w.RegisterRequest(protocol=old, join_token=lab.join_token(), name="old3"),
        None,
    )
    secret = w.decode_register_reply(reply.content).node_secret
    jobs: list[w.JobReport] = []
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            lab.agent_call("heartbeat", w.Heartbeat(protocol=old, jobs=list(jobs)), secret)
            stop.wait(0.3)

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        lab.wait_node_state("old3", "online")
        job_id = lab.submit("--node", "old3", "--no-code", "--", "sleep", "600")

        def started() -> bool:
            poll = w.CommandPoll(protocol=old, wait_s=0.5)
            batch = w.decode_batch(lab.agent_call("commands", poll, secret).content)
            kinds = [type(c).__name__ for c in batch.commands]
            assert "OpenChannel" not in kinds
            return any(isinstance(c, w.StartJob) and c.job.job_id == job_id for c in batch.commands)

        wait_until(started, EXPECT_S, "the old agent to be told to start the job")
        jobs.append(w.JobReport(job_id=job_id, state="running", pid=1, started_at=1.0))
        lab.agent_call("events", w.JobEvents(protocol=old, jobs=list(jobs)), secret)
        lab.wait_job(job_id, "running")
        res = lab.cli("shell", str(job_id))
        assert res.returncode == 1 and res.stderr.count("\n") == 1
        assert "the agent on old3 is too old" in res.stderr and "need 4" in res.stderr
        poll = w.CommandPoll(protocol=old, wait_s=0)
        batch = w.decode_batch(lab.agent_call("commands", poll, secret).content)
        assert not [c for c in batch.commands if type(c).__name__ == "OpenChannel"]
    finally:
        stop.set()
        beater.join()
        lab.cli("node", "remove", "old3", "--force", "--yes")  # no other test's job goes there


def test_what_a_shell_left_running_ends_with_it(lab: Lab) -> None:
    """A background process started in the shell does not outlive it (it would hold the
    job's GPUs unaccounted); the job itself keeps running."""
    import psutil

    job_id = running_job(lab, gpus=0)
    child = spawn(lab, "shell", str(job_id))
    prompt(child)
    run(child, "nohup sleep 4321 >/dev/null 2>&1 &")

    def sleepers() -> list[psutil.Process]:
        return [
            p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "4321"]
        ]

    assert wait_until(sleepers, EXPECT_S, "the background sleep to start")
    child.sendline("exit 0")
    child.expect(pexpect.EOF)
    wait_until(lambda: not sleepers(), EXPECT_S, "the shell's leftovers to be killed")
    assert lab.job(job_id).state == "running"


def test_a_shell_fed_from_a_pipe_runs_it_and_exits_with_its_status(lab: Lab) -> None:
    """Not a terminal on stdin: the commands are typed into the remote PTY as they are,
    the end of the pipe is the terminal's end of input, and the status comes back."""
    import subprocess

    job_id = running_job(lab, gpus=0)
    env = lab.env(MLSM_URL=lab.url, MLSM_TOKEN=lab.token)
    proc = subprocess.run(
        [MLSM, "shell", str(job_id)],
        input=b"echo piped-$MLSM_JOB_ID\nexit 9\n",
        capture_output=True,
        env=env,
        timeout=EXPECT_S,
    )
    assert proc.returncode == 9, proc.stderr
    assert f"piped-{job_id}".encode() in proc.stdout
