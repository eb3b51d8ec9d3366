"""What a job's container is made of: everything ``containers.create`` gets for a job spec.

Pure translation of a :class:`~mlsm.wire.agent.JobSpec` and the node's rules into engine
arguments, checked as it goes (a refusal raises :class:`RuntimeStartError` before anything
exists on the engine). The container runs the job's argv as the job's account, never as the
image's own user, with ``no-new-privileges``; its GPUs are a device request; the job's own
tree is mounted at :data:`OUTPUT_MOUNT` and each dataset read-only under
:data:`DATASET_MOUNT_ROOT`; extra mounts are confined to the allowed roots.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import docker.types

from agent.runtimes.accounts import Account
from agent.runtimes.base import RuntimeContext, RuntimeStartError
from agent.runtimes.docker.engine import job_labels
from mlsm.policy import mount_allowed
from mlsm.wire.agent import JobSpec

OUTPUT_MOUNT = "/mlsm/output"
CODE_WORKDIR = f"{OUTPUT_MOUNT}/code"  # a job's copy of its shipped code (agent.codecache)
PROJECT_MOUNT = "/mlsm/project"  # the job's project, when it names one
DATASET_MOUNT_ROOT = "/datasets"
ANY_NETWORK = "*"  # in ``allowed_networks``: any network mode the master names for the node
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def container_kwargs(
    ctx: RuntimeContext,
    spec: JobSpec,
    job_dir: Path,
    acct: Account,
    *,
    network: str,
    allowed_networks: Collection[str],
    mount_roots: Sequence[str] | None,
) -> dict[str, Any]:
    """Everything ``containers.create`` gets for ``spec``; raises RuntimeStartError.

    ``job_dir`` is the job's own tree on the host, mounted at :data:`OUTPUT_MOUNT`; the
    container runs as ``acct``. ``network`` is the node's default network mode, which a job
    may replace by ``none`` or one of ``allowed_networks``; ``mount_roots`` (when not None)
    confines every extra mount, on top of the job's own ``mount_roots``.
    """
    if not spec.image:
        raise RuntimeStartError("a docker job needs an image")
    if not spec.argv:
        raise RuntimeStartError("a docker job needs a command")
    gpus = ",".join(str(i) for i in spec.gpus)
    env = dict(spec.env)
    env.update(_mlsm_env(ctx, spec, gpus))
    labels = {
        **job_labels(spec.job_id, spec.attempt, ctx.node_name),
        "mlsm.gpus": gpus,
        "mlsm.keep": "1" if spec.keep_container else "0",
    }
    if spec.user:
        labels["mlsm.user"] = spec.user
    kwargs: dict[str, Any] = {
        "image": spec.image,
        "command": list(spec.argv),
        "name": f"mlsm-job-{spec.job_id}-{spec.attempt}",  # see DockerRuntime._create
        "environment": env,
        "labels": labels,
        "mounts": _mounts(ctx, spec, job_dir, mount_roots),
        "network_mode": _network(ctx, spec, network, allowed_networks),
        "init": True,  # PID 1 forwards SIGTERM and reaps; a bare PID 1 ignores SIGTERM
        "tty": False,  # keeps the log stream framed (see agent.runtimes.docker.logs)
        "detach": True,
    }
    # Like a process job, relative paths land in the output dir unless told otherwise
    # (an image's own WORKDIR would be thrown away with the container).
    # Shipped code is the working dir (inside the output mount); a project is mounted.
    kwargs["working_dir"] = (
        CODE_WORKDIR
        if spec.code
        else PROJECT_MOUNT
        if spec.project
        else spec.workdir or OUTPUT_MOUNT
    )
    # One rule with process jobs: the job's account, by number (the image need not know
    # it), with its supplementary groups; no setuid file or capability can raise it.
    kwargs["user"] = f"{acct.uid}:{acct.gid}"
    extra_groups = [str(g) for g in acct.groups if g != acct.gid]
    if extra_groups:
        kwargs["group_add"] = extra_groups
    kwargs["security_opt"] = ["no-new-privileges"]
    if acct.uid != 0:
        kwargs["cap_drop"] = ["ALL"]
    if spec.cpus > 0:
        kwargs["nano_cpus"] = int(spec.cpus * 1e9)
    if spec.mem_bytes > 0:
        kwargs["mem_limit"] = spec.mem_bytes
        kwargs["memswap_limit"] = spec.mem_bytes  # no swap: over the limit means OOM kill
    if spec.gpus and not ctx.simulated_gpus:
        kwargs["device_requests"] = [
            docker.types.DeviceRequest(
                device_ids=[str(i) for i in spec.gpus], capabilities=[["gpu"]], driver="nvidia"
            )
        ]
    return kwargs


def _mlsm_env(ctx: RuntimeContext, spec: JobSpec, gpus: str) -> dict[str, str]:
    if spec.gpus and not ctx.simulated_gpus:
        # The container sees only its GPUs, numbered from 0; NVIDIA's runtime picks them
        # by host index, which also overrides an image's NVIDIA_VISIBLE_DEVICES=all.
        cuda = ",".join(str(i) for i in range(len(spec.gpus)))
        nvidia = gpus
    else:
        cuda = gpus
        nvidia = gpus or "void"
    env = {
        "CUDA_VISIBLE_DEVICES": cuda,
        "NVIDIA_VISIBLE_DEVICES": nvidia,
        "MLSM_GPUS": gpus,
        "MLSM_JOB_ID": str(spec.job_id),
        "MLSM_ATTEMPT": str(spec.attempt),
        "MLSM_NODE": ctx.node_name,
        "MLSM_OUTPUT_DIR": OUTPUT_MOUNT,
    }
    if spec.array_index is not None:
        env["MLSM_ARRAY_INDEX"] = str(spec.array_index)
    for name in spec.datasets:
        env[f"MLSM_DATASET_{_env_key(name)}"] = f"{DATASET_MOUNT_ROOT}/{name}"
    return env


def _mounts(
    ctx: RuntimeContext, spec: JobSpec, job_dir: Path, mount_roots: Sequence[str] | None
) -> list[docker.types.Mount]:
    mounts = [docker.types.Mount(OUTPUT_MOUNT, str(job_dir), type="bind", read_only=False)]
    if spec.project:
        if ctx.code is None:
            raise RuntimeStartError("this agent cannot run jobs in projects")
        owner, _, project = spec.project.partition("/")
        tree = ctx.code.project_path(owner, project)
        mounts.append(docker.types.Mount(PROJECT_MOUNT, str(tree), type="bind", read_only=False))
    for name, path in spec.datasets.items():
        if not _DATASET_NAME.match(name):
            raise RuntimeStartError(f"dataset name {name!r} cannot be a mount point")
        mounts.append(
            docker.types.Mount(f"{DATASET_MOUNT_ROOT}/{name}", path, type="bind", read_only=True)
        )
    for m in spec.mounts:
        target = os.path.normpath(m.target) if m.target.startswith("/") else ""
        if target in ("", "/"):
            raise RuntimeStartError(f"mount target {m.target!r} must be an absolute path below /")
        source = _mount_source(ctx, spec, m.source, mount_roots)
        mounts.append(docker.types.Mount(target, source, type="bind", read_only=m.read_only))
    return mounts


def _mount_source(
    ctx: RuntimeContext, spec: JobSpec, source: str, mount_roots: Sequence[str] | None
) -> str:
    """The host path to bind for ``source``: symlinks resolved here on the node, and
    confined to the job's ``mount_roots`` (a member's job: the lab's allow-list, which
    the master could only check as text) and to the node's own ``mount_roots``.

    The resolved path is what gets mounted, so a link swapped after this check cannot
    redirect the mount.
    """
    if not source.startswith("/") or "\x00" in source:
        raise RuntimeStartError(f"mount source {source!r} must be an absolute host path")
    real = os.path.realpath(source)
    for roots in (spec.mount_roots, mount_roots):
        if roots is None or mount_allowed(real, roots):
            continue
        shown = source if real == os.path.normpath(source) else f"{source} (-> {real})"
        allowed = ", ".join(roots) if roots else "none"
        raise RuntimeStartError(
            f"mount {shown} is outside the allowed roots on node {ctx.node_name} "
            f"(allowed: {allowed})"
        )
    return real


def _network(
    ctx: RuntimeContext, spec: JobSpec, network: str, allowed_networks: Collection[str]
) -> str:
    wanted = spec.network or network
    if wanted.startswith("container:") or not wanted:
        raise RuntimeStartError(f"network {wanted} is not allowed on node {ctx.node_name}")
    if wanted not in allowed_networks and ANY_NETWORK not in allowed_networks:
        raise RuntimeStartError(f"network {wanted} is not allowed on node {ctx.node_name}")
    return wanted


def _env_key(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper())
