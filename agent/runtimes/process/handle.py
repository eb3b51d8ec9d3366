"""One attempt running under its shim: polled, stopped, ended and reported.

Ending: :meth:`ProcessHandle.stop` sends SIGTERM to every process of the job's session and
SIGKILL after the grace period. When the job's main process ends, whatever it left behind
in its session is killed (as Slurm cleans up at job end). A process that leaves the session
with ``setsid`` escapes this; only cgroups would catch it.

The end is read from what the shim recorded (``exit.json``) and what a stop recorded
(``stop.json``, so a stop survives an agent restart): the final report names how the job
ended (exit code, signal, cancel, timeout) or why it was lost.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from agent.runtimes import jobfs
from agent.runtimes.base import LOG_NAME, AdoptRecord, saved_stop_kind
from agent.runtimes.process.shim import EXIT_NAME, STOP_NAME
from mlsm.wire.agent import JobEndKind, JobReport, StopKind

CREATE_TIME_TOLERANCE_S = 0.05  # psutil create_time of one process read twice
KILL_ROUNDS = 5  # rescans while killing a session, for processes forked meanwhile
MARKER_TAIL_BYTES = 4096
LOST_WHILE_DOWN = "process vanished while the agent was down"
SHIM_DIED = "the job's supervisor died without recording how the job ended"


@dataclass
class _Stop:
    reason: str  # as reported ("cancelled: ...", "timeout after 5s")
    end_kind: StopKind
    kill_at: float


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

    @classmethod
    def adopt(cls, record: AdoptRecord) -> ProcessHandle | JobReport:
        """Take over an attempt started before an agent restart: its handle while the job
        runs (with a stop it was given still in force), else its final report."""
        if record.pid is None or record.pid_start is None:
            return JobReport(
                job_id=record.job_id,
                attempt=record.attempt,
                state="lost",
                end_kind="lost",
                reason=LOST_WHILE_DOWN,
                started_at=record.started_at,
            )
        handle = cls(record)
        with handle._lock:
            if handle._alive():
                handle._restore_stop()
                return handle
            return handle._finish(lost_reason=LOST_WHILE_DOWN)

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

    def stop(self, reason: str, end_kind: StopKind, grace_s: float) -> None:
        with self._lock:
            if self._final is None and self._alive():
                self._stop_locked(reason, end_kind, grace_s)

    # ------------------------------------------------------------------ internals
    def _stop_locked(self, reason: str, end_kind: StopKind, grace_s: float) -> None:
        now = time.time()
        kill_at = now + max(0.0, grace_s)
        if self._stop is None:
            self._stop = _Stop(_stop_reason(reason, end_kind), end_kind, kill_at)
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
                str(data["reason"]), saved_stop_kind(data["end_kind"]), float(data["kill_at"])
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
            self._stop = _Stop(str(data["reason"]), saved_stop_kind(data.get("end_kind")), 0.0)


# ---------------------------------------------------------------------- module helpers
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
    end_kind: JobEndKind
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
