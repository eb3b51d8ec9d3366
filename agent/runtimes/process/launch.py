"""Launching one attempt: the job's environment, and its shim started in a new session.

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

The shim (:mod:`agent.runtimes.process.shim`) stays the agent's account; when the job runs
as another account, the shim's child drops to it, enters the working directory and checks
the venv as that account. When it runs as the agent's own, those checks are made here, so
a refusal reads the same and comes before anything is started.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import psutil

from agent.fence import CONTACT_FILE
from agent.runtimes.accounts import Account
from agent.runtimes.base import AdoptRecord, RuntimeContext, RuntimeStartError
from mlsm.wire.agent import JobSpec

SHIM_PATH = Path(__file__).with_name("shim.py")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONDA_LIST_TIMEOUT_S = 30.0
_PASSED_VARS = ("LC_ALL", "TZ")  # copied from the agent when set
_SHIM_IGNORES = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def launch(
    ctx: RuntimeContext,
    spec: JobSpec,
    job_dir: Path,
    control: Path,
    acct: Account,
    fd: int,
    *,
    conda_exe: str | None = None,
    workdir: Path | None = None,
) -> tuple[AdoptRecord, subprocess.Popen[bytes]]:
    """Start the shim with the job's log on ``fd`` (the caller closes it); returns the
    attempt's record and the shim's process. ``workdir``: where it runs when the job ships
    code or names a project (else ``--workdir``, else its output dir). Raises
    RuntimeStartError."""
    if workdir is None:
        workdir = Path(spec.workdir) if spec.workdir else job_dir
    env, needs = environment(ctx, spec, job_dir, workdir, acct, conda_exe=conda_exe)
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
    if spec.stop_when_lost:  # the shim keeps the lease fence even if the agent dies
        opts += ["--fence", str(ctx.agent_data / CONTACT_FILE), "--grace", f"{spec.kill_grace_s:g}"]
    when = datetime.now().astimezone().isoformat(timespec="seconds")
    header = (
        f"[mlsm] job {spec.job_id} attempt {spec.attempt} on {ctx.node_name} "
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
        runtime="process",
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
    return record, proc


def environment(
    ctx: RuntimeContext,
    spec: JobSpec,
    job_dir: Path,
    workdir: Path,
    acct: Account,
    *,
    conda_exe: str | None = None,
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
        prefix = conda_prefix(spec.conda, conda_exe)
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
    env["MLSM_NODE"] = ctx.node_name
    env["MLSM_OUTPUT_DIR"] = str(job_dir)
    if spec.name:
        env["MLSM_JOB_NAME"] = spec.name
    if spec.array_index is not None:
        env["MLSM_ARRAY_INDEX"] = str(spec.array_index)
    for name, path in spec.datasets.items():
        env["MLSM_DATASET_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()] = path
    return env, needs


def conda_prefix(name: str, conda_exe: str | None = None) -> Path:
    """The prefix of conda environment ``name`` (a name, or an absolute prefix)."""
    if not name:
        raise RuntimeStartError("no conda environment named")
    exe = (
        conda_exe
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


def _resolve_command(cmd: str, path: str, workdir: Path) -> str:
    if "/" in cmd:
        p = Path(cmd) if os.path.isabs(cmd) else workdir / cmd
        found = str(p) if p.is_file() and os.access(p, os.X_OK) else None
    else:
        found = shutil.which(cmd, path=path)
    if not found:
        raise RuntimeStartError(f"command not found: {cmd}")
    return os.path.abspath(found)
