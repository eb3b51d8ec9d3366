"""The process runtime: env kinds "process", "venv" and "conda" as plain processes.

Each attempt runs under :mod:`agent.runtimes.process.shim`, a tiny supervisor started in a
new session. The job is the shim's child in that session; the shim ignores
SIGTERM/SIGINT/SIGHUP and writes ``exit.json`` when the job ends, so an attempt survives the
agent being kill -9'd and its outcome is still known when the agent comes back
(:meth:`ProcessRuntime.adopt`).

Which Unix account a job runs as is decided by :mod:`agent.runtimes.accounts` (never uid 0
on a root agent). The job's own tree and the agent's bookkeeping are kept apart as
:mod:`agent.runtimes.jobfs` describes; the agent opens nothing in either by following a
link.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from agent.runtimes import jobfs
from agent.runtimes.accounts import resolve_account
from agent.runtimes.base import (
    AdoptRecord,
    RuntimeContext,
    RuntimeStartError,
    RuntimeUnavailable,
)
from agent.runtimes.process.handle import ProcessHandle
from agent.runtimes.process.launch import launch
from agent.runtimes.process.shim import EXIT_NAME, STOP_NAME, reserve_exit
from mlsm.wire.agent import JobReport, JobSpec

_OWNED_KINDS = ("process", "venv", "conda")
#: Errors of the node's own disk (full, over quota, read-only, failing): not the job's fault.
NODE_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


class ProcessRuntime:
    """:class:`~agent.runtimes.base.Runtime` for processes, venvs and conda envs."""

    name = "process"
    env_kinds = _OWNED_KINDS

    def __init__(self, ctx: RuntimeContext, *, conda_exe: str | None = None) -> None:
        self.ctx = ctx
        self._conda_exe = conda_exe

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
            reserve_exit(str(control))
            jobfs.prepare_job_dir(self.ctx, job_dir, acct)
            workdir = jobfs.code_workdir(self.ctx, spec, job_dir, acct)
            fd = jobfs.open_job_log(job_dir, acct.uid, acct.gid)
        except OSError as e:
            why = f"cannot prepare job {spec.job_id}'s files: {e}"
            if e.errno in NODE_DISK_ERRNOS:  # the node's disk, not the job: requeued
                raise RuntimeUnavailable(why) from e
            raise RuntimeStartError(why) from e
        try:
            record, proc = launch(
                self.ctx,
                spec,
                job_dir,
                control,
                acct,
                fd,
                conda_exe=self._conda_exe,
                workdir=workdir,
            )
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
        return ProcessHandle(record, popen=proc)

    def adopt(self, record: AdoptRecord) -> ProcessHandle | JobReport:
        return ProcessHandle.adopt(record)
