"""Runs job attempts as plain processes: env kinds "process", "venv" and "conda".

Each attempt runs under :mod:`agent.runtimes.shim`, a tiny supervisor started in a new
session. The job is the shim's child in that session; the shim ignores SIGTERM/SIGINT/SIGHUP
and writes ``exit.json`` when the job ends, so an attempt survives the agent being
kill -9'd and its outcome is still known when the agent comes back (:meth:`adopt`).

Which Unix account a job runs as is decided by :mod:`agent.runtimes.accounts` (never uid 0
on a root agent). The shim stays the agent's account; only the job drops to the job's
account, in the shim's child, which also enters the working directory and checks the venv
as that account. The job's own tree and the agent's bookkeeping are kept apart as
:mod:`agent.runtimes.jobfs` describes; the agent opens nothing in either by following a
link.

The job's environment is built, not inherited: ``PATH``, ``LANG`` (and ``LC_ALL``, ``TZ``
when set) from the agent; ``HOME``, ``USER``, ``LOGNAME`` of the job's account;
``PYTHONUNBUFFERED=1`` so logs stream; then the spec's ``env``; then venv/conda activation
(``PATH`` prefix, ``VIRTUAL_ENV`` / ``CONDA_PREFIX`` + ``CONDA_DEFAULT_ENV``, no
``PYTHONHOME``; conda's ``activate.d`` scripts are not run); last the variables mlsm owns
and a job cannot override: ``CUDA_VISIBLE_DEVICES`` / ``NVIDIA_VISIBLE_DEVICES`` (the
allocated indices, ``""`` / ``void`` when none), ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (so CUDA
numbers GPUs as NVML does), ``MLSM_JOB_ID``, ``MLSM_ATTEMPT``, ``MLSM_NODE``,
``MLSM_OUTPUT_DIR`` (the job's own tree, also its default working directory),
``MLSM_ARRAY_INDEX``, ``MLSM_DATASET_<NAME>``.

Ending: :meth:`ProcessHandle.stop` sends SIGTERM to every process of the job's session and
SIGKILL after the grace period. When the job's main process ends, whatever it left behind
in its session is killed (as Slurm cleans up at job end). A process that leaves the session
with ``setsid`` escapes this; only cgroups would catch it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, cast, get_args

import psutil

from agent.runtimes import jobfs
from agent.runtimes.accounts import Account, resolve_account
from agent.runtimes.base import LOG_NAME, AdoptRecord, RuntimeContext, RuntimeStartError
from agent.runtimes.shim import EXIT_NAME, STOP_NAME  # STOP_NAME also tells a re-adopter why
from mlsm.wire.agent import JobReport, JobSpec

SHIM_PATH = Path(__file__).with_name("shim.py")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONDA_LIST_TIMEOUT_S = 30.0
CREATE_TIME_TOLERANCE_S = 0.05  # psutil create_time of one process read twice
KILL_ROUNDS = 5  # rescans while killing a session, for processes forked meanwhile
MARKER_TAIL_BYTES = 4096
LOST_WHILE_DOWN = "process vanished while the agent was down"
SHIM_DIED = "the job's supervisor died without recording how the job ended"
_PASSED_VARS = ("LC_ALL", "TZ")  # copied from the agent when set
_OWNED_KINDS = ("process", "venv", "conda")
EndKind = Literal["", "exit", "cancelled", "timeout", "oom", "error", "lost"]  # JobReport's
_SHIM_IGNORES = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


@dataclass
class _Stop:
    reason: str  # as reported ("cancelled: ...", "timeout after 5s")
    end_kind: EndKind
    kill_at: float


class ProcessRuntime:
    """:class:`~agent.runtimes.base.Runtime` for processes, venvs and conda envs."""

    name = "process"
    env_kinds = _OWNED_KINDS

    def __init__(self, ctx: RuntimeContext, *, conda_exe: str | None = None) -> None:
        self.ctx = ctx
        self._conda_exe = conda_exe

    # ------------------------------------------------------------------ start
    def start(self, spec: JobSpec, job_dir: Path) -> ProcessHandle:
        job_dir = Path(job_dir)
        if spec.env_kind not in _OWNED_KINDS:
            raise RuntimeStartError(f"the process runtime cannot run env kind {spec.env_kind}")
        if not spec.argv:
            raise RuntimeStartError("the job has no command")
        acct = resolve_account(self.ctx, spec)
        try:
            control = jobfs.ensure_control_dir(self.ctx, spec.job_id)
            for name in (EXIT_NAME, EXIT_NAME + ".tmp", STOP_NAME):  # of an earlier attempt
                jobfs.remove_file(control / name)
            jobfs.prepare_job_dir(self.ctx, job_dir, acct)
            fd = jobfs.open_job_log(job_dir, acct.uid, acct.gid)
        except OSError as e:
            raise RuntimeStartError(f"cannot prepare job {spec.job_id}'s files: {e}") from e
        try:
            return self._spawn(spec, job_dir, control, acct, fd)
        except RuntimeStartError as e:
            line = f"[mlsm] job {spec.job_id} could not start: {e}\n"
            with contextlib.suppress(OSError):
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = "\n" + line
                os.write(fd, line.encode())
            raise
        finally:
            os.close(fd)

    def _spawn(
        self, spec: JobSpec, job_dir: Path, control: Path, acct: Account, fd: int
    ) -> ProcessHandle:
        """Start the shim with the job's log on ``fd`` (the caller closes it)."""
        workdir = Path(spec.workdir) if spec.workdir else job_dir
        env, needs = self._environment(spec, job_dir, workdir, acct)
        if not acct.switch:
            # The job runs as the agent's own account: what the agent can see, so can the
            # job, and a refusal now is clearer than one from inside the shim.
            if not workdir.is_dir():
                raise RuntimeStartError(f"workdir {workdir} does not exist on this node")
            for what, path in needs:
                if not os.access(path, os.X_OK):
                    raise RuntimeStartError(f"{what} not found on this node")
            _resolve_command(spec.argv[0], env["PATH"], workdir)
        opts = ["--cwd", str(workdir)]
        if acct.switch:
            groups = ",".join(str(g) for g in acct.groups)
            opts += ["--uid", str(acct.uid), "--gid", str(acct.gid), "--groups", groups]
            opts += ["--user", acct.name]
        for what, path in needs:
            opts += ["--need", f"{what}={path}"]
        when = datetime.now().astimezone().isoformat(timespec="seconds")
        header = (
            f"[mlsm] job {spec.job_id} attempt {spec.attempt} on {self.ctx.node_name} "
            f"started {when} as {acct.name}{acct.note}\n"
        )
        os.write(fd, header.encode())
        argv = [sys.executable, "-I", "-S", str(SHIM_PATH), str(control), *opts]
        argv += ["--", *spec.argv]
        started_at = time.time()
        # The shim inherits this thread's signal mask: it must not die of a SIGTERM sent
        # before it has set itself to ignore it (see shim.py).
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SHIM_IGNORES)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                cwd="/",
                env=env,
                start_new_session=True,
            )
        except OSError as e:
            raise RuntimeStartError(f"could not start the job: {e}") from e
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        try:
            pid_start = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            pid_start = started_at
        record = AdoptRecord(
            job_id=spec.job_id,
            attempt=spec.attempt,
            runtime=self.name,
            job_dir=str(job_dir),
            control_dir=str(control),
            uid=acct.uid,
            gid=acct.gid,
            started_at=started_at,
            pid=proc.pid,
            pid_start=pid_start,
            timeout_s=spec.timeout_s,
            kill_grace_s=spec.kill_grace_s,
        )
        return ProcessHandle(record, popen=proc)

    # ------------------------------------------------------------------ adopt
    def adopt(self, record: AdoptRecord) -> ProcessHandle | JobReport:
        if record.pid is None or record.pid_start is None:
            return JobReport(
                job_id=record.job_id,
                attempt=record.attempt,
                state="lost",
                end_kind="lost",
                reason=LOST_WHILE_DOWN,
                started_at=record.started_at,
            )
        handle = ProcessHandle(record)
        with handle._lock:
            if handle._alive():
                handle._restore_stop()
                return handle
            return handle._finish(lost_reason=LOST_WHILE_DOWN)

    # ------------------------------------------------------------------ helpers
    def _environment(
        self, spec: JobSpec, job_dir: Path, workdir: Path, acct: Account
    ) -> tuple[dict[str, str], list[tuple[str, str]]]:
        """The job's environment, and the paths it needs (checked as its account)."""
        env = {
            "PATH": os.environ.get("PATH") or DEFAULT_PATH,
            "HOME": acct.home,
            "USER": acct.name,
            "LOGNAME": acct.name,
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "PYTHONUNBUFFERED": "1",
        }
        for k in _PASSED_VARS:
            if k in os.environ:
                env[k] = os.environ[k]
        env.update(spec.env)
        needs: list[tuple[str, str]] = []
        if spec.env_kind == "venv":
            if not spec.venv:
                raise RuntimeStartError("no venv named")
            venv = Path(spec.venv)
            if not venv.is_absolute():
                venv = workdir / venv
            needs.append((f"venv {spec.venv}", str(venv / "bin" / "python")))
            env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', DEFAULT_PATH)}"
            env["VIRTUAL_ENV"] = str(venv)
            env.pop("PYTHONHOME", None)
        elif spec.env_kind == "conda":
            prefix = self._conda_prefix(spec.conda)
            env["PATH"] = f"{prefix / 'bin'}:{env.get('PATH', DEFAULT_PATH)}"
            env["CONDA_PREFIX"] = str(prefix)
            env["CONDA_DEFAULT_ENV"] = spec.conda
            env.pop("PYTHONHOME", None)
        gpus = ",".join(str(i) for i in spec.gpus)
        env["CUDA_VISIBLE_DEVICES"] = gpus
        env["NVIDIA_VISIBLE_DEVICES"] = gpus or "void"
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["MLSM_JOB_ID"] = str(spec.job_id)
        env["MLSM_ATTEMPT"] = str(spec.attempt)
        env["MLSM_NODE"] = self.ctx.node_name
        env["MLSM_OUTPUT_DIR"] = str(job_dir)
        if spec.name:
            env["MLSM_JOB_NAME"] = spec.name
        if spec.array_index is not None:
            env["MLSM_ARRAY_INDEX"] = str(spec.array_index)
        for name, path in spec.datasets.items():
            env["MLSM_DATASET_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()] = path
        return env, needs

    def _conda_prefix(self, name: str) -> Path:
        if not name:
            raise RuntimeStartError("no conda environment named")
        exe = (
            self._conda_exe
            or os.environ.get("CONDA_EXE")
            or shutil.which("conda")
            or next((p for p in ("/opt/conda/bin/conda",) if os.access(p, os.X_OK)), None)
        )
        if not exe or not os.access(exe, os.X_OK):
            raise RuntimeStartError("conda is not installed on this node")
        if os.path.isabs(name) and (Path(name) / "conda-meta").is_dir():
            return Path(name)
        try:
            out = subprocess.run(
                [exe, "env", "list", "--json"],
                capture_output=True,
                timeout=CONDA_LIST_TIMEOUT_S,
                check=True,
            )
            envs = [Path(p) for p in json.loads(out.stdout).get("envs", [])]
        except (OSError, subprocess.SubprocessError, ValueError, AttributeError) as e:
            raise RuntimeStartError(f"could not list conda environments: {e}") from e
        for prefix in envs:
            if prefix.name == name:
                return prefix
        if name == "base":
            root = Path(exe).resolve().parent.parent
            if (root / "conda-meta").is_dir():
                return root
        raise RuntimeStartError(f"conda environment {name} not found on this node")


class ProcessHandle:
    """One attempt running under its shim; thread-safe (a timer thread escalates stops)."""

    def __init__(self, record: AdoptRecord, popen: subprocess.Popen[bytes] | None = None) -> None:
        assert record.pid is not None
        self.record = record
        self._popen = popen
        self._pid: int = record.pid
        self._lock = threading.Lock()
        self._dead = False
        self._stop: _Stop | None = None
        self._timer: threading.Timer | None = None
        self._final: JobReport | None = None

    @property
    def job_dir(self) -> Path:
        """The job's own tree: ``MLSM_OUTPUT_DIR``, default workdir, ``output.log``."""
        return Path(self.record.job_dir)

    @property
    def control_dir(self) -> Path:
        """The agent's bookkeeping (``exit.json``, ``stop.json``); the job dir for records
        of an older agent."""
        return Path(self.record.control_dir or self.record.job_dir)

    @property
    def session_id(self) -> int:
        """The job's session (and process group) id: its shim's pid."""
        return self._pid

    def session_pids(self) -> list[int]:
        """Pids of the job's processes (without the shim), e.g. to attribute GPU use."""
        return _session_members(self._pid, not_before=self.record.pid_start)

    # ------------------------------------------------------------------ protocol
    def poll(self) -> JobReport | None:
        with self._lock:
            if self._final is not None:
                return self._final
            if self._alive():
                now = time.time()
                t = self.record.timeout_s
                if t > 0 and self._stop is None and now - self.record.started_at > t:
                    self._stop_locked(f"timeout after {t:g}s", "timeout", self.record.kill_grace_s)
                if self._stop is not None and now >= self._stop.kill_at:
                    self._kill_session()
                return None
            return self._finish(lost_reason=SHIM_DIED)

    def stop(self, reason: str, end_kind: str, grace_s: float) -> None:
        with self._lock:
            if self._final is None and self._alive():
                self._stop_locked(reason, end_kind, grace_s)

    # ------------------------------------------------------------------ internals
    def _stop_locked(self, reason: str, end_kind: str, grace_s: float) -> None:
        now = time.time()
        kill_at = now + max(0.0, grace_s)
        if self._stop is None:
            self._stop = _Stop(_stop_reason(reason, end_kind), _end_kind(end_kind), kill_at)
            _write_stop(
                self.control_dir / STOP_NAME,
                {"reason": self._stop.reason, "end_kind": end_kind, "kill_at": kill_at},
            )
        else:  # a repeated stop can only bring the kill forward
            self._stop.kill_at = min(self._stop.kill_at, kill_at)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pid, signal.SIGTERM)
        # Members that moved to another process group; the others got it once already (a
        # second SIGTERM can kill a Python job that is exiting cleanly from the first).
        for pid in _session_members(self._pid, not_before=self.record.pid_start):
            with contextlib.suppress(OSError):
                if os.getpgid(pid) != self._pid:
                    os.kill(pid, signal.SIGTERM)
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        assert self._stop is not None
        self._timer = threading.Timer(max(0.0, self._stop.kill_at - time.time()), self._on_timer)
        self._timer.daemon = True
        self._timer.start()

    def _on_timer(self) -> None:
        with self._lock:
            if self._final is None and self._alive():
                self._kill_session()

    def _restore_stop(self) -> None:
        data = jobfs.read_json(self.control_dir / STOP_NAME)
        if data is None:
            return
        try:
            self._stop = _Stop(
                str(data["reason"]), _end_kind(data["end_kind"]), float(data["kill_at"])
            )
        except (ValueError, KeyError, TypeError):
            return
        self._arm_timer()

    def _kill_session(self) -> None:
        """SIGKILL every process of the job's session except the shim, which records it."""
        for _ in range(KILL_ROUNDS):
            pids = _session_members(self._pid, not_before=self.record.pid_start)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def _alive(self) -> bool:
        if self._dead:
            return False
        if self._popen is not None:
            alive = self._popen.poll() is None
        else:
            try:
                alive = os.waitpid(self._pid, os.WNOHANG)[0] == 0  # our child (same process)
            except ChildProcessError:
                alive = _same_process_alive(self._pid, self.record.pid_start)
        self._dead = not alive
        return alive

    def _finish(self, *, lost_reason: str) -> JobReport:
        if self._timer is not None:
            self._timer.cancel()
        self._kill_session()  # leftovers of a job whose main process ended
        if self._stop is None:
            self._restore_stop_quietly()
        report = _final_report(
            self.record, jobfs.read_json(self.control_dir / EXIT_NAME), self._stop, lost_reason
        )
        if self._stop is not None:
            _append_marker(
                self.job_dir / LOG_NAME, self.record.job_id, self._stop.reason, self.record.uid
            )
            report.log_size = jobfs.file_size(self.job_dir / LOG_NAME)
        self._final = report
        return report

    def _restore_stop_quietly(self) -> None:
        data = jobfs.read_json(self.control_dir / STOP_NAME)
        if data and "reason" in data:
            self._stop = _Stop(str(data["reason"]), _end_kind(data.get("end_kind")), 0.0)


# ---------------------------------------------------------------------- module helpers
def _end_kind(value: object) -> EndKind:
    """A stop's end kind as JobReport knows them; anything else counts as a cancel."""
    return cast(EndKind, value) if value in get_args(EndKind) and value else "cancelled"


def _stop_reason(reason: str, end_kind: str) -> str:
    reason = reason.strip()
    word = {"timeout": "timeout", "cancelled": "cancelled"}.get(end_kind, "stopped")
    low = reason.lower()
    if not reason:
        return word
    if low.startswith(("cancel", "timeout", "timed out", "stopped")):
        return reason
    return f"{word}: {reason}"


def _marker(job_id: int, reason: str) -> str:
    if reason.startswith("timeout"):
        reason = "timed out" + reason[len("timeout") :]
    return f"[mlsm] job {job_id} {reason}"


def _append_marker(log: Path, job_id: int, reason: str, owner: int | None) -> None:
    line = _marker(job_id, reason)
    if jobfs.tail_contains(log, line.encode(), MARKER_TAIL_BYTES, owner):
        return  # written before an agent restart
    jobfs.append_line(log, line, owner)


def _final_report(
    record: AdoptRecord, info: dict[str, Any] | None, stop: _Stop | None, lost_reason: str
) -> JobReport:
    common: dict[str, Any] = {
        "job_id": record.job_id,
        "attempt": record.attempt,
        "pid": record.pid,
        "started_at": record.started_at,
        "log_size": jobfs.file_size(Path(record.job_dir) / LOG_NAME),
    }
    if info is None:
        if stop is not None:  # never expected: stop() leaves the shim alive to record it
            return JobReport(
                state="exited",
                ended_at=time.time(),
                reason=stop.reason,
                end_kind=stop.end_kind,
                **common,
            )
        return JobReport(
            state="lost", end_kind="lost", reason=lost_reason, ended_at=time.time(), **common
        )
    ended_at = info.get("ended_at") if isinstance(info.get("ended_at"), float) else time.time()
    code, sig = info.get("exit_code"), info.get("signal")
    code = code if isinstance(code, int) else None
    sig = sig if isinstance(sig, int) else None
    if info.get("error"):
        return JobReport(
            state="failed_to_start",
            exit_code=code,
            ended_at=ended_at,
            reason=str(info["error"]),
            end_kind="error",
            **common,
        )
    if stop is not None:
        reason, end_kind = stop.reason, stop.end_kind
    elif sig is not None:
        reason, end_kind = f"killed by signal {sig} ({_signame(sig)})", "exit"
    else:
        reason, end_kind = f"exit code {code}", "exit"
    return JobReport(
        state="exited",
        exit_code=code,
        signal=sig,
        ended_at=ended_at,
        reason=reason,
        end_kind=end_kind,
        **common,
    )


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "?"


def _resolve_command(cmd: str, path: str, workdir: Path) -> str:
    if "/" in cmd:
        p = Path(cmd) if os.path.isabs(cmd) else workdir / cmd
        found = str(p) if p.is_file() and os.access(p, os.X_OK) else None
    else:
        found = shutil.which(cmd, path=path)
    if not found:
        raise RuntimeStartError(f"command not found: {cmd}")
    return os.path.abspath(found)


def _same_process_alive(pid: int, create_time: float | None) -> bool:
    try:
        p = psutil.Process(pid)
        if create_time is not None and abs(p.create_time() - create_time) > CREATE_TIME_TOLERANCE_S:
            return False  # the pid was reused
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _session_members(sid: int, *, not_before: float | None) -> list[int]:
    """Live processes of session ``sid`` except its leader, the shim.

    Linux does not hand out a pid while a session still uses it as its id, so members of
    ``sid`` are the job's own; but once they are all gone the pid may be reused by a new
    session leader, whose members must be left alone: hence the leader check.
    """
    try:
        leader_start = psutil.Process(sid).create_time()
        if not_before is not None and abs(leader_start - not_before) > CREATE_TIME_TOLERANCE_S:
            return []
    except psutil.Error:
        pass
    out = []
    for pid in psutil.pids():
        if pid == sid:
            continue
        try:
            if os.getsid(pid) != sid:
                continue
            p = psutil.Process(pid)
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if not_before is not None and p.create_time() < not_before - CREATE_TIME_TOLERANCE_S:
                continue  # older than the job: not its own
        except (OSError, psutil.Error):
            continue
        out.append(pid)
    return out


def _write_stop(path: Path, data: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        jobfs.write_json(path, data)
