"""The interface every job runtime (process, docker) implements.

The agent owns one runtime per environment kind and talks to it only through this
interface. A runtime starts a job attempt, reports its state, stops it, and after an agent
restart re-adopts attempts it started earlier from what :class:`AdoptRecord` saved.

Everything a runtime does is synchronous or cheap; the agent calls blocking parts through
``asyncio.to_thread``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mlsm.wire.agent import STOP_KINDS, JobReport, JobSpec, StopKind

if TYPE_CHECKING:
    from agent.runtimes.accounts import Account


class CodeTrees(Protocol):
    """Where jobs that ship code or name a project run (:class:`agent.codecache.CodeCache`)."""

    def materialize(self, digest: str, job_dir: Path, acct: Account) -> Path:
        """Write the (fetched) snapshot as the job's ``code`` dir; return its path."""
        ...

    def project_path(self, user: str, name: str) -> Path: ...


@dataclass
class RuntimeContext:
    """Facts about the node a runtime needs to build a job's environment."""

    node_name: str
    agent_data: Path  # <agent data>; a job's tree is <agent data>/jobs/<id>/
    runs_as_root: bool = False
    simulated_gpus: bool = False
    # Account for jobs whose user has neither a mapping nor a same-named account here,
    # while the agent runs as root ("" = none: such jobs do not start; see accounts.py).
    default_unix_user: str = ""
    # Every job runs as the agent's own account even when it is root (a one-person machine).
    single_user: bool = False
    # Shipped code and projects (None: an agent without them; such jobs do not start).
    code: CodeTrees | None = None


@dataclass
class AdoptRecord:
    """What the agent's state file keeps about a running attempt, to re-adopt it later."""

    job_id: int
    attempt: int
    runtime: str  # "process" | "docker"
    job_dir: str  # the job's own tree: its MLSM_OUTPUT_DIR, holding output.log
    started_at: float
    pid: int | None = None  # process runtime: pid of the job's shim (session leader)
    pid_start: float | None = None  # its create_time, so a reused pid is not mistaken
    container_id: str | None = None  # docker runtime
    timeout_s: float = 0.0
    kill_grace_s: float = 10.0
    extra: dict[str, str] = field(default_factory=dict)
    # The agent's private bookkeeping (exit.json, stop.json); "" in records of an older
    # agent, whose files were in job_dir.
    control_dir: str = ""
    uid: int | None = None  # the job's account, which owns job_dir and its output.log
    # The master retries the job elsewhere if this node is lost: stop it after a lease
    # without the master (see agent.fence).
    stop_when_lost: bool = False
    gid: int | None = None


class JobHandle(Protocol):
    """One running attempt."""

    record: AdoptRecord

    def poll(self) -> JobReport | None:
        """The final report once the attempt has ended, else ``None``. Never blocks long."""

    def stop(self, reason: str, end_kind: StopKind, grace_s: float) -> None:
        """Ask it to end (SIGTERM / docker stop), escalate to kill after ``grace_s``.

        Returns at once; the ending is seen later by :meth:`poll`, whose report carries
        ``end_kind`` and ``reason``. A final marker line naming the reason is appended to
        the job's ``output.log``.
        """


class Runtime(Protocol):
    name: str

    def start(self, spec: JobSpec, job_dir: Path) -> JobHandle:
        """Start an attempt; output (stdout+stderr) goes to ``job_dir/output.log``.

        ``job_dir`` (``<agent data>/jobs/<id>/``) becomes the job's own tree; the agent's
        bookkeeping goes elsewhere (see :mod:`agent.runtimes.jobfs`).

        Raises :class:`RuntimeStartError` with a readable message when the attempt cannot
        start (missing image, bad venv, unknown Unix user ...).
        """

    def adopt(self, record: AdoptRecord) -> JobHandle | JobReport:
        """Re-attach to an attempt started before an agent restart.

        Returns a handle when it still runs, or the final report when it ended meanwhile
        (exit code when known; ``state="lost"`` with the reason when it vanished).
        """


class RuntimeStartError(Exception):
    """An attempt could not start; the message says why in plain words."""


class RuntimeUnavailable(RuntimeStartError):
    """An attempt could not start because the runtime itself is unreachable (the Docker
    engine went away): not the job's fault, so the agent reports the attempt lost (the
    master requeues it while retries remain) and stops taking jobs of that kind."""


LOG_NAME = "output.log"


def job_dir_for(agent_data: Path, job_id: int) -> Path:
    return agent_data / "jobs" / str(job_id)


def saved_stop_kind(value: object) -> StopKind:
    """A stop's kind read back from a file an earlier agent wrote; unknown counts as a cancel."""
    for kind in STOP_KINDS:
        if value == kind:
            return kind
    return "cancelled"
